"""The contract every ops backend (reference, cpu, triton_kernels) keeps, stated once.

A backend is a module with the four functions of `SparseBackend`. `decode` is the sparse × dense
product (decoder forward, and the input gradient of the encoder), `scatter_outer` the sparseᵀ × dense
product (both weight gradients) and `gather_dot` the dense × dense product evaluated only at the
selected entries (the gradient into the selected values): the three kernels of docs/method.md §6.
Outputs come in the input dtype, accumulated in fp32 where the backend controls accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class SparseBackend(Protocol):
    """What `hfsae.ops.backend_for` returns; a backend module implements each function below exactly."""

    def encode_topk(
        self,
        x: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor | None,
        k: int,
        aux_mask: torch.Tensor | None = None,
        k_aux: int = 0,
    ) -> TopKSelection:
        """Top-k of x @ W_enc.T + b_enc per row; x [batch, d], W_enc [n, d], b_enc [n] or None.

        With aux_mask [n] bool and k_aux > 0, also the top-k_aux among the masked latents (callers keep
        k_aux at most their number; the cpu and triton backends cap it themselves). The [batch, n]
        pre-activations need not exist whole.
        """

    def decode(self, indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Σ_j values[b, j] · weight[indices[b, j]]: indices, values [batch, k], weight [n, d] → [batch, d]."""

    def scatter_outer(self, indices: torch.Tensor, values: torch.Tensor, dense: torch.Tensor, n_rows: int) -> torch.Tensor:
        """out[indices[b, j]] += values[b, j] · dense[b]: indices, values [batch, k], dense [batch, d] → [n_rows, d]."""

    def gather_dot(self, indices: torch.Tensor, dense: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """<dense[b], weight[indices[b, j]]>: indices [batch, k], dense [batch, d], weight [n, d] → [batch, k]."""
