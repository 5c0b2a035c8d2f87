"""Triton kernels for the sparse ops and the fused encoder + TopK: the CUDA backend (docs/method.md §6).

Keeps the `SparseBackend` contract (backend.py), with fp32 accumulation and int64 offsets.

The fused `encode_topk` never holds the [batch, n_latents] pre-activations. Each program owns
BLOCK_M rows and one split of the latents; it computes x @ W_enc.T + b_enc one [BLOCK_M, BLOCK_N]
tile at a time and appends to a small per-row candidate buffer only the entries at or above the
row's current threshold (the k-th largest seen so far). When a buffer nears full, it is reduced to
its top k in place and the threshold rises. A sorting network over every tile would cost as much
as the matmul; past the first tiles only about k/t of a row's entries in tile t beat the
threshold, so the common case is a compare, a prefix sum and a few scattered stores. A final
torch.topk over the [batch, splits · capacity] buffers gives the answer.

Candidates are int64 sort keys: the fp32 value's bits, flipped to order like integers, above the
latent index. Keys are unique per row, sort exactly like the values (NaN largest, as torch.topk)
and carry their index with them, so one integer top-k moves both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .backend import TopKSelection

_EMPTY_KEY = tl.constexpr(-(2**63))  # below every real key, including that of -inf
EMPTY_KEY = -(2**63)


# ---- sort keys --------------------------------------------------------------------------------


@triton.jit
def _sort_key(values, columns):
    """int64 keys ordered like the fp32 `values`, with the latent index `columns` in the low 32 bits."""
    bits = values.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | columns.to(tl.int64)


@triton.jit
def _key_value(keys):
    """The fp32 value inside each key; -inf for the empty key."""
    ordered = (keys >> 32).to(tl.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return tl.where(keys == _EMPTY_KEY, float("-inf"), bits.to(tl.float32, bitcast=True))


def _unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Host-side inverse of `_sort_key`: int64 keys [..] → (fp32 values, int64 latent indices)."""
    ordered = (keys >> 32).to(torch.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32), keys & 0xFFFFFFFF


# ---- fused encoder + TopK ---------------------------------------------------------------------


@triton.jit
def _append_candidates(values, columns, eligible, buffer_ptr, lines, count, threshold, CAPACITY: tl.constexpr):
    """Append the eligible entries of values [BLOCK_M, BLOCK_N] that reach the row's threshold.

    `>=` keeps ties (and NaN, which compares false with everything) so no key above the k-th is lost;
    a superset only costs buffer room. Returns the new per-row counts [BLOCK_M].
    """
    take = eligible & ((values >= threshold[:, None]) | (values != values))
    taken = take.to(tl.int32)
    slots = count[:, None] + tl.cumsum(taken, axis=1) - 1
    keys = _sort_key(values, columns[None, :])
    tl.store(buffer_ptr + lines[:, None] * CAPACITY + slots, keys, mask=take)
    return count + tl.sum(taken, axis=1)


@triton.jit
def _top_keys(keys, CAPACITY: tl.constexpr, K_PAD: tl.constexpr, BY_RANK: tl.constexpr):
    """The K_PAD largest of keys [rows, CAPACITY], descending.

    tl.topk (a bitonic network) on the GPU. The interpreter runs each of the network's steps as a
    Python-level reduction, far too slow for the tests, so there the same keys are ranked by
    counting, in a few whole-array numpy operations: rank = how many keys beat this one (ties
    broken by slot), and rank r goes to place r.
    """
    if BY_RANK:
        slots = tl.arange(0, CAPACITY)
        mine = keys[:, :, None]
        theirs = keys[:, None, :]
        beaten_by = (theirs > mine) | ((theirs == mine) & (slots[None, None, :] < slots[None, :, None]))
        rank = tl.sum(beaten_by.to(tl.int32), axis=2)
        places = tl.arange(0, K_PAD)
        return tl.sum(tl.where(rank[:, :, None] == places[None, None, :], mine, 0), axis=1)
    else:
        return tl.topk(keys, K_PAD, dim=1)


