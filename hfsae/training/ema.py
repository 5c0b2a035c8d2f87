"""Bias-corrected exponential moving average of an SAE's weights (docs/method.md §3)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow ← decay · shadow + (1 − decay) · weight, started at zero and divided by 1 − decayᵗ.

    Starting from zero and correcting the bias (as Adam does for its moments) makes the average
    after t updates a proper weighted mean of the t weights seen, even while t ≪ 1 / (1 − decay).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1); got decay={decay}.")
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]
        self.shadow = [torch.zeros_like(p, dtype=torch.float32) for p in model.parameters()]
        self.updates = 0

    @torch.no_grad()
    def update_(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average."""
        weights = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(self.shadow, weights, 1.0 - self.decay)
        self.updates += 1

    def averaged(self) -> dict[str, torch.Tensor]:
        """The bias-corrected average of every parameter, by name (new tensors)."""
        if self.updates == 0:
            raise ValueError("The EMA has no updates yet: call update_ after at least one optimiser step.")
        correction = 1.0 - self.decay**self.updates
        return {name: shadow / correction for name, shadow in zip(self.names, self.shadow)}

    @torch.no_grad()
    def copy_to_(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the bias-corrected average."""
        averaged = self.averaged()
        for name, parameter in model.named_parameters():
            parameter.copy_(averaged[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The uncorrected shadow weights and the update count, for a checkpoint."""
        state = {f"shadow.{name}": shadow for name, shadow in zip(self.names, self.shadow)}
        state["updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` saved."""
        for name, shadow in zip(self.names, self.shadow):
            shadow.copy_(state[f"shadow.{name}"])
        self.updates = int(state["updates"])
