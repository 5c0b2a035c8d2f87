"""Tokens since each latent last fired, and the dead mask AuxK trains (docs/method.md §2)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..modeling import fired_latents


class DeadLatents:
    """Counts, per latent, the tokens seen since it last fired; dead once the count reaches `dead_tokens`.

    The count is a [n_latents] int64 tensor on the SAE's device, updated without host syncs.
    Across processes a latent is alive if any process saw it fire: `update_` takes a `reduce`
    function that combines the fired flags of all processes (a sum, e.g. `accelerator.reduce`).
    """

    def __init__(self, n_latents: int, dead_tokens: int, *, device: torch.device | str = "cpu"):
        self.dead_tokens = dead_tokens
        self.tokens_since_fired = torch.zeros(n_latents, dtype=torch.int64, device=device)

    @property
    def dead_mask(self) -> torch.Tensor:
        """[n_latents] bool: latents that have not fired in the last `dead_tokens` tokens."""
        return self.tokens_since_fired >= self.dead_tokens

    def dead_fraction(self) -> float:
        """Fraction of latents that are dead now (a host sync: for logging only)."""
        return self.dead_mask.float().mean().item()

    @torch.no_grad()
    def update_(
        self,
        indices: torch.Tensor,
        values: torch.Tensor,
        *,
        tokens: int | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Advance every count by `tokens` (default: the rows of the code) and zero those that fired.

        indices, values: [tokens, k], one process's code of this step. With `reduce`, the fired
        flags are summed over processes and `tokens` should count the tokens of all of them.
        """
        if tokens is None:
            tokens = indices.reshape(-1, indices.shape[-1]).shape[0]
        fired = fired_latents(indices, values, self.tokens_since_fired.shape[0])
        if reduce is not None:
            fired = reduce(fired.to(torch.int32)) > 0
        self.tokens_since_fired += tokens
        self.tokens_since_fired.masked_fill_(fired, 0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The counts, for a checkpoint."""
        return {"tokens_since_fired": self.tokens_since_fired}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the counts saved by `state_dict`."""
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
