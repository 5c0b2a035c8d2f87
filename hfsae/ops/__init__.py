"""Sparse ops behind one dispatcher: the reference, the CPU fast path and the Triton kernels.

`backend_for(device, name)` picks the module; `sparse_decode` and `selected_preactivations` are the
two differentiable pieces a TopK SAE is made of, written once on top of whichever backend runs.
Their backward passes touch only the selected latents: O(batch · k · d), never O(batch · n · d).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .reference import TopKSelection

BACKENDS = ("reference", "cpu", "triton")


def triton_available() -> bool:
    """Whether the Triton kernels can run here: a CUDA device, or the CPU interpreter (TRITON_INTERPRET=1)."""
    return importlib.util.find_spec("triton") is not None


def backend_for(device: torch.device | str, name: str | None = None) -> ModuleType:
    """The ops module for `name`, or the fastest one for `device` (Triton on CUDA, the fast path on CPU)."""
    if name is None:
        name = "triton" if torch.device(device).type == "cuda" and triton_available() else "cpu"
    if name not in BACKENDS:
        raise ValueError(f"Unknown ops backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    if name == "triton" and not triton_available():
        raise ImportError("The 'triton' backend needs the triton package: pip install 'hfsae[dev]' or triton.")
    return importlib.import_module(f"{__name__}.{'triton_kernels' if name == 'triton' else name}")


class _SparseDecode(torch.autograd.Function):
    """x_hat = Σ_j values[b,j] · weight[indices[b,j]], with sparse gradients for values and weight."""

    @staticmethod
    def forward(ctx, indices, values, weight, backend):
        ctx.save_for_backward(indices, values, weight)
        ctx.backend = backend
        return backend.decode(indices, values, weight)

    @staticmethod
    def backward(ctx, grad_out):
        indices, values, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_values = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_values = ctx.backend.gather_dot(indices, grad_out, weight).to(values.dtype)
        if ctx.needs_input_grad[2]:
            grad_weight = ctx.backend.scatter_outer(indices, values, grad_out, weight.shape[0]).to(weight.dtype)
        return None, grad_values, grad_weight, None


class _SelectedPreactivations(torch.autograd.Function):
    """The pre-activations x @ W_enc.T + b_enc at the selected entries, already computed by encode_topk.

    Forward returns them as given (no recomputation); backward sends their gradient to x, W_enc and
    b_enc through the selected latents only.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, indices, values, backend):
        ctx.save_for_backward(x, W_enc, indices)
        ctx.backend = backend
        ctx.has_bias = b_enc is not None
        return values.clone()

    @staticmethod
    def backward(ctx, grad_values):
        x, W_enc, indices = ctx.saved_tensors
        grad_values = grad_values.contiguous()
        grad_x = grad_W_enc = grad_b_enc = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.backend.decode(indices, grad_values, W_enc).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_W_enc = ctx.backend.scatter_outer(indices, grad_values, x, W_enc.shape[0]).to(W_enc.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b_enc = torch.zeros(W_enc.shape[0], dtype=grad_values.dtype, device=grad_values.device)
            grad_b_enc.index_add_(0, indices.reshape(-1), grad_values.reshape(-1))
        return grad_x, grad_W_enc, grad_b_enc, None, None, None


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor, backend: ModuleType) -> torch.Tensor:
    """Σ_j values[b,j] · weight[indices[b,j]]: indices, values [batch, k], weight [n, d] → [batch, d]."""
    return _SparseDecode.apply(indices, values, weight, backend)


def selected_preactivations(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    indices: torch.Tensor,
    values: torch.Tensor,
    backend: ModuleType,
) -> torch.Tensor:
    """Differentiable view of pre-activations `values` [batch, k] = (x @ W_enc.T + b_enc)[b, indices[b, j]]."""
    return _SelectedPreactivations.apply(x, W_enc, b_enc, indices, values, backend)


__all__ = ["BACKENDS", "TopKSelection", "backend_for", "selected_preactivations", "sparse_decode", "triton_available"]
