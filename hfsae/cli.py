"""The `hfsae` command: one subcommand per entry of COMMANDS, options generated from config dataclasses.

Adding a subcommand is one entry: a name mapped to a `Command` (its config dataclass, the function
that runs it, one line of help). Options come from the dataclass fields through
transformers.HfArgumentParser, so each field's docstring is its `--help` and both `--output-dir`
and `--output_dir` spellings work. A user error prints one line to stderr and exits with status 1.

    hfsae train                                   # the built-in default (about 4–5 min on 2 CPU cores)
    hfsae train --hook-points layers.6.resid_post --n-latents 4096 8192 --output-dir my-saes
    hfsae eval my-saes/layers.6.resid_post/n4096_k32
    hfsae convert v5_32k_layer_8.pt gpt2-l8 --from openai
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .analysis import AnalyzeArgs, run_analyze
from .evaluation.scaling import ScalingArgs, run_scaling
from .hub.card import CardArgs, run_card
from .hub.commands import ConvertArgs, ListArgs, PushArgs, run_convert, run_list, run_push
from .space import SpaceArgs, run_space
from .evaluation.evaluate import EvalArgs, run_eval
from .training.config import TrainConfig
from .training.sweep import SweepConfig, sweep


@dataclass(frozen=True)
class Command:
    """A subcommand: the dataclass its options are parsed into, and the function that runs on it."""

    config_class: type
    run: Callable[[Any], Any]
    help: str
    positional: tuple[str, ...] = ()
    """Fields that may also be given as leading positional arguments, in this order."""


def _train(config: TrainConfig) -> None:
    from .training.run import train

    for result in train(config):
        metrics = result.metrics
        print(
            f"{result.name}: held-out FVU {metrics['fvu']:.4f} ({metrics['weights']} weights), "
            f"dead {metrics['dead_fraction']:.2%}, {metrics['tokens']:,} tokens → {config.output_dir}"
        )


COMMANDS: dict[str, Command] = {
    "train": Command(TrainConfig, _train, "Train TopK SAEs on a language model's activations."),
    "eval": Command(EvalArgs, run_eval, "Measure an SAE with the paper's metrics; write eval_results.json.", ("model",)),
    "convert": Command(
        ConvertArgs, run_convert, "Convert SAEs from OpenAI, SAELens or sparsify (or to SAELens).", ("src", "dst")
    ),
    "list": Command(ListArgs, run_list, "List SAEs known by name, and hfsae models on the Hub when online."),
    "push": Command(PushArgs, run_push, "Push a saved SAE folder to the Hub with its model card."),
    "card": Command(CardArgs, run_card, "Write (or rewrite) the README.md model card and figures of a saved SAE folder."),
    "sweep": Command(SweepConfig, sweep, "Train a grid of (n_latents, k) SAEs from one activation stream, then fit scaling laws."),
    "scaling": Command(ScalingArgs, run_scaling, "Fit L(n, k) and L(C) to a sweep folder; print coefficients ± errors, plot them."),
    "analyze": Command(
        AnalyzeArgs, run_analyze, "Run an SAE over text once and save per-latent statistics (a parquet dataset).", ("sae",)
    ),
    "space": Command(
        SpaceArgs, run_space, "Explore an SAE in the browser: text, latents, search, steering, metrics.", ("sae",)
    ),
}


class _OneLineErrors(argparse.ArgumentParser):
    """argparse prints usage plus the error; one line that names the problem is easier to act on."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `hfsae` parser with one subparser per entry of COMMANDS."""
    from transformers import HfArgumentParser

    parser = _OneLineErrors(prog="hfsae", description="TopK sparse autoencoders as Hugging Face models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_OneLineErrors)
    for name, command in COMMANDS.items():
        subparsers.add_parser(
            name,
            parents=[HfArgumentParser(command.config_class, add_help=False)],
            help=command.help,
            description=command.help,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
    return parser


def _options_for_positionals(argv: list[str]) -> list[str]:
    """`hfsae eval DIR --n-tokens 64` → `hfsae eval --model DIR --n-tokens 64` (leading positionals only)."""
    if not argv or argv[0] not in COMMANDS:
        return argv
    fields, rest, options = COMMANDS[argv[0]].positional, argv[1:], []
    for name in fields:
        if not rest or rest[0].startswith("-"):
            break
        options += [f"--{name}", rest.pop(0)]
    return [argv[0], *options, *rest]


def parse(argv: Sequence[str] | None = None) -> tuple[Command, Any]:
    """The command named in argv and its config dataclass, built (and validated) from the options."""
    argv = _options_for_positionals(list(sys.argv[1:] if argv is None else argv))
    namespace = vars(build_parser().parse_args(argv))
    command = COMMANDS[namespace.pop("command")]
    return command, command.config_class(**namespace)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hfsae` console script; returns the exit status."""
    try:
        command, config = parse(argv)
        command.run(config)
    except (ValueError, LookupError, OSError, ImportError) as err:
        # User errors (bad option values, missing files or models, unknown hook points) are ours to
        # explain in one line; anything else is a bug and keeps its traceback.
        message = " ".join(str(err).split())
        print(f"hfsae: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hfsae: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
