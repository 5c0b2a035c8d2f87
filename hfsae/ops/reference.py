"""Plain dense torch versions of the sparse ops (the `SparseBackend` contract of backend.py): slow,
obviously right, the test oracle of every backend.
"""

from __future__ import annotations

import torch

from .backend import TopKSelection


def encode_topk(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    k: int,
    aux_mask: torch.Tensor | None = None,
    k_aux: int = 0,
) -> TopKSelection:
    pre = x @ W_enc.T
    if b_enc is not None:
        pre = pre + b_enc
    values, indices = pre.topk(k, dim=-1)
    selection = TopKSelection(values, indices)
    if aux_mask is not None and k_aux > 0:
        masked = pre.masked_fill(~aux_mask, float("-inf"))
        selection.aux_values, selection.aux_indices = masked.topk(k_aux, dim=-1)
    return selection


def dense_code(indices: torch.Tensor, values: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The sparse code as a dense [batch, n_rows] matrix (duplicate indices add up)."""
    dense = torch.zeros(indices.shape[0], n_rows, dtype=values.dtype, device=values.device)
    return dense.scatter_add_(1, indices, values)


def decode(indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return dense_code(indices, values, weight.shape[0]) @ weight


def scatter_outer(indices: torch.Tensor, values: torch.Tensor, dense: torch.Tensor, n_rows: int) -> torch.Tensor:
    return dense_code(indices, values, n_rows).T @ dense


def gather_dot(indices: torch.Tensor, dense: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (dense @ weight.T).gather(1, indices)
