"""The one rule for which token positions of a context count, in training and in every metric.

Position 0 of a context is left out (docs/method.md §1). Its activations are unlike the rest: on the
built-in model its norm is several times the others' and it holds a large share of the variance from
1/64 of the rows (docs/performance.md gives the figures), which an SAE would spend its capacity on,
and which would dominate FVU.
"""

from __future__ import annotations

import torch

__all__ = ["FIRST_POSITION_USED", "SKIP_FIRST_POSITION", "positions_used"]

SKIP_FIRST_POSITION = True
# The first position of a context that counts: slice contexts with [:, FIRST_POSITION_USED:].
FIRST_POSITION_USED = int(SKIP_FIRST_POSITION)


def positions_used(acts: torch.Tensor) -> torch.Tensor:
    """Rows [contexts, seq, ...] → [contexts * (seq - FIRST_POSITION_USED), ...]: the positions that count."""
    if acts.dim() < 2:
        raise ValueError(f"positions_used takes [contexts, seq, ...]; got shape {tuple(acts.shape)}.")
    if acts.shape[1] <= FIRST_POSITION_USED:
        raise ValueError(f"Contexts of {acts.shape[1]} tokens have no position after the first; use at least 2.")
    kept = acts[:, FIRST_POSITION_USED:]
    return kept.reshape(-1, *kept.shape[2:])
