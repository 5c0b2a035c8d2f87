"""`hfsae scaling SWEEP_DIR`: fit L(n, k), L(n) per k and L(C) to a sweep folder, print the fits, write the plot and scaling.json."""

from __future__ import annotations

from dataclasses import dataclass, field

from hfsae.evaluation.scaling import ScalingReport, scaling


@dataclass
class ScalingArgs:
    """Options of `hfsae scaling`."""

    sweep_dir: str = field(
        metadata={"help": "The --output-dir of `hfsae sweep`, or a folder of several (every SAE folder with training_metrics.json under it)."}
    )
    hook_point: str | None = field(
        default=None, metadata={"help": "Fit the SAEs of this hook point (needed when the sweep has several)."}
    )
    plot_path: str | None = field(
        default=None, metadata={"help": "Where to write the PNG plot; default SWEEP_DIR/scaling.png."}
    )


def run_scaling(args: ScalingArgs) -> ScalingReport:
    """Fit, print coefficients ± standard errors, write the plot and scaling.json."""
    return scaling(args.sweep_dir, hook_point=args.hook_point, plot_path=args.plot_path)
