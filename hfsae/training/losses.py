"""The reconstruction measure shared by every loss: normalised MSE (fraction of variance unexplained)."""

from __future__ import annotations

import torch


def normalized_mse(x_hat: torch.Tensor, x: torch.Tensor, *, variance: torch.Tensor | float | None = None) -> torch.Tensor:
    """‖x − x_hat‖² / ‖x − mean(x)‖² over a batch [tokens, d] (docs/method.md §2).

    `variance` replaces the denominator's per-token mean squared deviation with a fixed estimate
    (computed once at the start of training); by default it comes from the batch.
    """
    error = (x - x_hat).pow(2).sum(dim=-1).mean()
    if variance is None:
        variance = (x - x.mean(dim=0)).pow(2).sum(dim=-1).mean()
    return error / variance
