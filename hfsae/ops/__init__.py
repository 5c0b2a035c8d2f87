"""Sparse ops behind one dispatcher: the reference, the CPU fast path and the Triton kernels.

`backend_for(device, name)` picks the module (each keeps the `SparseBackend` contract of backend.py);
`sparse_decode` and `selected_preactivations` are the two differentiable pieces a TopK SAE is made of,
written once on top of whichever backend runs.
Their backward passes touch only the selected latents: O(batch · k · d), never O(batch · n · d).
"""

from __future__ import annotations

import importlib
import os

import torch

from .backend import SparseBackend, TopKSelection

BACKENDS = ("reference", "cpu", "triton")


def triton_available() -> bool:
    """Whether the Triton kernels can run here: triton installed, and a CUDA device or the CPU interpreter."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def backend_for(device: torch.device | str, name: str | None = None) -> SparseBackend:
    """The ops module for `name`, or the fastest one for `device` (Triton on CUDA, the fast path on CPU)."""
    if name is None:
        name = "triton" if torch.device(device).type == "cuda" and triton_available() else "cpu"
    if name not in BACKENDS:
        raise ValueError(f"Unknown ops backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    if name == "triton" and not triton_available():
        raise ImportError(
            "The 'triton' backend needs the triton package and a CUDA device (or TRITON_INTERPRET=1 to "
            "interpret its kernels on the CPU): pip install triton."
        )
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
    """The pre-activations (x − b_pre) @ W_enc.T + b_enc at the selected entries, already computed by encode_topk.

    Forward returns them as given (no recomputation); backward sends their gradient to x, b_pre, W_enc
    and b_enc through the selected latents only. b_pre's gradient needs only the batch sum of the input
    gradient, −(Σ_b G[b]) @ W_enc, an [n] × [n, d] product, so the per-row input gradient (a sparse
    decode) is computed only when x itself requires a gradient.
    """

    @staticmethod
    def forward(ctx, x, b_pre, W_enc, b_enc, indices, values, backend):
        ctx.save_for_backward(x, b_pre, W_enc, indices)
        ctx.backend = backend
        ctx.has_bias, ctx.has_b_pre = b_enc is not None, b_pre is not None
        return values.clone()

    @staticmethod
    def backward(ctx, grad_values):
        x, b_pre, W_enc, indices = ctx.saved_tensors
        grad_values = grad_values.contiguous()
        grad_x = grad_b_pre = grad_W_enc = grad_b_enc = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.backend.decode(indices, grad_values, W_enc).to(x.dtype)
        if ctx.needs_input_grad[2]:
            centred = x - b_pre if ctx.has_b_pre else x
            grad_W_enc = ctx.backend.scatter_outer(indices, grad_values, centred, W_enc.shape[0]).to(W_enc.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            per_latent = torch.zeros(W_enc.shape[0], dtype=grad_values.dtype, device=grad_values.device)
            per_latent.index_add_(0, indices.reshape(-1), grad_values.reshape(-1))
            if ctx.has_bias and ctx.needs_input_grad[3]:
                grad_b_enc = per_latent
            if ctx.has_b_pre and ctx.needs_input_grad[1]:
                grad_b_pre = -(per_latent.to(W_enc.dtype) @ W_enc).to(b_pre.dtype)
        return grad_x, grad_b_pre, grad_W_enc, grad_b_enc, None, None, None


class _SubspaceCode(torch.autograd.Function):
    """A dense [batch, n_sub] code over a subset of latents, from pre-activations already selected in it.

    Used for AuxK when dense matmuls over the dead subset cost less than sparse products over k_aux
    entries a row (ops/auxk.py measures which). Backward is two dense products over the subset; like
    `_SelectedPreactivations`, b_pre gets only the batch-summed gradient.
    """

    @staticmethod
    def forward(ctx, x, b_pre, W_sub, b_sub, positions, preacts):
        code = torch.zeros(x.shape[0], W_sub.shape[0], dtype=preacts.dtype, device=preacts.device)
        code.scatter_(1, positions, preacts.relu())
        ctx.save_for_backward(x, b_pre, W_sub, code)  # code is kept anyway: the decoder product saves it
        ctx.has_bias, ctx.has_b_pre = b_sub is not None, b_pre is not None
        return code

    @staticmethod
    def backward(ctx, grad_code):
        x, b_pre, W_sub, code = ctx.saved_tensors
        # code > 0 exactly where a selected pre-activation is positive, so ReLU's own backward kernel over
        # the code is the mask: one pass, faster than gather/scatter through positions or `where`.
        grad_pre = torch.ops.aten.threshold_backward(grad_code, code, 0.0)  # [batch, n_sub]
        grad_x = grad_pre @ W_sub if ctx.needs_input_grad[0] else None
        grad_W_sub = grad_pre.T @ (x - b_pre if ctx.has_b_pre else x) if ctx.needs_input_grad[2] else None
        per_latent = grad_pre.sum(0)
        grad_b_pre = -(per_latent @ W_sub) if ctx.has_b_pre and ctx.needs_input_grad[1] else None
        grad_b_sub = per_latent if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, grad_b_pre, grad_W_sub, grad_b_sub, None, None


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, weight: torch.Tensor, backend: SparseBackend) -> torch.Tensor:
    """Σ_j values[b,j] · weight[indices[b,j]]: indices, values [batch, k], weight [n, d] → [batch, d]."""
    return _SparseDecode.apply(indices, values, weight, backend)


def selected_preactivations(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    indices: torch.Tensor,
    values: torch.Tensor,
    backend: SparseBackend,
    *,
    b_pre: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable view of pre-activations `values` [batch, k] = ((x − b_pre) @ W_enc.T + b_enc)[b, indices[b, j]]."""
    return _SelectedPreactivations.apply(x, b_pre, W_enc, b_enc, indices, values, backend)


def subspace_code(
    x: torch.Tensor,
    W_sub: torch.Tensor,
    b_sub: torch.Tensor | None,
    positions: torch.Tensor,
    preacts: torch.Tensor,
    *,
    b_pre: torch.Tensor | None,
) -> torch.Tensor:
    """Dense code [batch, n_sub] over latents W_sub [n_sub, d]: ReLU(preacts) at `positions` [batch, k], 0 elsewhere.

    `preacts` must equal ((x − b_pre) @ W_sub.T + b_sub) at those positions (they come from encode_topk);
    b_pre None encodes x itself (a transcoder's convention).
    """
    return _SubspaceCode.apply(x, b_pre, W_sub, b_sub, positions, preacts)


__all__ = ["BACKENDS", "SparseBackend", "TopKSelection", "backend_for", "selected_preactivations", "sparse_decode", "subspace_code", "triton_available"]
