"""`hfsae convert`, `hfsae list` and `hfsae push`: their options as dataclasses and what they run.

    hfsae convert --src v5_32k/resid_post_mlp --dst gpt2-32k --from openai
    hfsae convert --src my-sae --dst my-sae-saelens --from hfsae --to saelens
    hfsae convert --src my-sae --dst my-sae-sparsify --from hfsae --to sparsify
    hfsae list --base-model EleutherAI/pythia-70m
    hfsae list --remote
    hfsae push --folder my-saes --repo-id org/smollm2-saes --revision dev --create-pr
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..hub.convert import SOURCE_FORMATS, TARGET_FORMATS


@dataclass
class ConvertArgs:
    src: str = field(metadata={"help": "The SAE to convert: a .pt file or a folder (or a folder of them)."})
    dst: str = field(metadata={"help": "A new folder to write the converted SAE(s) to; nothing is written outside it."})
    source_format: str = field(metadata={"aliases": ["--from"], "help": f"One of {', '.join(SOURCE_FORMATS)}."})
    target_format: str = field(default="hfsae", metadata={"aliases": ["--to"], "help": f"One of {', '.join(TARGET_FORMATS)}."})


@dataclass
class ListArgs:
    remote: bool = field(default=False, metadata={"help": "Also list Hub models whose card says library_name: hfsae."})
    base_model: str | None = field(
        default=None, metadata={"help": "Only SAEs of this base model (a Hub id such as EleutherAI/pythia-70m, or its name)."}
    )


@dataclass
class PushArgs:
    folder: str = field(metadata={"help": "A saved SAE folder (config.json), or a multi-SAE folder (index.json)."})
    repo_id: str = field(metadata={"help": "The Hub repo to push to ('org/name', or 'name' for your account); created if missing."})
    revision: str | None = field(default=None, metadata={"help": "The branch to push to; created from main when missing."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing to the branch."})
    private: bool = field(default=False, metadata={"help": "Create the repo private (an existing repo keeps its visibility)."})
    commit_message: str | None = field(default=None, metadata={"help": "The commit (or pull request) title."})
    commit_description: str | None = field(default=None, metadata={"help": "The commit (or pull request) description."})
    tags: list[str] | None = field(default=None, metadata={"help": "Extra tags for the model card."})


def run_convert(args: ConvertArgs) -> None:
    from ..hub.convert import convert

    destination = convert(args.src, args.dst, source_format=args.source_format, target_format=args.target_format)
    print(f"converted {args.src} ({args.source_format}) → {destination} ({args.target_format})")


def run_list(args: ListArgs) -> None:
    from ..hub.loading import list_saes

    for item in list_saes(remote=args.remote, base_model=args.base_model):
        where = f"{item.repo}/{item.folder}" if item.folder else item.repo
        print(f"{item.name}\t{item.hook_point or '-'}\t{item.base_model or '-'}\t{item.format}\t{where}\t({item.source})")


def run_push(args: PushArgs) -> None:
    from ..folder import publishable_files
    from ..hub.push import push_folder

    _, left_out = publishable_files(args.folder)
    commit = push_folder(
        args.folder, args.repo_id, revision=args.revision, create_pr=args.create_pr, private=args.private or None,
        commit_message=args.commit_message, commit_description=args.commit_description, tags=args.tags,
    )
    if left_out:
        print(f"left out (not part of an SAE folder): {', '.join(left_out)}")
    print(f"pushed {args.folder} → {commit.pr_url or commit.commit_url}")
