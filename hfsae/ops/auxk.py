"""The AuxK path, measured where it runs: dense products over the dead latents, or sparse ones over k_aux entries.

Both give the same loss and gradients (tests/test_modeling.py checks each against dense torch); which
is faster depends on the machine: the number of dead latents per k_aux where the dense path stops
winning moves with the balance of fp32 matmul and gather speed between CPUs of one family. So
`auxk_path` times both once per (machine, dtype, shape class) through `autotune.choose` and keeps the
faster.
"""

from __future__ import annotations

import torch

from . import SparseBackend, autotune, selected_preactivations, sparse_decode, subspace_code

PATHS = ("dense", "sparse")
# Below this many multiply-adds (batch · d_in · dead latents) either path is too quick for the choice to
# matter: not worth timing, the fixed rule decides (and tests never measure).
MIN_MEASURED_WORK = 1 << 27
# Rows the micro-benchmark runs on: both paths are linear in the batch, so a slice ranks them as the full
# batch does, for a fraction of the time.
MEASURED_ROWS = 1024


def _candidates(x: torch.Tensor, n_dead: int, k_aux: int, backend: SparseBackend) -> dict:
    """One forward + backward of each AuxK path on random inputs shaped like x [batch, d_in]'s step."""
    g = torch.Generator(device=x.device).manual_seed(0)
    rows, d = min(x.shape[0], MEASURED_ROWS), x.shape[1]
    options = dict(device=x.device, dtype=x.dtype)
    x = torch.randn(rows, d, generator=g, **options)
    b_pre = torch.zeros(d, **options, requires_grad=True)
    W_enc = torch.randn(n_dead, d, generator=g, **options).requires_grad_()
    W_dec = torch.randn(n_dead, d, generator=g, **options).requires_grad_()
    b_enc = torch.zeros(n_dead, **options, requires_grad=True)
    positions = torch.rand(rows, n_dead, generator=g, device=x.device).argsort(1)[:, :k_aux]
    preacts = torch.rand(rows, k_aux, generator=g, **options)
    residual = torch.randn(rows, d, generator=g, **options)

    def dense():
        code = subspace_code(x, W_enc, b_enc, positions, preacts, b_pre=b_pre)
        (code @ W_dec - residual).pow(2).sum().backward()

    def sparse():
        values = selected_preactivations(x, W_enc, b_enc, positions, preacts, backend, b_pre=b_pre).relu()
        (sparse_decode(positions, values, W_dec, backend) - residual).pow(2).sum().backward()

    return {"dense": dense, "sparse": sparse}


def auxk_path(x: torch.Tensor, n_dead: int, k_aux: int, backend: SparseBackend, *, fallback: str) -> str:
    """"dense" or "sparse": the faster AuxK path for x [batch, d_in] with `n_dead` dead latents, k_aux a row.

    `fallback` is what runs when measuring is off or the work is too small to time (see autotune).
    """
    key = (
        f"{autotune.machine_key(x.device)}|{x.dtype}|{backend.__name__.rsplit('.', 1)[-1]}|"
        f"batch{autotune.size_class(x.shape[0])}|d{autotune.size_class(x.shape[1])}|"
        f"dead{autotune.size_class(n_dead)}|k_aux{autotune.size_class(k_aux)}"
    )
    work = x.shape[0] * x.shape[1] * n_dead
    return autotune.choose(
        "auxk", key, PATHS, lambda: _candidates(x, n_dead, k_aux, backend), fallback=fallback, device=x.device, worth_measuring=work >= MIN_MEASURED_WORK
    )