@triton.jit
def _shrink_buffers(
    buffer_ptr,
    threshold_ptr,
    row_start,
    split,
    n_rows,
    n_splits,
    k,
    BLOCK_M: tl.constexpr,
    FLUSH_M: tl.constexpr,
    CAPACITY: tl.constexpr,
    K_PAD: tl.constexpr,
    BY_RANK: tl.constexpr,
):
    """Reduce the candidate buffers of this program's rows to their top K_PAD keys, in place.

    Slots past K_PAD are emptied, so a later reduction never sees a stale copy of a kept key; the
    k-th key becomes the row's new threshold (stored, since registers cannot be updated by rows).
    FLUSH_M rows at a time keep the [FLUSH_M, CAPACITY] block in registers.
    """
    tl.debug_barrier()  # every thread's appended keys are visible before any thread reads them
    slots = tl.arange(0, CAPACITY)
    kept_slots = tl.arange(0, K_PAD)
    for sub in tl.static_range(0, BLOCK_M, FLUSH_M):
        rows = row_start + sub + tl.arange(0, FLUSH_M)
        live = rows < n_rows
        lines = rows.to(tl.int64) * n_splits + split
        pointers = buffer_ptr + lines[:, None] * CAPACITY + slots[None, :]
        keys = tl.load(pointers, mask=live[:, None], other=_EMPTY_KEY)
        top = _top_keys(keys, CAPACITY, K_PAD, BY_RANK)  # [FLUSH_M, K_PAD], descending
        tl.debug_barrier()
        empty = tl.full([FLUSH_M, CAPACITY], _EMPTY_KEY, tl.int64)
        tl.store(pointers, empty, mask=live[:, None] & (slots[None, :] >= K_PAD))
        tl.store(buffer_ptr + lines[:, None] * CAPACITY + kept_slots[None, :], top, mask=live[:, None])
        kth = tl.max(tl.where(kept_slots[None, :] == k - 1, top, _EMPTY_KEY), axis=1)
        tl.store(threshold_ptr + lines, _key_value(kth), mask=live)
    tl.debug_barrier()


