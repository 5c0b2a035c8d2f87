"""Push SAEs to the Hub as transformers' push_to_hub does, with our model card (never transformers' generic one).

    sae.push_to_hub("org/sae-smollm2")                                   # one SAE at the repo root
    sae.push_to_hub("org/sae-smollm2", revision="dev", create_pr=True)    # a PR against branch dev
    sae.push_to_hub("org/smollm2-saes", folder="layers.8.resid_post")     # one folder of a multi-SAE repo
    push_folder("my-saes", "org/smollm2-saes")                            # what `hfsae push` does

Only the files of `hfsae.folder.publishable_files` are uploaded (config, weights, card, metrics,
analysis); checkpoints, staging folders and dotfiles such as .env are left out and named in a warning.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from transformers import PreTrainedModel

from ..folder import (
    CARD_FILE,
    CONFIG_FILE,
    INDEX_FILE,
    check_finite,
    check_folder_name,
    index_entry,
    publishable_files,
    read_index,
    write_index,
    write_json_atomic,
)
from .card import template_path, write_card
from .multi import merge_entries

logger = logging.getLogger(__name__)

# The options save_pretrained(push_to_hub=True, ...) hands on to the push.
PUSH_OPTIONS = ("repo_id", "revision", "create_pr", "commit_message", "commit_description", "private", "token", "tags")
TAGS = ["sparse-autoencoder", "topk-sae", "hfsae"]


def write_multi_sae_card(folder: Path, repo_id: str, entries: list[dict[str, Any]], tags: list[str] | None = None) -> Path:
    """The top-level README of a multi-SAE repo (model_cards/multi_sae.md): library_name hfsae and a table of its SAEs."""
    base_models = sorted({entry["base_model"] for entry in entries if entry.get("base_model")})
    data = ModelCardData(library_name="hfsae", tags=[*TAGS, *(tags or [])], base_model=base_models or None)
    example = entries[0].get("hook_point") or entries[0]["folder"]
    card = ModelCard.from_template(
        data, template_path=str(template_path("multi_sae.md")), repo_id=repo_id, saes=entries, example=example
    )
    card.save(folder / CARD_FILE)
    return folder / CARD_FILE


def write_download_counter(folder: Path) -> Path:
    """A top-level config.json for a multi-SAE repo: the Hub counts a model repo's downloads by config.json requests."""
    return write_json_atomic(folder / CONFIG_FILE, {"library_name": "hfsae", "index": INDEX_FILE})


def add_tags(card_path: Path, tags: list[str] | None) -> None:
    if tags:
        card = ModelCard.load(card_path)
        card.data.tags = [*(card.data.tags or []), *(tag for tag in tags if tag not in (card.data.tags or []))]
        card.save(card_path)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    path_in_repo: str = "",
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    tags: list[str] | None = None,
) -> CommitInfo:
    """Upload a saved SAE folder (one SAE, or several with index.json) with its card, as one commit.

    transformers' semantics: the repo is created when missing (a name without namespace goes to your
    account; the id the Hub returns is used), `revision` is a branch created when missing,
    `create_pr=True` opens a pull request against it. The card is rendered once, with the repo id.
    Returns the CommitInfo (`.commit_url`, `.pr_url`); `.repo_url.repo_id` is the full repo id.
    """
    folder = Path(folder)
    multi = (folder / INDEX_FILE).is_file()
    if not multi and not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no saved SAE (no {CONFIG_FILE} or {INDEX_FILE}); save one first.")
    # Everything that can be wrong locally is checked before the first request: a refused push creates nothing.
    prefix = f"{check_folder_name(path_in_repo.strip('/'))}/" if path_in_repo.strip("/") else ""
    entries = read_index(folder / INDEX_FILE)["saes"] if multi else []
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    if multi:
        for entry in entries:
            if (folder / entry["folder"] / CONFIG_FILE).is_file():
                write_card(folder / entry["folder"], repo_id=repo_id, subfolder=entry["folder"])
        write_multi_sae_card(folder, repo_id, entries, tags)
        write_download_counter(folder)
    else:
        write_card(folder, repo_id=repo_id, subfolder=prefix.rstrip("/") or None)
        add_tags(folder / CARD_FILE, tags)
    kept, left_out = publishable_files(folder)
    if multi:
        kept.append(CONFIG_FILE)  # the download counter beside index.json
        left_out = [path for path in left_out if path != CONFIG_FILE]
    if left_out:
        logger.warning("Not uploading %d path(s) of %s that are not part of an SAE folder: %s", len(left_out), folder,
                       ", ".join(left_out))
    operations = [CommitOperationAdd(path_in_repo=prefix + path, path_or_fileobj=folder / path) for path in kept]
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or ("Upload SAEs with hfsae" if multi else "Upload SAE with hfsae"),
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


