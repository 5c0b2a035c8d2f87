"""Statistics over the global batch of data-parallel ranks: loss denominators and dead latents.

Data parallelism must not change what is trained. Two quantities depend on the whole batch:
the FVU's denominator (the batch's variance, docs/method.md §2), and whether a latent fired (a latent is
alive if any rank saw it fire). Both are combined here with one small all-reduce each.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..modeling import fvu
from .grid import all_reduce_, group_size


def global_normalized_mse(x_hat: torch.Tensor, x: torch.Tensor, group) -> torch.Tensor:
    """The FVU (hfsae.modeling.fvu) of the batch made of every rank's rows x, x_hat [tokens, d] in `group`.

    The value is the global one on every rank. Its gradient is this rank's share times the group
    size, so that averaging gradients over the group (as DDP and `sync_gradients_` do) gives the
    gradient of one process on the whole batch, also when ranks hold different numbers of rows.
    """
    size = group_size(group)
    if size == 1:
        return fvu(x_hat, x)
    error = (x - x_hat).pow(2).sum()
    # Σ‖x − μ‖² = Σ‖x‖² − N‖μ‖², accumulated in float64 so the subtraction keeps its precision.
    x64 = x.detach().double()
    totals = torch.cat([
        x64.sum(dim=0),
        x64.pow(2).sum().reshape(1),
        x64.new_tensor([x.shape[0]]),
        error.detach().double().reshape(1),
    ])
    all_reduce_(totals, group)
    d = x.shape[1]
    sum_x, sum_squares, tokens, global_error = totals[:d], totals[d], totals[d + 1], totals[d + 2]
    variance_total = (sum_squares - sum_x.pow(2).sum() / tokens).to(x.dtype)
    share = error * size
    # Value: the global error; gradient: this rank's share (the detached part carries no gradient).
    return (share + (global_error.to(x.dtype) - share).detach()) / variance_total


def any_rank(mask: torch.Tensor, group) -> torch.Tensor:
    """Elementwise OR of a bool mask [n] over the ranks of `group` (the grid's data group).

    Use it on "fired in this batch" before updating tokens_since_fired: a latent is alive if any
    rank saw it fire, and every rank then keeps the same dead-latent statistics (the ranks of a
    latent group share their batch and code, so the data group is enough).
    """
    if group is None:
        return mask
    as_int = mask.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX, group=group)
    return as_int.bool()


def global_count(count: int, group, *, device: torch.device | str = "cpu") -> int:
    """The sum of an integer (e.g. tokens in this batch) over the ranks of `group` (the data group)."""
    if group is None:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(total, group=group)
    return int(total.item())
