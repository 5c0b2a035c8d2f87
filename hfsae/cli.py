"""The `hfsae` command: one subcommand per entry of COMMANDS, options generated from config dataclasses.

Adding a subcommand is one entry: a name mapped to a `Command` (its config dataclass, the function
that runs it, one line of help). Options come from the dataclass fields through
transformers.HfArgumentParser, so each field's docstring is its `--help` and both `--output-dir`
and `--output_dir` spellings work. Every error prints one line to stderr and exits with status 1 (see
`main`); `--debug` or HFSAE_DEBUG=1 shows the traceback instead.

    hfsae train                                   # the built-in default (minutes on a CPU)
    hfsae train --hook-points layers.6.resid_post --n-latents 4096 8192 --output-dir my-saes
    hfsae eval my-saes/layers.6.resid_post/n4096_k32
    hfsae convert v5_32k_layer_8.pt gpt2-l8 --from openai
    hfsae env                                     # versions to paste into a bug report
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .commands.analyze import AnalyzeArgs, run_analyze
from .commands.card import CardArgs, run_card
from .commands.env import EnvArgs, run_env
from .commands.eval import EvalArgs, run_eval
from .commands.scaling import ScalingArgs, run_scaling
from .commands.hub import ConvertArgs, ListArgs, PushArgs, run_convert, run_list, run_push
from .commands.locate import LocateArgs, run_locate
from .commands.space import SpaceArgs, run_space
from .commands.steer import SteerArgs, run_steer
from .commands.train import run_sweep, run_train
from .training.config import TrainConfig
from .training.sweep import SweepConfig


@dataclass(frozen=True)
class Command:
    """A subcommand: the dataclass its options are parsed into, and the function that runs on it."""

    config_class: type
    run: Callable[[Any], Any]
    help: str
    positional: tuple[str, ...] = ()
    """Fields that may also be given as leading positional arguments, in this order."""


COMMANDS: dict[str, Command] = {
    "train": Command(TrainConfig, run_train, "Train TopK SAEs on a language model's activations."),
    "eval": Command(EvalArgs, run_eval, "Measure an SAE with the paper's metrics; write eval_results.json.", ("model",)),
    "convert": Command(
        ConvertArgs, run_convert, "Convert local SAEs of any format hfsae reads to hfsae (or to SAELens).", ("src", "dst")
    ),
    "list": Command(ListArgs, run_list, "List SAEs known by name (--base-model to filter); --remote adds Hub models tagged hfsae."),
    "push": Command(PushArgs, run_push, "Push a saved SAE folder to the Hub with its model card.", ("folder", "repo_id")),
    "card": Command(CardArgs, run_card, "Write (or rewrite) the README.md model card and figures of a saved SAE folder."),
    "sweep": Command(SweepConfig, run_sweep, "Train a grid of (n_latents, k) SAEs from one activation stream, then fit scaling laws."),
    "scaling": Command(
        ScalingArgs, run_scaling, "Fit L(n, k), L(n) per k and L(C) to a sweep folder; print coefficients ± errors, plot them.",
        ("sweep_dir",),
    ),
    "analyze": Command(
        AnalyzeArgs, run_analyze, "Run an SAE over text once and save per-latent statistics (a parquet dataset).", ("sae",)
    ),
    "space": Command(
        SpaceArgs, run_space, "Explore an SAE in the browser, or export it as a Hugging Face Space (--export, --push-to-hub).", ("sae",)
    ),
    "locate": Command(
        LocateArgs, run_locate, "Measure an SAE's FVU at its hook point and the sites next to it; warn if another fits better.",
        ("sae",),
    ),
    "steer": Command(
        SteerArgs, run_steer, "Generate with an SAE latent steered; --sweep measures activation, KL and ΔCE per strength.",
        ("sae",),
    ),
    "env": Command(EnvArgs, run_env, "Print the versions of hfsae, Python and its libraries, for bug reports."),
}


class _OneLineErrors(argparse.ArgumentParser):
    """argparse prints usage plus the error; one line that names the problem is easier to act on."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `hfsae` parser with one subparser per entry of COMMANDS."""
    from transformers import HfArgumentParser

    parser = _OneLineErrors(prog="hfsae", description="TopK sparse autoencoders as Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {importlib.metadata.version('hfsae')}")
    parser.add_argument(
        "--debug", action="store_true", help="Show the full traceback of an error (also: environment HFSAE_DEBUG=1)."
    )
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
    # The command is the first word that is not an option: the top-level options take no value.
    at = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if at is None or argv[at] not in COMMANDS:
        return argv
    fields, rest, options = COMMANDS[argv[at]].positional, argv[at + 1 :], []
    for name in fields:
        if not rest or rest[0].startswith("-"):
            break
        options += [f"--{name}", rest.pop(0)]
    return [*argv[: at + 1], *options, *rest]


