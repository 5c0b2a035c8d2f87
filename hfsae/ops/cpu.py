"""CPU fast path: the sparse ops on torch's sparse CSR kernels and embedding_bag.

Measured on the 2-core machine at batch 4096, n 32768, d 768, k 32 (benchmarks/bench_step.py):
embedding_bag decode ~46 ms, CSR sampled_addmm ~24 ms and CSRᵀ @ dense ~90 ms, against ~1.7 s for
the dense encoder matmul; a gather + bmm for gather_dot took ~100–400 ms.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .reference import TopKSelection

# Rows of pre-activations computed at once: bounds the transient [chunk, n] block while keeping
# each matmul large enough to run at full speed.
ENCODE_CHUNK_ELEMENTS = 1 << 24


def _csr(indices: torch.Tensor, values: torch.Tensor, n_cols: int) -> torch.Tensor:
    """The code as a [batch, n_cols] CSR matrix: k entries a row, in the given order."""
    batch, k = indices.shape
    crow = torch.arange(0, batch * k + 1, k, device=indices.device, dtype=torch.int64)
    with warnings.catch_warnings():  # "sparse CSR support is in beta" is not for our users
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, indices.reshape(-1), values.reshape(-1), (batch, n_cols))


# Group sizes tried by grouped_topk, largest first (measured at n 131072, k 32: 64 → 63 ms, 16 → 204 ms,
# against 170 ms for torch.topk; one thread).
TOPK_GROUP_SIZES = (64, 32)


def grouped_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(scores, k, dim=1) for a [rows, n] block, exact, ~2–3x faster when n is large.

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


_scratch_buffers: dict[tuple, torch.Tensor] = {}


def _scratch(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A [rows, cols] buffer reused across calls: a fresh output page-faults on every step, which
    costs ~17% of the encoder matmul at these sizes (DESIGN.md, measured on the 2-core machine)."""
    key = (rows, cols, dtype, device)
    if key not in _scratch_buffers:
        _scratch_buffers.clear()  # keep one: a new shape means the old one is done with
        _scratch_buffers[key] = torch.empty(rows, cols, dtype=dtype, device=device)
    return _scratch_buffers[key]


def encode_topk(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    k: int,
    aux_mask: torch.Tensor | None = None,
    k_aux: int = 0,
) -> TopKSelection:
    """Top-k of x @ W_enc.T + b_enc in row chunks, so the [batch, n] pre-activations never exist whole."""
    batch, n = x.shape[0], W_enc.shape[0]
    chunk = max(1, ENCODE_CHUNK_ELEMENTS // n)
    want_aux = aux_mask is not None and k_aux > 0
    if want_aux:
        dead = aux_mask.nonzero().squeeze(1)
        k_aux = min(k_aux, dead.numel())
        want_aux = k_aux > 0
    values, indices = x.new_empty(batch, k), torch.empty(batch, k, dtype=torch.int64, device=x.device)
    if want_aux:
        aux_values = x.new_empty(batch, k_aux)
        aux_indices = torch.empty(batch, k_aux, dtype=torch.int64, device=x.device)
    pre = _scratch(min(chunk, batch), n, x.dtype, x.device)
    for start in range(0, batch, chunk):
        rows = slice(start, min(start + chunk, batch))
        block = pre[: rows.stop - start]
        if b_enc is None:
            torch.mm(x[rows], W_enc.T, out=block)
        else:
            torch.addmm(b_enc, x[rows], W_enc.T, out=block)
        values[rows], indices[rows] = grouped_topk(block, k)
        if want_aux:
            dead_values, dead_positions = block.index_select(1, dead).topk(k_aux, dim=1, sorted=False)
            aux_values[rows], aux_indices[rows] = dead_values, dead[dead_positions]
    if not want_aux:
        return TopKSelection(values, indices)
    return TopKSelection(values, indices, aux_values, aux_indices)


def decode(indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.embedding_bag(indices, weight, per_sample_weights=values.to(weight.dtype), mode="sum")


# Latent rows per block of scatter_outer: torch's CSR @ dense holds a second output-sized buffer, so
# the product runs in row blocks to keep that buffer small however large n_latents grows.
SCATTER_BLOCK_ROWS = 8192


def scatter_outer(indices: torch.Tensor, values: torch.Tensor, dense: torch.Tensor, n_rows: int) -> torch.Tensor:
    batch, k = indices.shape
    flat = indices.reshape(-1)
    order = flat.argsort()  # the transposed code, [n_rows, batch] in CSR: entries grouped by latent
    row_starts = torch.zeros(n_rows + 1, dtype=torch.int64, device=indices.device)
    torch.cumsum(torch.bincount(flat, minlength=n_rows), 0, out=row_starts[1:])
    columns, entries = order // k, values.reshape(-1).to(dense.dtype)[order]
    out = dense.new_empty(n_rows, dense.shape[1])
    for start in range(0, n_rows, SCATTER_BLOCK_ROWS):
        stop = min(start + SCATTER_BLOCK_ROWS, n_rows)
        first, last = int(row_starts[start]), int(row_starts[stop])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            block = torch.sparse_csr_tensor(
                row_starts[start : stop + 1] - first, columns[first:last], entries[first:last], (stop - start, batch)
            )
        torch.mm(block, dense, out=out[start:stop])
    return out


def gather_dot(indices: torch.Tensor, dense: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    pattern = _csr(indices, dense.new_zeros(indices.shape), weight.shape[0])
    sampled = torch.sparse.sampled_addmm(pattern, dense, weight.T, beta=0.0)
    return sampled.values().view(indices.shape)
