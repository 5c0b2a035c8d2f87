"""`hfsae card --model-dir DIR`: write (or rewrite) the README.md model card and figures of a saved SAE folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hfsae.hub.card import write_card


@dataclass
class CardArgs:
    """Options of `hfsae card`."""

    model_dir: str = field(
        metadata={"help": "A saved SAE folder (config.json) whose README.md card to write or rewrite."}
    )
    repo_id: str | None = field(
        default=None, metadata={"help": "The Hub repo 'org/name' the usage snippet loads; default: the folder."}
    )
    license: str = field(
        default="apache-2.0", metadata={"help": "The license in the card's metadata (a Hub license id)."}
    )


def run_card(args: CardArgs) -> Path:
    """Regenerate the card and figures from the folder's files and print the card's path."""
    path = write_card(args.model_dir, repo_id=args.repo_id, license=args.license)
    print(path)
    return path
