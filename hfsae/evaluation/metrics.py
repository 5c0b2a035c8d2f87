"""Reconstruction metrics of an SAE: FVU, explained variance, L0, dead fraction, cosine, progressive recovery.

Each metric exists as a function of tensors for one batch, and `ReconstructionMetrics` accumulates
the same quantities over a stream of batches (docs/method.md §4). All of them are measured in the
activation's own scale: `sae.decode` undoes the input normalisation, so x_hat is what would be
spliced back into the language model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hfsae.modeling import FIRING_THRESHOLD  # a latent fires when selected with a value above it


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained ‖x − x_hat‖² / ‖x − mean(x)‖² over x, x_hat: [tokens, d]."""
    x, x_hat = x.reshape(-1, x.shape[-1]).double(), x_hat.reshape(-1, x.shape[-1]).double()
    return ((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()).float()


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """1 − FVU over a batch x, x_hat: [tokens, d]."""
    return 1 - fvu(x, x_hat)


def l0(values: torch.Tensor) -> torch.Tensor:
    """Mean number of latents with a non-zero value per token; values: [tokens, k] (a code's values)."""
    return (values > 0).sum(dim=-1).float().mean()


def cosine(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the cosine similarity between x and x_hat: [tokens, d]."""
    return torch.nn.functional.cosine_similarity(x.double(), x_hat.double(), dim=-1).mean().float()


def fired_latents(indices: torch.Tensor, values: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Which latents fired (value > 1e-3) at least once in a code: indices, values [tokens, k] → [n_latents] bool."""
    fired = torch.zeros(n_latents, dtype=torch.bool, device=indices.device)
    fired[indices[values > FIRING_THRESHOLD]] = True
    return fired


def dead_fraction(indices: torch.Tensor, values: torch.Tensor, n_latents: int) -> float:
    """Fraction of latents that never fired in the tokens of a code: indices, values [tokens, k]."""
    return 1.0 - fired_latents(indices, values, n_latents).float().mean().item()


def progressive_ks(k: int, n_latents: int) -> list[int]:
    """The k' at which progressive recovery is measured: k/4, k/2, k, 2k, 4k, within 1..n_latents, no repeats."""
    ks = [max(1, k // 4), max(1, k // 2), k, 2 * k, 4 * k]
    return sorted({min(k_prime, n_latents) for k_prime in ks})


def progressive_fvu(sae, x: torch.Tensor, ks: list[int] | None = None) -> dict[int, float]:
    """FVU of `sae` on x [tokens, d_in] when it keeps k' latents at inference, for each k' (docs/method.md §4)."""
    if ks is None:
        ks = progressive_ks(sae.config.k, sae.config.n_latents)
    with torch.no_grad():
        return {k_prime: fvu(x, sae.decode(sae.encode(x, k=k_prime))).item() for k_prime in ks}


@dataclass
class ReconstructionMetrics:
    """Running sums that give FVU, L0, cosine, dead fraction and progressive FVU over many batches.

    FVU pools the whole stream: Σ‖x − x_hat‖² / Σ‖x − mean(x)‖², with mean(x) the mean over every
    token seen (accumulated in float64 as Σx and Σ‖x‖², so one pass suffices).

    Example:
        >>> metrics = ReconstructionMetrics(n_latents=sae.config.n_latents)
        >>> for x in batches: metrics.update(x, sae.encode(x), sae.decode(sae.encode(x)))
        >>> metrics.fvu, metrics.dead_fraction
    """

    n_latents: int
    n_tokens: int = field(default=0, init=False)
    fired: torch.Tensor | None = field(default=None, init=False)  # [n_latents] bool
    _sum_x: torch.Tensor | None = field(default=None, init=False)  # [d] float64
    _sum_x_squared: float = field(default=0.0, init=False)
    _sum_error: float = field(default=0.0, init=False)
    _sum_cosine: float = field(default=0.0, init=False)
    _sum_l0: float = field(default=0.0, init=False)
    _progressive_error: dict[int, float] = field(default_factory=dict, init=False)

    def update(
        self, x: torch.Tensor, code, x_hat: torch.Tensor, progressive: dict[int, torch.Tensor] | None = None
    ) -> None:
        """Add one batch: x, x_hat [tokens, d]; code with indices, values [tokens, k]; progressive {k': x_hat}."""
        x = x.reshape(-1, x.shape[-1])
        x64 = x.double()
        indices, values = code.indices.reshape(x.shape[0], -1), code.values.reshape(x.shape[0], -1)
        fired = fired_latents(indices, values, self.n_latents)
        self.fired = fired if self.fired is None else self.fired | fired
        self._sum_x = x64.sum(dim=0) if self._sum_x is None else self._sum_x + x64.sum(dim=0)
        self._sum_x_squared += x64.pow(2).sum().item()
        self._sum_error += (x64 - x_hat.reshape(x.shape).double()).pow(2).sum().item()
        self._sum_cosine += cosine(x, x_hat.reshape(x.shape)).item() * x.shape[0]
        self._sum_l0 += (values > 0).sum().item()
        for k_prime, x_hat_k in (progressive or {}).items():
            error = (x64 - x_hat_k.reshape(x.shape).double()).pow(2).sum().item()
            self._progressive_error[k_prime] = self._progressive_error.get(k_prime, 0.0) + error
        self.n_tokens += x.shape[0]

    def _total_variance(self) -> float:
        if self.n_tokens == 0:
            raise ValueError("No tokens were added to ReconstructionMetrics; call update() with a batch first.")
        # Σ‖x − μ‖² = Σ‖x‖² − N‖μ‖²
        return self._sum_x_squared - self._sum_x.pow(2).sum().item() / self.n_tokens

    @property
    def fvu(self) -> float:
        return self._sum_error / self._total_variance()

    @property
    def explained_variance(self) -> float:
        return 1.0 - self.fvu

    @property
    def l0(self) -> float:
        return self._sum_l0 / self.n_tokens

    @property
    def cosine(self) -> float:
        return self._sum_cosine / self.n_tokens

    @property
    def dead_fraction(self) -> float:
        """Fraction of latents that never fired over the n_tokens seen (the window)."""
        self._total_variance()
        return 1.0 - self.fired.float().mean().item()

    @property
    def progressive(self) -> dict[int, float]:
        """{k': FVU with k' latents kept} over the stream."""
        variance = self._total_variance()
        return {k_prime: error / variance for k_prime, error in sorted(self._progressive_error.items())}
