"""Reconstruction metrics of an SAE: FVU, explained variance, L0, dead fraction, cosine, progressive recovery.

All of them are measured on activation rows x [tokens, d_in] (evaluate passes the positions that
count, `hfsae.activations.positions_used`), in the activation's own scale: `sae.decode` undoes the
input normalisation, so x_hat is what would be spliced back into the language model. FVU is
`hfsae.modeling.fvu`, the one the trainer reports, taken over all rows at once (docs/method.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hfsae.modeling import SparseCode, fired_latents, fvu

# Rows encoded at once: bounds the [rows, n_latents] pre-activations TopK needs.
CHUNK_ROWS = 1024


def l0(values: torch.Tensor) -> torch.Tensor:
    """Mean number of latents with a non-zero value per token; values: [tokens, k] (a code's values)."""
    return (values > 0).sum(dim=-1).float().mean()


def cosine(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the cosine similarity between x and x_hat: [tokens, d]."""
    return torch.nn.functional.cosine_similarity(x.double(), x_hat.double(), dim=-1).mean().float()


def dead_fraction(indices: torch.Tensor, values: torch.Tensor, n_latents: int) -> float:
    """Fraction of latents that never fired in the tokens of a code: indices, values [tokens, k]."""
    return 1.0 - fired_latents(indices, values, n_latents).float().mean().item()


def progressive_ks(k: int, n_latents: int) -> list[int]:
    """The k' at which progressive recovery is measured: k/4, k/2, k, 2k, 4k, within 1..n_latents, no repeats."""
    ks = [max(1, k // 4), max(1, k // 2), k, 2 * k, 4 * k]
    return sorted({min(k_prime, n_latents) for k_prime in ks})


@torch.no_grad()
def reconstruct(sae, x: torch.Tensor, *, k: int | None = None) -> tuple[SparseCode, torch.Tensor]:
    """(code, x_hat) of x [tokens, d_in] keeping k latents (default: the SAE's inference selection), CHUNK_ROWS
    rows at a time. A thresholded SAE's chunks differ in width: the code is padded with zero values (index 0)."""
    chunks = x.split(CHUNK_ROWS)
    codes = [sae.encode(chunk, k=k) for chunk in chunks]
    x_hat = torch.cat([sae.decode(code, x=chunk) for code, chunk in zip(codes, chunks)])
    width = max(c.indices.shape[-1] for c in codes)
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[-1]))  # noqa: E731
    code = SparseCode(torch.cat([pad(c.indices) for c in codes]), torch.cat([pad(c.values) for c in codes]))
    return code, x_hat


def fvu_of(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """`hfsae.modeling.fvu` in float64: a sum over thousands of rows loses digits in float32."""
    return fvu(x_hat.double(), x.double()).item()


def progressive_fvu(sae, x: torch.Tensor, ks: list[int] | None = None, *, y: torch.Tensor | None = None) -> dict[int, float]:
    """FVU of `sae` on x [tokens, d_in] when it keeps k' latents at inference, for each k' (docs/method.md §4).

    y: what it reconstructs, when not x (a transcoder's target)."""
    if ks is None:
        ks = progressive_ks(sae.config.k, sae.config.n_latents)
    y = x if y is None else y
    return {k_prime: fvu_of(reconstruct(sae, x, k=k_prime)[1], y) for k_prime in ks}


def omitted_metrics(config) -> dict[str, str]:
    """{metric: why it does not apply} for the variant a TopKSAEConfig describes: left out, never estimated."""
    omitted = {}
    if config.inference_mode == "threshold":
        omitted["progressive"] = (
            "progressive recovery varies the k of per-token TopK; this SAE selects with a threshold at inference "
            "(evaluate it with inference='topk' to measure it)"
        )
    if config.is_transcoder:
        omitted["ablation_sparsity"] = (
            "ablation sparsity splices the code back at the hook point it reads; a transcoder writes to another "
            "(not built for transcoders)"
        )
    return omitted


@dataclass
class ReconstructionMetrics:
    """How well an SAE reconstructs activation rows (docs/method.md §4)."""

    fvu: float
    explained_variance: float
    l0: float
    dead_fraction: float
    """Fraction of latents that never fired over the n_tokens rows (the window)."""
    cosine: float
    progressive: dict[int, float]
    """{k': FVU with k' latents kept}."""
    n_tokens: int


def reconstruction_metrics(sae, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[ReconstructionMetrics, SparseCode]:
    """The metrics of `sae` on x [tokens, d_in], and its code (indices, values [tokens, width]).

    y [tokens, d_out] is what it reconstructs when that is not x (a transcoder's target). L0 is measured
    (a BatchTopK SAE's varies per token); progressive recovery is {} where `omitted_metrics` says so.

    Example:
        >>> metrics, code = reconstruction_metrics(sae, x)
        >>> metrics.fvu, metrics.dead_fraction
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"Reconstruction metrics need activations [tokens ≥ 2, d_in]; got shape {tuple(x.shape)}.")
    y = x if y is None else y
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"The target has {y.shape[0]} rows where the input has {x.shape[0]}; pass the same tokens.")
    code, x_hat = reconstruct(sae, x)
    error = fvu_of(x_hat, y)
    metrics = ReconstructionMetrics(
        fvu=error,
        explained_variance=1.0 - error,
        l0=l0(code.values).item(),
        dead_fraction=dead_fraction(code.indices, code.values, sae.config.n_latents),
        cosine=cosine(y, x_hat).item(),
        progressive={} if "progressive" in omitted_metrics(sae.config) else progressive_fvu(sae, x, y=y),
        n_tokens=x.shape[0],
    )
    return metrics, code
