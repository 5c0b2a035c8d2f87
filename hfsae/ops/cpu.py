"""CPU fast path: a blocked encoder with an exact grouped top-k, and the sparse ops on embedding_bag and
torch's sampled CSR product (timings: docs/performance.md).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .backend import TopKSelection


def _csr(indices: torch.Tensor, values: torch.Tensor, n_cols: int) -> torch.Tensor:
    """The code as a [batch, n_cols] CSR matrix: k entries a row, in the given order."""
    batch, k = indices.shape
    crow = torch.arange(0, batch * k + 1, k, device=indices.device, dtype=torch.int64)
    with warnings.catch_warnings():  # "sparse CSR support is in beta" is not for our users
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, indices.reshape(-1), values.reshape(-1), (batch, n_cols))


# Pre-activations computed at once, [rows, latents], when not measured: bounds the transient block for
# any n_latents while keeping each matmul large enough to run at full speed.
ENCODE_TILE_ELEMENTS = 1 << 24
# Whole rows (every latent of a row in one block, so one grouped top-k per row and nothing to merge) while
# at least this many rows fit in a block; past that, a block of rows re-streams all of W_enc for too few
# rows and the matmul slows down, so the block becomes a tile of ENCODE_TILE_LATENTS latents over many
# rows, and tiles are merged.
MIN_WHOLE_ROWS = 512
ENCODE_TILE_LATENTS = 4096

# Group sizes tried by grouped_topk, largest first: a larger group means a cheaper max-reduction pass.
TOPK_GROUP_SIZES = (64, 32)
# Columns per group when a tile is screened against the running k-th best value (see _merge_tile).
SCREEN_GROUP = 32


def grouped_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(scores, k, dim=1) for a [rows, n] block, exact, and faster when n is large.

    Split each row into groups of g columns. The k-th largest group maximum t is at most the row's
    k-th largest value (k different groups each hold a value ≥ t), and every other group's maximum
    is ≤ t; so the row's top k lie in the k groups with the largest maxima (up to ties), and topk
    only has to look at k·g candidates after one cheap max-reduction over the row.
    """
    rows, n = scores.shape
    group = next((g for g in TOPK_GROUP_SIZES if n % g == 0 and n // g >= 4 * k), None)
    if group is None:
        return scores.topk(k, dim=1)
    groups = scores.view(rows, n // group, group)
    chosen = groups.amax(dim=2).topk(k, dim=1, sorted=False).indices  # [rows, k]
    candidates = groups.gather(1, chosen[:, :, None].expand(rows, k, group)).reshape(rows, k * group)
    values, positions = candidates.topk(k, dim=1)
    indices = chosen.gather(1, positions // group) * group + positions % group
    return values, indices


def _merge_tile(best: tuple[torch.Tensor, torch.Tensor] | None, block: torch.Tensor, start: int, k: int):
    """The running top-k (values sorted descending, latent ids) updated with `block`, latents start, ….

    Once k values are held, only groups of SCREEN_GROUP latents whose maximum beats the row's k-th best
    can contribute, and at most k of them (as in grouped_topk). In the t-th tile about k / t values a
    row pass, so past the first tiles a tile costs little more than one max-reduction.
    """
    rows, width = block.shape
    if best is not None and best[0].shape[1] == k and width % SCREEN_GROUP == 0:
        groups = block.view(rows, width // SCREEN_GROUP, SCREEN_GROUP)
        maxima = groups.amax(dim=2)
        passing = int((maxima > best[0][:, -1:]).sum(1).max())  # the k-th best is the last, sorted
        if passing == 0:
            return best
        chosen = maxima.topk(min(passing, k), dim=1, sorted=False).indices[:, :, None]  # [rows, c, 1]
        values = groups.gather(1, chosen.expand(-1, -1, SCREEN_GROUP)).reshape(rows, -1)
        indices = (chosen * SCREEN_GROUP + torch.arange(SCREEN_GROUP, device=block.device)).reshape(rows, -1)
    else:
        values, indices = grouped_topk(block, min(k, width))
    if best is None:
        return values, indices + start
    return _top_of([best[0], values], [best[1], indices + start], k, sorted=True)


def _top_of(values: list[torch.Tensor], ids: list[torch.Tensor], k: int, *, sorted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of the row-wise concatenation of `values`, with their ids: each entry of `ids` is
    [rows, m] or, when every row has the same ids, [m] (never expanded then)."""
    top, positions = torch.cat(values, 1).topk(min(k, sum(v.shape[1] for v in values)), dim=1, sorted=sorted)
    if all(i.dim() == 1 for i in ids):
        return top, torch.cat(ids)[positions]
    return top, torch.cat([i.expand(top.shape[0], -1) for i in ids], 1).gather(1, positions)


_scratch_buffers: dict[tuple, torch.Tensor] = {}


def _scratch(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat buffer reused across calls: a fresh output page-faults on every step, a measurable share of
    the encoder matmul's time at these sizes (docs/performance.md)."""
    key = (numel, dtype, device)
    if key not in _scratch_buffers:
        _scratch_buffers.clear()  # keep one: a new shape means the old one is done with
        _scratch_buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return _scratch_buffers[key]


# Block sizes (elements) timed against each other once per machine and shape class when the encoder's
# work (batch · n · d multiply-adds) is at least MIN_MEASURED_WORK; ENCODE_TILE_ELEMENTS otherwise. The
# largest bounds the transient block at 128 MiB in fp32 (benchmarks/bench_memory.py counts it).
TILE_ELEMENT_CHOICES = (1 << 22, 1 << 24, 1 << 25)
MIN_MEASURED_WORK = 1 << 33
MEASURED_ROWS = 2048  # rows the blocks are timed on: enough for every choice's row blocks


def tile_elements(x: torch.Tensor, W_enc: torch.Tensor, k: int) -> int:
    """The block size for this encoder call: measured (autotune), else ENCODE_TILE_ELEMENTS."""
    from . import autotune

    batch, n, d = x.shape[0], W_enc.shape[0], x.shape[1]
    key = (
        f"{autotune.machine_key(x.device)}|{x.dtype}|batch{autotune.size_class(batch)}|"
        f"n{autotune.size_class(n)}|d{autotune.size_class(d)}|k{autotune.size_class(k)}"
    )
    rows = x[:MEASURED_ROWS]
    candidates = lambda: {  # noqa: E731
        str(size): (lambda size=size: _encode_topk(rows, W_enc, None, k, None, 0, size)) for size in TILE_ELEMENT_CHOICES
    }
    choice = autotune.choose(
        "cpu_encoder_tile", key, [str(size) for size in TILE_ELEMENT_CHOICES], candidates,
        fallback=str(ENCODE_TILE_ELEMENTS), device=x.device, worth_measuring=batch * n * d >= MIN_MEASURED_WORK,
    )  # fmt: skip
    return int(choice)


def encode_topk(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    k: int,
    aux_mask: torch.Tensor | None = None,
    k_aux: int = 0,
) -> TopKSelection:
    """In blocks of at most `tile_elements` elements, so the [batch, n] pre-activations never exist whole.
    The AuxK pre-activations (masked latents) of a block are kept aside and cut to the top k_aux
    whenever they outgrow one tile."""
    return _encode_topk(x, W_enc, b_enc, k, aux_mask, k_aux, tile_elements(x, W_enc, k))


def _encode_topk(x, W_enc, b_enc, k, aux_mask, k_aux, block_elements: int) -> TopKSelection:
    batch, n = x.shape[0], W_enc.shape[0]
    rows = min(batch, max(1, block_elements // n))
    width = n
    if rows < min(batch, MIN_WHOLE_ROWS):
        width = min(n, ENCODE_TILE_LATENTS)
        rows = min(batch, max(1, block_elements // width))
    scratch = _scratch(rows * width, x.dtype, x.device)
    dead = None
    if aux_mask is not None and k_aux > 0:
        dead = aux_mask.nonzero().squeeze(1)
        k_aux = min(k_aux, dead.numel())
        dead = dead if k_aux > 0 else None
    if dead is not None:
        tile_bounds = torch.searchsorted(dead, torch.arange(0, n + width, width, device=dead.device)).tolist()
        aux_values, aux_indices = x.new_empty(batch, k_aux), torch.empty(batch, k_aux, dtype=torch.int64, device=x.device)
    values, indices = x.new_empty(batch, k), torch.empty(batch, k, dtype=torch.int64, device=x.device)
    for first in range(0, batch, rows):
        last = min(first + rows, batch)
        best, kept_values, kept_ids = None, [], []
        for tile, start in enumerate(range(0, n, width)):
            stop = min(start + width, n)
            block = scratch[: (last - first) * (stop - start)].view(last - first, stop - start)
            if b_enc is None:
                torch.mm(x[first:last], W_enc[start:stop].T, out=block)
            else:
                torch.addmm(b_enc[start:stop], x[first:last], W_enc[start:stop].T, out=block)
            best = _merge_tile(best, block, start, k)
            if dead is not None and tile_bounds[tile] < tile_bounds[tile + 1]:
                columns = dead[tile_bounds[tile] : tile_bounds[tile + 1]]
                # gather runs on all threads; index_select along columns runs on one
                kept_values.append(block.gather(1, (columns - start).expand(last - first, -1)))
                kept_ids.append(columns)
                if sum(v.shape[1] for v in kept_values) > width:  # cut back to the top k_aux so far
                    top, ids = _top_of(kept_values, kept_ids, k_aux, sorted=False)
                    kept_values, kept_ids = [top], [ids]
        values[first:last], indices[first:last] = best
        if dead is not None:
            aux_values[first:last], aux_indices[first:last] = _top_of(kept_values, kept_ids, k_aux, sorted=False)
    if dead is None:
        return TopKSelection(values, indices)
    return TopKSelection(values, indices, aux_values, aux_indices)


def decode(indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.embedding_bag(indices, weight, per_sample_weights=values.to(weight.dtype), mode="sum")


def scatter_outer(indices: torch.Tensor, values: torch.Tensor, dense: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The transposed code, entries grouped by latent, is a bag of rows of `dense` per latent: one
    embedding_bag writes each output row once, with no second output-sized buffer (torch's CSRᵀ @ dense
    keeps one, and is slower)."""
    k = indices.shape[1]
    flat = indices.reshape(-1)
    order = flat.to(torch.int32).argsort()  # int32 keys sort faster than int64
    offsets = torch.zeros(n_rows + 1, dtype=torch.int64, device=indices.device)
    torch.cumsum(torch.bincount(flat, minlength=n_rows), 0, out=offsets[1:])
    entries = values.reshape(-1).to(dense.dtype)[order]
    return F.embedding_bag(order // k, dense, offsets, per_sample_weights=entries, mode="sum", include_last_offset=True)


def gather_dot(indices: torch.Tensor, dense: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    pattern = _csr(indices, dense.new_zeros(indices.shape), weight.shape[0])
    sampled = torch.sparse.sampled_addmm(pattern, dense, weight.T, beta=0.0)
    return sampled.values().view(indices.shape)
