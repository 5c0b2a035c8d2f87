"""`hfsae train` and `hfsae sweep`: train TopK SAEs on a language model's activations (options: TrainConfig)."""

from __future__ import annotations

from hfsae.training.config import TrainConfig
from hfsae.training.run import train
from hfsae.training.sweep import SweepConfig, sweep


def _report(results, output_dir: str) -> None:
    for result in results:
        metrics = result.metrics
        print(
            f"{result.name}: held-out FVU {metrics['fvu']:.4f} ({metrics['weights']} weights), "
            f"dead {metrics['dead_fraction']:.2%}, {metrics['tokens']:,} tokens → {output_dir}"
        )


def run_train(config: TrainConfig) -> None:
    """Train every SAE of `config` and print one line per SAE (main process)."""
    _report(train(config), config.output_dir)


def run_sweep(config: SweepConfig) -> None:
    """Train the sweep's grid, fit the scaling laws and print where they went."""
    report = sweep(config)
    if report is not None:
        print(f"{len(report.runs)} SAEs and their scaling fit → {config.output_dir}")