def push_saved_folder(save_directory: str | os.PathLike, *, repo_id: str | None = None, **options: Any) -> CommitInfo:
    """save_pretrained(push_to_hub=True): push the folder just saved; repo_id defaults to the folder's name."""
    return push_folder(save_directory, repo_id or Path(save_directory).resolve().name, **options)


def save_for_push(sae: Any, folder: Path) -> None:
    """Config and weights only: transformers' own save_pretrained, not HubMixin's, whose card push_folder would redo."""
    check_finite(dict(sae.state_dict()), what="The SAE to push")
    PreTrainedModel.save_pretrained(sae, folder)


def existing_entries(api: HfApi, repo_id: str, revision: str | None) -> list[dict[str, Any]]:
    """The entries of the repo's index.json at `revision`, or [] for a new repo, branch or one without an index."""
    try:
        path = hf_hub_download(repo_id, INDEX_FILE, revision=revision, token=api.token)
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return []
    return read_index(path)["saes"]


def push_to_hub(
    sae: Any,
    repo_id: str,
    *,
    folder: str | None = None,
    subfolder: str | None = None,
    **options: Any,
) -> CommitInfo:
    """Upload one SAE to the repo root, or into `folder` (alias `subfolder`) of a multi-SAE repo.

    Pushing into a folder keeps the repo's other SAEs: its index.json and top-level card list them all.
    Options as `push_folder`: revision, create_pr, commit_message, commit_description, private, token, tags.
    """
    folder = folder or subfolder
    if folder:
        check_folder_name(folder)  # before the repo is created: a refused name leaves nothing behind
    with tempfile.TemporaryDirectory(prefix="hfsae-push-") as staging:
        staging = Path(staging)
        if not folder:
            save_for_push(sae, staging)
            return push_folder(staging, repo_id, **options)
        save_for_push(sae, staging / folder)
        api = HfApi(token=options.get("token"))
        repo_id = api.create_repo(repo_id, private=options.get("private"), exist_ok=True).repo_id
        old = existing_entries(api, repo_id, options.get("revision"))
        entries = merge_entries(old, [index_entry(folder, sae.config)])
        write_index(staging, entries)
        return push_folder(staging, repo_id, **options)


def push_many(saes: dict[str, Any], repo_id: str, **options: Any) -> CommitInfo:
    """Upload several SAEs, one folder each, in one commit; index.json keeps the folders already there."""
    if not saes:
        raise ValueError("push_many needs at least one SAE; got an empty mapping.")
    with tempfile.TemporaryDirectory(prefix="hfsae-push-") as staging:
        staging = Path(staging)
        for name, sae in saes.items():  # names and weights are checked before the repo is created
            save_for_push(sae, staging / check_folder_name(name))
        api = HfApi(token=options.get("token"))
        repo_id = api.create_repo(repo_id, private=options.get("private"), exist_ok=True).repo_id
        old = existing_entries(api, repo_id, options.get("revision"))
        entries = merge_entries(old, [index_entry(name, sae.config) for name, sae in saes.items()])
        write_index(staging, entries)
        return push_folder(staging, repo_id, **options)
