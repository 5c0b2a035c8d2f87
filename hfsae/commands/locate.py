"""`hfsae locate SAE --model M`: the SAE's FVU at its declared hook point and the sites next to it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LocateArgs:
    sae: str = field(metadata={"help": "The SAE: a saved folder, a Hub repo id or a registry name (see `hfsae list`)."})
    model: str = field(default="builtin", metadata={"help": "Its base model: 'builtin', a local folder or a Hub id."})
    hookpoint: str | None = field(
        default=None, metadata={"help": "Which SAE of a repo holding several (folder or hook point)."}
    )
    tokens: int = field(default=4096, metadata={"help": "How many tokens of text to measure on."})
    dataset: str | None = field(
        default=None, metadata={"help": "Text to run: a Hub dataset or local files; default the built-in corpus."}
    )
    device: str = field(default="cpu", metadata={"help": "Where the model and the SAE run."})


def run_locate(args: LocateArgs):
    """Measure, print one line per site (best first), and the warning when another site fits clearly better."""
    import sys

    from ..activations.models import load_language_model
    from ..activations.text import TextSource
    from ..hub.loading import load
    from ..locate import locate

    sae = load(args.sae, hookpoint=args.hookpoint, device=args.device)
    model, tokenizer = load_language_model(args.model, device=args.device, dtype="float32", quiet=True)
    texts = TextSource(dataset=args.dataset, split="test") if args.dataset else None
    result = locate(sae, model, tokenizer, texts=texts, tokens=args.tokens)
    for site, fvu in result.fits:
        mark = "\t(declared)" if site == result.declared else ""
        print(f"{site}\tFVU {fvu:.4f}{mark}")
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
    return result
