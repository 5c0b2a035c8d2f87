"""`hfsae sweep`: train a grid of (n_latents, k) SAEs from one activation stream, then fit the scaling laws.

A sweep is an ordinary training run in the trainer's many-SAEs mode (every SAE reads the same
harvested activations, docs/method.md §5 fits runs that differ only in n and k), followed by
`hfsae.evaluation.scaling.scaling` on its output folder. `SweepConfig` is `TrainConfig` with a
3×3 grid and a shorter schedule as defaults, sized so the built-in default finishes in minutes on a
CPU (docs/performance.md); every TrainConfig option still applies.

    hfsae sweep                                        # n 1024, 2048, 4096 × k 8, 16, 32 → sweep/
    hfsae scaling sweep                                # refit later, or on another sweep folder
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..evaluation.scaling import ScalingReport, scaling
from .config import TrainConfig

DEFAULT_N_LATENTS = (1024, 2048, 4096)
DEFAULT_K = (8, 16, 32)


@dataclass
class SweepConfig(TrainConfig):
    """TrainConfig with sweep defaults: a 3×3 grid of n_latents × k trained together, then fitted.

    Example:
        >>> report = sweep(SweepConfig(output_dir="sweeps/layer10"))
        >>> report.loss_nk.coefficients
    """

    n_latents: list[int] = field(
        default_factory=lambda: list(DEFAULT_N_LATENTS),
        metadata={"help": "Dictionary sizes of the grid; one SAE per (hook point, n_latents, k)."},
    )
    k: list[int] = field(
        default_factory=lambda: list(DEFAULT_K),
        metadata={"help": "Latents kept per token of the grid; one SAE per (hook point, n_latents, k)."},
    )
    # Nine SAEs share each step (21,504 latents in all, against 4,096 for the single default SAE), so
    # the sweep harvests and trains on less. The runs are far from converged there (docs/method.md §3:
    # tokens to convergence grow ~ n^0.6), so raise train_tokens for a fit of converged losses.
    harvest_tokens: int = field(
        default=50_000, metadata={"help": "Distinct tokens harvested once and reused in epochs (without --streaming)."}
    )
    eval_tokens: int = field(default=8_192, metadata={"help": "Held-out tokens for each SAE's final FVU."})
    batch_size: int = field(default=1024, metadata={"help": "Tokens per optimiser step."})
    train_tokens: int = field(default=131_072, metadata={"help": "Tokens each SAE of the grid trains on."})
    output_dir: str = field(
        default="sweep", metadata={"help": "Folder for the grid's SAE folders, scaling.json and scaling.png."}
    )


def sweep(config: SweepConfig | None = None) -> ScalingReport | None:
    """Train every (hook point, n_latents, k) SAE of config into config.output_dir and fit the scaling laws.

    With several hook points the fits are made per hook point (`scaling(..., hook_point=...)`);
    this returns the first hook point's report (None on processes other than the main one).
    """
    from .run import train

    config = config if config is not None else SweepConfig()
    if not train(config):
        return None
    reports = [
        scaling(config.output_dir, hook_point=hook_point, plot_path=_plot_path(config, hook_point), quiet=config.quiet)
        for hook_point in config.hook_points
    ]
    return reports[0]


def _plot_path(config: TrainConfig, hook_point: str) -> str:
    if len(config.hook_points) == 1:
        return f"{config.output_dir}/scaling.png"
    return f"{config.output_dir}/scaling.{hook_point}.png"
