"""`hfsae space SAE`: serve the explorer, or export it as a Space (`--export DIR`) and push it (`--push-to-hub`)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hfsae.commands.analyze import DEFAULT_SAE
from hfsae.space import export_space, launch, push_space


@dataclass
class SpaceArgs:
    """Options of `hfsae space`."""

    sae: str = field(
        default=DEFAULT_SAE,
        metadata={
            "help": "The SAE: a folder, Hub repo or registry name (default: the folder `hfsae train` writes). "
            "A Space (--export/--push-to-hub) needs a Hub repo id or registry name."
        },
    )
    analysis: str | None = field(
        default=None,
        metadata={"help": "Its analysis: a folder or Hub dataset repo (default: <SAE folder>/analysis)."},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on."})
    port: int | None = field(
        default=None,
        metadata={"help": "Port to serve on (default: Gradio's, 7860 or the next free one)."},
    )
    export: str | None = field(
        default=None,
        metadata={"help": "Write a self-contained Space into this folder instead of serving (app, wheel, requirements, card)."},
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty --export folder."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Upload the exported Space to this Space repo, 'user/name' (created when missing)."}
    )
    private: bool | None = field(default=None, metadata={"help": "Create the Space repo private."})


def run_space(args: SpaceArgs):
    """`hfsae space`: serve the explorer until interrupted, or export (and push) it as a Space."""
    if args.export is None and args.push_to_hub is None:
        if args.sae == DEFAULT_SAE and not Path(DEFAULT_SAE).is_dir():
            raise FileNotFoundError(
                f"No SAE folder {DEFAULT_SAE!r} here: train the built-in default with `hfsae train`, or name one with --sae."
            )
        return launch(args.sae, args.analysis, host=args.host, port=args.port)
    with tempfile.TemporaryDirectory(prefix="hfsae-space-") as scratch:
        folder = export_space(
            args.export or Path(scratch) / "space", args.sae, analysis=args.analysis, overwrite=args.overwrite_output_dir
        )
        print(f"exported the explorer of {args.sae} as a Space → {folder}")
        if args.push_to_hub:
            url = push_space(folder, args.push_to_hub, private=args.private)
            print(f"pushed the Space to {args.push_to_hub}: {url}")
    return folder
