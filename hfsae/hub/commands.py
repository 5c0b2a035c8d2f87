"""The Hub subcommands of `hfsae` (convert, list, push): their options as dataclasses and what they run.

    hfsae convert --src v5_32k/resid_post_mlp --dst gpt2-32k --from openai
    hfsae convert --src my-sae --dst my-sae-saelens --from hfsae --to saelens
    hfsae list
    hfsae push --folder my-saes/layers.8.resid_post --repo-id org/smollm2-saes
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .convert import SOURCE_FORMATS, TARGET_FORMATS


@dataclass
class ConvertArgs:
    src: str = field(metadata={"help": "The SAE to convert: a .pt file or a folder (or a folder of them)."})
    """The SAE to convert: a .pt file or a folder (or a folder of them)."""
    dst: str = field(metadata={"help": "A new folder to write the converted SAE(s) to."})
    """A new folder to write the converted SAE(s) to."""
    source_format: str = field(metadata={"aliases": ["--from"], "help": f"One of {', '.join(SOURCE_FORMATS)}."})
    """The format of src: openai | saelens | sparsify | hfsae."""
    target_format: str = field(default="hfsae", metadata={"aliases": ["--to"], "help": f"One of {', '.join(TARGET_FORMATS)}."})
    """The format to write: hfsae | saelens."""


@dataclass
class ListArgs:
    offline: bool = field(default=False, metadata={"help": "Show the registry only, without asking the Hub."})
    """Show the registry only, without asking the Hub."""


@dataclass
class PushArgs:
    folder: str = field(metadata={"help": "A saved SAE folder (config.json), or a multi-SAE folder (index.json)."})
    """A saved SAE folder (config.json), or a multi-SAE folder (index.json)."""
    repo_id: str = field(metadata={"help": "The Hub repo to push to, 'org/name'; created if missing."})
    """The Hub repo to push to, 'org/name'; created if missing."""
    private: bool = field(default=False, metadata={"help": "Create the repo private."})
    """Create the repo private."""
    commit_message: str = field(default="Upload SAE with hfsae", metadata={"help": "The commit message."})
    """The commit message."""


def run_convert(args: ConvertArgs) -> None:
    from .convert import convert

    destination = convert(args.src, args.dst, source_format=args.source_format, target_format=args.target_format)
    print(f"converted {args.src} ({args.source_format}) → {destination} ({args.target_format})")


def run_list(args: ListArgs) -> None:
    from .loading import list_saes

    for item in list_saes(online=False if args.offline else None):
        where = f"{item.repo}/{item.folder}" if item.folder else item.repo
        print(f"{item.name}\t{item.hook_point or '-'}\t{item.format}\t{where}\t({item.source})")


def run_push(args: PushArgs) -> None:
    from .push import push_folder

    commit = push_folder(args.folder, args.repo_id, commit_message=args.commit_message, private=args.private or None)
    print(f"pushed {args.folder} → {commit.commit_url}")
