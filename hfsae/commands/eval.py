"""`hfsae eval MODEL`: measure an SAE with the paper's metrics, write eval_results.json, then its card."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from hfsae.evaluation.evaluate import EvalConfig, EvalResults, evaluate, write_eval_results
from hfsae.folder import CONFIG_FILE, EVAL_RESULTS_FILE


@dataclass
class EvalArgs(EvalConfig):
    """`hfsae eval MODEL`: the SAE to measure, where to write its results, and how to evaluate it."""

    model: str | None = field(
        default=None,
        metadata={"help": "The SAE: a saved folder, a Hub repo id or a registry name (see `hfsae list`)."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where eval_results.json goes; default: the SAE's folder when it is local, else ./eval-NAME."},
    )
    inference: str | None = field(
        default=None,
        metadata={"help": "Selection at inference: topk | threshold; None: the SAE's own (a BatchTopK SAE's threshold)."},
    )
    card: bool = field(default=True, metadata={"help": "Rewrite the folder's README.md model card with the new metrics."})
    quiet: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ValueError("Name the SAE to evaluate: hfsae eval MODEL_DIR_OR_NAME.")


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_eval(args: EvalArgs) -> EvalResults:
    """Evaluate, write eval_results.json (and n2g_explanations.json), then the card, and print the headline metrics."""
    from hfsae.hub.card import write_card
    from hfsae.hub.loading import load

    sae = load(args.model)
    if args.inference is not None:
        sae.config.inference = args.inference
        sae.config.validate_architecture()  # e.g. a threshold asked of a TopK SAE
    config = EvalConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)})
    results = evaluate(sae, config=config, quiet=args.quiet)
    local = Path(args.model)
    output_dir = Path(args.output_dir) if args.output_dir else local if local.is_dir() else Path(f"eval-{local.name}")
    write_eval_results(output_dir, results)
    # The card is rendered from what the folder holds, so it comes after eval_results.json.
    if args.card and (output_dir / CONFIG_FILE).is_file():
        write_card(output_dir)
    print(
        f"{args.model}: FVU {results.fvu:.4f}, L0 {results.l0:.1f}, dead {results.dead_fraction:.2%}, "
        f"ΔCE {_format(results.delta_ce)}, CE recovered {_format(results.ce_loss_recovered)} "
        f"→ {output_dir / EVAL_RESULTS_FILE}"
    )
    return results