@triton.jit
def _preactivation_tile(
    x_rows,
    w_ptr,
    b_ptr,
    columns,
    row_live,
    column_live,
    d,
    stride_w,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """x @ W_enc.T + b_enc on one [BLOCK_M, BLOCK_N] tile (rows at `x_rows`, latents `columns`), in fp32."""
    w_columns = w_ptr + columns.to(tl.int64)[:, None] * stride_w
    pre = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for d_start in range(0, d, BLOCK_K):
        ks = d_start + tl.arange(0, BLOCK_K)
        k_live = ks < d
        x_tile = tl.load(x_rows + ks[None, :], mask=row_live[:, None] & k_live[None, :], other=0.0)
        w_tile = tl.load(w_columns + ks[None, :], mask=column_live[:, None] & k_live[None, :], other=0.0)
        if UPCAST:
            x_tile, w_tile = x_tile.to(tl.float32), w_tile.to(tl.float32)
        pre = tl.dot(x_tile, tl.trans(w_tile), pre, input_precision=PRECISION)
    if HAS_BIAS:
        pre += tl.load(b_ptr + columns, mask=column_live, other=0.0).to(tl.float32)[None, :]
    return pre


@triton.jit
def _encode_topk_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    aux_mask_ptr,
    buffer_ptr,
    threshold_ptr,
    aux_buffer_ptr,
    aux_threshold_ptr,
    n_rows,
    n_latents,
    d,
    stride_x,
    stride_w,
    latents_per_split,
    k,
    k_aux,
    n_splits,
    HAS_BIAS: tl.constexpr,
    HAS_AUX: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    FLUSH_M: tl.constexpr,
    CAPACITY: tl.constexpr,
    K_PAD: tl.constexpr,
    AUX_FLUSH_M: tl.constexpr,
    AUX_CAPACITY: tl.constexpr,
    K_AUX_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    BY_RANK: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Candidates for the top-k (and top-k_aux among aux_mask) of x @ W_enc.T + b_enc, per split."""
    row_start = tl.program_id(0) * BLOCK_M
    split = tl.program_id(1)
    rows = row_start + tl.arange(0, BLOCK_M)
    row_live = rows < n_rows
    lines = rows.to(tl.int64) * n_splits + split
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x

    count = tl.zeros([BLOCK_M], tl.int32)
    threshold = tl.full([BLOCK_M], float("-inf"), tl.float32)
    aux_count = tl.zeros([BLOCK_M], tl.int32)
    aux_threshold = tl.full([BLOCK_M], float("-inf"), tl.float32)

    first = split * latents_per_split
    last = tl.minimum(first + latents_per_split, n_latents)
    for tile_start in range(first, last, BLOCK_N):
        columns = tile_start + tl.arange(0, BLOCK_N)
        column_live = columns < last
        pre = _preactivation_tile(x_rows, w_ptr, b_ptr, columns, row_live, column_live, d, stride_w,
                                  HAS_BIAS, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST)
        live = row_live[:, None] & column_live[None, :]

        count = _append_candidates(pre, columns, live, buffer_ptr, lines, count, threshold, CAPACITY)
        if tl.max(count, axis=0) > CAPACITY - BLOCK_N:  # the next tile might not fit
            _shrink_buffers(buffer_ptr, threshold_ptr, row_start, split, n_rows, n_splits, k,
                            BLOCK_M, FLUSH_M, CAPACITY, K_PAD, BY_RANK)
            count = tl.full([BLOCK_M], K_PAD, tl.int32)
            threshold = tl.load(threshold_ptr + lines, mask=row_live, other=float("-inf"))

        if HAS_AUX:
            masked = tl.load(aux_mask_ptr + columns, mask=column_live, other=0) != 0
            aux_count = _append_candidates(
                pre, columns, live & masked[None, :], aux_buffer_ptr, lines, aux_count, aux_threshold, AUX_CAPACITY
            )
            if tl.max(aux_count, axis=0) > AUX_CAPACITY - BLOCK_N:
                _shrink_buffers(aux_buffer_ptr, aux_threshold_ptr, row_start, split, n_rows, n_splits, k_aux,
                                BLOCK_M, AUX_FLUSH_M, AUX_CAPACITY, K_AUX_PAD, BY_RANK)
                aux_count = tl.full([BLOCK_M], K_AUX_PAD, tl.int32)
                aux_threshold = tl.load(aux_threshold_ptr + lines, mask=row_live, other=float("-inf"))


@dataclass
class EncodeTiles:
    """Tile sizes and launch settings of the fused encoder; `CUDA_ENCODE_TILES` is the CUDA default."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2
    flush_elements: int = 8192  # keys a buffer reduction holds in registers at once
    select_by_rank: bool = False  # see _top_keys
    # Triton 3.9's interpreter multiplies bf16 tiles as their raw 16-bit patterns: give it fp32.
    upcast_operands: bool = False


# Reducing 16 rows' buffers at once made the kernel spill registers (docs/performance.md); the
# reduction is rare, so it runs 4 rows at a time.
CUDA_ENCODE_TILES = EncodeTiles(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3, flush_elements=2048)
# The interpreter runs each tile as numpy calls: tiny tiles keep odd sizes covered by many tiles.
INTERPRETER_ENCODE_TILES = EncodeTiles(
    block_m=16, block_n=32, block_k=16, flush_elements=2048, select_by_rank=True, upcast_operands=True
)


def _dot_precision(dtype: torch.dtype, device: torch.device) -> str | None:
    """fp32 follows torch's TF32 switch: tf32 if allowed, else tf32x3 (three TF32 products, ~fp32 error)."""
    if dtype != torch.float32 or device.type != "cuda":
        return None
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def _buffer_shape(k: int, tiles: EncodeTiles) -> tuple[int, int, int]:
    """(k padded to a power of two, buffer capacity, rows per reduction) for a running top-k."""
    k_pad = max(2, triton.next_power_of_2(k))  # tl.topk wants a power of two; 1 is a reduction
    capacity = triton.next_power_of_2(2 * (k_pad + tiles.block_n))
    flush_m = max(1, min(tiles.block_m, tiles.flush_elements // capacity))
    return k_pad, capacity, flush_m


def _split_count(batch: int, n_latents: int, tiles: EncodeTiles, device: torch.device) -> int:
    """Latent splits per row block: enough programs to fill the GPU twice, each at least 4 tiles long."""
    row_blocks = triton.cdiv(batch, tiles.block_m)
    tiles_per_row = triton.cdiv(n_latents, tiles.block_n)
    if device.type == "cuda":
        programs_wanted = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        programs_wanted = 4
    splits = max(1, triton.cdiv(programs_wanted, row_blocks))
    return max(1, min(splits, tiles_per_row // 4))


def _check_encoder_inputs(x, W_enc, b_enc, k, aux_mask) -> None:
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[1]:
        raise ValueError(f"encode_topk needs x [batch, d] and W_enc [n, d]; got {tuple(x.shape)} and {tuple(W_enc.shape)}.")
    if x.dtype != W_enc.dtype:
        raise ValueError(f"x and W_enc must share a dtype; got {x.dtype} and {W_enc.dtype}.")
    n = W_enc.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the number of latents); got k={k}.")
    if b_enc is not None and b_enc.shape != (n,):
        raise ValueError(f"b_enc must have shape ({n},); got {tuple(b_enc.shape)}.")
    if aux_mask is not None and aux_mask.shape != (n,):
        raise ValueError(f"aux_mask must have shape ({n},); got {tuple(aux_mask.shape)}.")


def encode_topk(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    k: int,
    aux_mask: torch.Tensor | None = None,
    k_aux: int = 0,
) -> TopKSelection:
    """The fused kernel or cuBLAS + torch.topk, whichever `encoder_path` picks."""
    _check_encoder_inputs(x, W_enc, b_enc, k, aux_mask)
    if aux_mask is not None and k_aux > 0:
        k_aux = min(k_aux, int(aux_mask.sum()))  # one host sync: the output's shape depends on it
    else:
        k_aux = 0
    if encoder_path(x, W_enc, b_enc, k) == "dense_topk":
        return dense_encode_topk(x, W_enc, b_enc, k, aux_mask, k_aux)
    return fused_encode_topk(x, W_enc, b_enc, k, aux_mask, k_aux)


ENCODER_PATHS = ("fused", "dense_topk")
# The dense path's [batch, n] pre-activations may take at most this share of the GPU memory free when
# it is chosen; past it the fused kernel (which never holds them) is the only choice.
DENSE_MEMORY_SHARE = 0.25


def dense_encode_topk(x, W_enc, b_enc, k, aux_mask=None, k_aux=0) -> TopKSelection:
    """The same selection through the whole [batch, n] pre-activations: one cuBLAS matmul and torch.topk.

    Often faster than the fused kernel where the [batch, n] buffer fits (docs/performance.md).
    """
    pre = x @ W_enc.T if b_enc is None else torch.addmm(b_enc, x, W_enc.T)
    values, indices = pre.topk(k, dim=1)
    selection = TopKSelection(values, indices)
    if k_aux > 0:
        masked = pre.masked_fill_(~aux_mask.to(pre.device), float("-inf"))  # pre is ours: reuse its memory
        selection.aux_values, selection.aux_indices = masked.topk(k_aux, dim=1)
    return selection


def encoder_path(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor | None, k: int) -> str:
    """"fused" or "dense_topk" for this encoder call: measured once per shape class on CUDA (autotune).

    The fused kernel is the only choice when the dense path's buffer would not fit DENSE_MEMORY_SHARE of
    the free memory, and the default off CUDA (the interpreter), unless a path is forced.
    """
    from . import autotune

    batch, n = x.shape[0], W_enc.shape[0]
    on_cuda = x.device.type == "cuda"
    fits = not on_cuda or batch * n * x.element_size() <= DENSE_MEMORY_SHARE * torch.cuda.mem_get_info(x.device)[0]
    if not fits:
        return "fused"
    key = (
        f"{autotune.machine_key(x.device)}|{x.dtype}|batch{autotune.size_class(batch)}|"
        f"n{autotune.size_class(n)}|d{autotune.size_class(x.shape[1])}|k{autotune.size_class(k)}"
    )
    candidates = lambda: {  # noqa: E731
        "fused": lambda: fused_encode_topk(x, W_enc, b_enc, k),
        "dense_topk": lambda: dense_encode_topk(x, W_enc, b_enc, k),
    }
    return autotune.choose(
        "encoder", key, ENCODER_PATHS, candidates, fallback="dense_topk" if on_cuda else "fused",
        device=x.device, worth_measuring=on_cuda,
    )  # fmt: skip


def fused_encode_topk(x, W_enc, b_enc, k, aux_mask=None, k_aux=0) -> TopKSelection:
    """The selection without the [batch, n] matrix (see the module docstring); k_aux already capped."""
    want_aux = aux_mask is not None and k_aux > 0
    x, W_enc = x.contiguous(), W_enc.contiguous()
    batch, d = x.shape
    n = W_enc.shape[0]
    tiles = CUDA_ENCODE_TILES if x.device.type == "cuda" else INTERPRETER_ENCODE_TILES
    splits = _split_count(batch, n, tiles, x.device)
    latents_per_split = triton.cdiv(triton.cdiv(n, splits), tiles.block_n) * tiles.block_n
    splits = triton.cdiv(n, latents_per_split)

    k_pad, capacity, flush_m = _buffer_shape(k, tiles)
    buffer = torch.full((batch, splits, capacity), EMPTY_KEY, dtype=torch.int64, device=x.device)
    threshold = torch.empty(batch, splits, dtype=torch.float32, device=x.device)
    if want_aux:
        k_aux_pad, aux_capacity, aux_flush_m = _buffer_shape(k_aux, tiles)
        aux_buffer = torch.full((batch, splits, aux_capacity), EMPTY_KEY, dtype=torch.int64, device=x.device)
        aux_threshold = torch.empty(batch, splits, dtype=torch.float32, device=x.device)
        aux_mask_bytes = aux_mask.to(device=x.device, dtype=torch.uint8).contiguous()
    else:
        k_aux_pad, aux_capacity, aux_flush_m = 2, 2, 1
        aux_buffer, aux_threshold, aux_mask_bytes = buffer, threshold, buffer  # never read

    grid = (triton.cdiv(batch, tiles.block_m), splits)
    _encode_topk_kernel[grid](
        x, W_enc, b_enc.contiguous() if b_enc is not None else x, aux_mask_bytes,
        buffer, threshold, aux_buffer, aux_threshold,
        batch, n, d, x.stride(0), W_enc.stride(0), latents_per_split, k, k_aux, splits,
        HAS_BIAS=b_enc is not None, HAS_AUX=want_aux,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        FLUSH_M=flush_m, CAPACITY=capacity, K_PAD=k_pad,
        AUX_FLUSH_M=aux_flush_m, AUX_CAPACITY=aux_capacity, K_AUX_PAD=k_aux_pad,
        PRECISION=_dot_precision(x.dtype, x.device), BY_RANK=tiles.select_by_rank,
        UPCAST=tiles.upcast_operands,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip

    values, indices = _unpack_keys(buffer.view(batch, -1).topk(k, dim=1).values)
    selection = TopKSelection(values.to(x.dtype), indices)
    if want_aux:
        aux_values, aux_indices = _unpack_keys(aux_buffer.view(batch, -1).topk(k_aux, dim=1).values)
        selection.aux_values, selection.aux_indices = aux_values.to(x.dtype), aux_indices
    return selection


# ---- sparse × dense: decode -------------------------------------------------------------------


@triton.jit
def _decode_kernel(indices_ptr, values_ptr, weight_ptr, out_ptr, k, d, stride_w,
                   BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """out[b, cols] = Σ_j values[b, j] · weight[indices[b, j], cols] for one row and one column block."""
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    column_live = columns < d
    acc = tl.zeros([BLOCK_D], tl.float32)
    for j_start in range(0, k, BLOCK_J):
        js = j_start + tl.arange(0, BLOCK_J)
        j_live = js < k
        latents = tl.load(indices_ptr + row * k + js, mask=j_live, other=0)
        values = tl.load(values_ptr + row * k + js, mask=j_live, other=0.0).to(tl.float32)
        rows = tl.load(
            weight_ptr + latents[:, None] * stride_w + columns[None, :],
            mask=j_live[:, None] & column_live[None, :],
            other=0.0,
        )
        acc += tl.sum(values[:, None] * rows.to(tl.float32), axis=0)
    tl.store(out_ptr + row * d + columns, acc.to(out_ptr.dtype.element_ty), mask=column_live)


def decode(indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    indices, values, weight = indices.contiguous(), values.contiguous(), weight.contiguous()
    batch, k = indices.shape
    d = weight.shape[1]
    out = torch.empty(batch, d, dtype=weight.dtype, device=weight.device)
    if batch == 0 or d == 0:
        return out
    block_d = min(512, triton.next_power_of_2(d))
    _decode_kernel[(batch, triton.cdiv(d, block_d))](
        indices, values, weight, out, k, d, weight.stride(0), BLOCK_J=16, BLOCK_D=block_d
    )
    return out


# ---- dense × dense at the selected entries: gather_dot ----------------------------------------


@triton.jit
def _gather_dot_kernel(indices_ptr, dense_ptr, weight_ptr, out_ptr, k, d, stride_dense, stride_w,
                       BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """out[b, j] = <dense[b], weight[indices[b, j]]> for one row and BLOCK_J of its entries."""
    row = tl.program_id(0).to(tl.int64)
    js = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    j_live = js < k
    latents = tl.load(indices_ptr + row * k + js, mask=j_live, other=0)
    acc = tl.zeros([BLOCK_J], tl.float32)
    for d_start in range(0, d, BLOCK_D):
        columns = d_start + tl.arange(0, BLOCK_D)
        column_live = columns < d
        x = tl.load(dense_ptr + row * stride_dense + columns, mask=column_live, other=0.0).to(tl.float32)
        rows = tl.load(
            weight_ptr + latents[:, None] * stride_w + columns[None, :],
            mask=j_live[:, None] & column_live[None, :],
            other=0.0,
        )
        acc += tl.sum(rows.to(tl.float32) * x[None, :], axis=1)
    tl.store(out_ptr + row * k + js, acc.to(out_ptr.dtype.element_ty), mask=j_live)


def gather_dot(indices: torch.Tensor, dense: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    indices, dense, weight = indices.contiguous(), dense.contiguous(), weight.contiguous()
    batch, k = indices.shape
    d = weight.shape[1]
    out = torch.empty(batch, k, dtype=dense.dtype, device=dense.device)
    if batch == 0 or k == 0:
        return out
    block_j = min(32, max(2, triton.next_power_of_2(k)))
    block_d = min(256, triton.next_power_of_2(max(d, 1)))
    _gather_dot_kernel[(batch, triton.cdiv(k, block_j))](
        indices, dense, weight, out, k, d, dense.stride(0), weight.stride(0), BLOCK_J=block_j, BLOCK_D=block_d
    )
    return out


# ---- sparseᵀ × dense: scatter_outer -----------------------------------------------------------


@triton.jit
def _scatter_outer_kernel(order_ptr, row_starts_ptr, values_ptr, dense_ptr, out_ptr, k, d, stride_dense,
                          BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """out[r, cols] = Σ over entries e with latent r of values[e] · dense[e // k, cols], in a fixed order."""
    latent = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    column_live = columns < d
    start = tl.load(row_starts_ptr + latent)
    end = tl.load(row_starts_ptr + latent + 1)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for p_start in range(start, end, BLOCK_P):
        ps = p_start + tl.arange(0, BLOCK_P)
        p_live = ps < end
        entries = tl.load(order_ptr + ps, mask=p_live, other=0)
        values = tl.load(values_ptr + entries, mask=p_live, other=0.0).to(tl.float32)
        rows = tl.load(
            dense_ptr + (entries // k)[:, None] * stride_dense + columns[None, :],
            mask=p_live[:, None] & column_live[None, :],
            other=0.0,
        )
        acc += tl.sum(values[:, None] * rows.to(tl.float32), axis=0)
    tl.store(out_ptr + latent * d + columns, acc.to(out_ptr.dtype.element_ty), mask=column_live)


def scatter_outer(indices: torch.Tensor, values: torch.Tensor, dense: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Deterministic: entries are grouped by latent with a stable sort and each output row is summed by
    one program in that order, instead of racing float atomics.
    """
    indices, values, dense = indices.contiguous(), values.contiguous(), dense.contiguous()
    k = indices.shape[1]
    d = dense.shape[1]
    out = torch.empty(n_rows, d, dtype=dense.dtype, device=dense.device)
    if n_rows == 0 or d == 0:
        return out
    sorted_latents, order = indices.reshape(-1).sort(stable=True)
    boundaries = torch.arange(n_rows + 1, device=indices.device, dtype=sorted_latents.dtype)
    row_starts = torch.searchsorted(sorted_latents, boundaries)
    block_d = min(512, triton.next_power_of_2(d))
    _scatter_outer_kernel[(n_rows, triton.cdiv(d, block_d))](
        order, row_starts, values, dense, out, max(k, 1), d, dense.stride(0), BLOCK_P=16, BLOCK_D=block_d
    )
    return out
