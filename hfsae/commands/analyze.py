"""`hfsae analyze SAE`: run an SAE over text once, save its per-latent dataset, and push it (`--push-to-hub`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hfsae.analysis import analyze, default_output_dir, push_analysis

DEFAULT_SAE = "sae"  # where `hfsae train` with no arguments writes the built-in default


@dataclass
class AnalyzeArgs:
    """Options of `hfsae analyze`."""

    sae: str = field(
        default=DEFAULT_SAE,
        metadata={"help": "The SAE: a folder, Hub repo or registry name (default: the folder `hfsae train` writes)."},
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Text to run over: 'builtin', a Hub dataset or local files (default: the SAE's training text)."
        },
    )
    n_tokens: int = field(default=65_536, metadata={"help": "Tokens to analyse."})
    context_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per context (default: the SAE's, else 64)."},
    )
    batch_size: int = field(default=16, metadata={"help": "Contexts per forward pass."})
    n_top_examples: int = field(default=12, metadata={"help": "Top-activating contexts kept per latent."})
    n_random_examples: int = field(default=6, metadata={"help": "Random activating contexts kept per latent."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where to write (default: <SAE folder>/analysis)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the analysis already in --output-dir (a folder holding anything else is never replaced)."},
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "Also push the dataset, its settings and its card to this Hub dataset repo, 'org/name'."},
    )
    private: bool | None = field(default=None, metadata={"help": "Create the dataset repo private."})
    quiet: bool = field(default=False, metadata={"help": "No progress bar."})


def run_analyze(args: AnalyzeArgs):
    """`hfsae analyze`: load the SAE, analyse it, save (and optionally push) the dataset."""
    from hfsae.hub.loading import load

    if args.sae == DEFAULT_SAE and not Path(DEFAULT_SAE).is_dir():
        raise FileNotFoundError(
            f"No SAE folder {DEFAULT_SAE!r} here: train the built-in default with `hfsae train`, or name one with --sae."
        )
    sae = load(args.sae)
    texts = None
    if args.dataset is not None:
        from hfsae.activations.text import TextSource

        texts = TextSource(dataset=args.dataset, split="all")
    dataset = analyze(
        sae,
        texts=texts,
        n_tokens=args.n_tokens,
        context_size=args.context_size,
        batch_size=args.batch_size,
        n_top_examples=args.n_top_examples,
        n_random_examples=args.n_random_examples,
        output_dir=args.output_dir,
        overwrite=args.overwrite_output_dir,
        quiet=args.quiet,
    )
    where = Path(args.output_dir) if args.output_dir else default_output_dir(sae)
    print(f"analysed {len(dataset):,} latents → {where}")
    if args.push_to_hub:
        url = push_analysis(where, args.push_to_hub, private=args.private)
        print(f"pushed the analysis to the dataset repo {args.push_to_hub}: {url}")
    return dataset