def _parse_namespace(argv: Sequence[str] | None) -> dict[str, Any]:
    argv = _options_for_positionals(list(sys.argv[1:] if argv is None else argv))
    return vars(build_parser().parse_args(argv))


def parse(argv: Sequence[str] | None = None) -> tuple[Command, Any]:
    """The command named in argv and its config dataclass, built (and validated) from the options."""
    namespace = _parse_namespace(argv)
    namespace.pop("debug")
    command = COMMANDS[namespace.pop("command")]
    return command, command.config_class(**namespace)


# Exceptions that mean "the input is wrong" rather than "hfsae is wrong": the builtin families a
# library raises for bad values, missing keys, files and network, or a missing extra; and every
# exception class of the libraries that read the user's files, data and the Hub (a corrupt
# safetensors file, a malformed jsonl, a config failing huggingface_hub's strict validation).
USER_ERRORS = (ValueError, LookupError, OSError, ImportError)
# huggingface_hub's HTTP client: httpx up to huggingface_hub 1.x, its successor httpx2 since 2.0.
NETWORK_LIBRARIES = ("httpx", "httpx2")
USER_ERROR_LIBRARIES = ("huggingface_hub", "safetensors", "datasets", "pyarrow", "tokenizers", *NETWORK_LIBRARIES)


def is_user_error(err: BaseException) -> bool:
    """Whether `err` reports bad input or an unusable environment (one line), not a bug in hfsae."""
    if isinstance(err, USER_ERRORS):
        return True
    torch = sys.modules.get("torch")  # out of memory is about the sizes asked for; torch is loaded if it happened
    if torch is not None and isinstance(err, torch.OutOfMemoryError):
        return True
    return any(cls.__module__.split(".")[0] in USER_ERROR_LIBRARIES for cls in type(err).__mro__)


def _restates(message: str, other: str) -> bool:
    """Whether one message contains the other, either whole or after its first 'Label: ' prefix."""
    return any(a in b or a.split(": ", 1)[-1] in b for a, b in ((message, other), (other, message)))


def error_line(err: BaseException) -> str:
    """The one line `hfsae` prints for an error: its message, then each cause it wraps that says something new."""
    parts = []
    while err is not None and len(parts) < 4:
        message = " ".join(str(err).split()) or type(err).__name__
        # A wrapper often repeats its cause, or the cause restates the wrapper at length: keep one of them.
        if not any(_restates(message, part) for part in parts):
            parts.append(message)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return ": ".join([part.rstrip(".") for part in parts[:-1]] + parts[-1:])


def _network_hint(err: BaseException) -> str:
    """What to do when the Hub could not be reached at all (a transport error: refused, timed out, no DNS)."""
    unreachable = any(
        cls.__name__ == "TransportError" and cls.__module__.split(".")[0] in NETWORK_LIBRARIES for cls in type(err).__mro__
    )
    if not unreachable:
        return ""
    from huggingface_hub import constants

    return (f" (the Hub at {constants.ENDPOINT} cannot be reached: check the network and HF_ENDPOINT, or set "
            "HF_HUB_OFFLINE=1 to use only what is in the local cache)")  # fmt: skip


@contextlib.contextmanager
def _library_progress_bars(*, enabled: bool):
    """--quiet also hides the bars transformers and huggingface_hub draw (loading, writing, downloading)."""
    if enabled:
        yield
        return
    import huggingface_hub.utils
    import transformers.utils.logging

    hub_was_on = not huggingface_hub.utils.are_progress_bars_disabled()
    transformers_was_on = transformers.utils.logging.is_progress_bar_enabled()
    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if hub_was_on:
            huggingface_hub.utils.enable_progress_bars()
        if transformers_was_on:
            transformers.utils.logging.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hfsae` console script; returns the exit status.

    Every error is one line on stderr and exit status 1: a user error (`is_user_error`) as its
    message, anything else as a probable bug with its type. With `--debug` or HFSAE_DEBUG=1 the
    error propagates with its traceback instead.
    """
    namespace = _parse_namespace(argv)
    debug = namespace.pop("debug") or os.environ.get("HFSAE_DEBUG", "0") not in ("", "0")
    try:
        command = COMMANDS[namespace.pop("command")]
        with _library_progress_bars(enabled=not namespace.get("quiet", False)):
            command.run(command.config_class(**namespace))
    except KeyboardInterrupt:
        print("hfsae: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        if is_user_error(err):
            print(f"hfsae: error: {error_line(err)}{_network_hint(err)}", file=sys.stderr)
        else:
            print(
                f"hfsae: error: unexpected {type(err).__name__}: {error_line(err)}. This is probably a bug in "
                "hfsae: run again with --debug (or HFSAE_DEBUG=1) for the traceback, and report it with `hfsae env`.",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
