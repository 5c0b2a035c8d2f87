"""`hfsae sweep`: train a grid of (n_latents, k) SAEs from one activation stream, then fit the scaling laws.

A sweep is an ordinary training run in the trainer's many-SAEs mode (every SAE reads the same
harvested activations, PAPER.md §5 fits runs that differ only in n and k), followed by
`hfsae.evaluation.scaling.scaling` on its output folder. `SweepConfig` is `TrainConfig` with a
3×3 grid and a shorter schedule as defaults, sized so the built-in default finishes in about
10 minutes on 2 CPU cores; every TrainConfig option still applies.

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
    # Nine SAEs share each step, so the sweep trains on fewer tokens than `hfsae train` to stay
    # near 10 minutes on 2 cores: the encoder matmuls of all nine cost ~2.6× the single default's.
    harvest_tokens: int = field(
        default=150_000, metadata={"help": "Distinct training tokens harvested once and reused for every epoch."}
    )
    train_tokens: int = field(default=1_000_000, metadata={"help": "Tokens each SAE of the grid trains on."})
    output_dir: str = field(
        default="sweep", metadata={"help": "Folder for the grid's SAE folders, scaling.json and scaling.png."}
    )


def sweep(config: SweepConfig | None = None) -> ScalingReport:
    """Train every (hook point, n_latents, k) SAE of config into config.output_dir and fit the scaling laws.

    With several hook points the fits are made per hook point (`scaling(..., hook_point=...)`);
    this returns the first hook point's report.
    """
    from .run import train

    config = config if config is not None else SweepConfig()
    train(config)
    reports = [
        scaling(config.output_dir, hook_point=hook_point, plot_path=_plot_path(config, hook_point), quiet=config.quiet)
        for hook_point in config.hook_points
    ]
    return reports[0]


def _plot_path(config: TrainConfig, hook_point: str) -> str:
    if len(config.hook_points) == 1:
        return f"{config.output_dir}/scaling.png"
    return f"{config.output_dir}/scaling.{hook_point}.png"
