"""Plain dense torch versions of the sparse ops: slow, obviously right, the test oracle of every backend.

Every backend module (reference, cpu, triton) defines the same four functions:

    encode_topk(x, W_enc, b_enc, k, aux_mask=None, k_aux=0) -> TopKSelection
    decode(indices, values, weight)                 -> [batch, d]      Σ_j values[b,j] · weight[indices[b,j]]
    scatter_outer(indices, values, dense, n_rows)   -> [n_rows, d]     out[indices[b,j]] += values[b,j] · dense[b]
    gather_dot(indices, dense, weight)              -> [batch, k]      <dense[b], weight[indices[b,j]]>

`decode` is the sparse×dense product (decoder forward, and the input gradient of the encoder),
`scatter_outer` the sparseᵀ×dense product (both weight gradients) and `gather_dot` the dense×dense
product evaluated only at the selected entries (the gradient into the selected values): the three
kernels of docs/method.md §6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TopKSelection:
    """The k largest pre-activations of each row, and optionally the k_aux largest among masked latents.

    Values are pre-activations (before ReLU); `values` are sorted in descending order along the last
    dimension (Multi-TopK reads the top-k as a prefix of the top-(factor·k)); the AuxK pair may come in
    any order.
    """

    values: torch.Tensor  # [batch, k]
    indices: torch.Tensor  # [batch, k] int64
    aux_values: torch.Tensor | None = None  # [batch, k_aux]
    aux_indices: torch.Tensor | None = None  # [batch, k_aux] int64


def encode_topk(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    k: int,
    aux_mask: torch.Tensor | None = None,
    k_aux: int = 0,
) -> TopKSelection:
    """Top-k of pre = x @ W_enc.T + b_enc per row; x: [batch, d], W_enc: [n, d], aux_mask: [n] bool."""
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
