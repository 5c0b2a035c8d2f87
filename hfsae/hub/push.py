"""Push SAEs to the Hub: config, safetensors and our model card (never transformers' generic one).

    sae.push_to_hub("org/sae-smollm2")                              # one SAE at the repo root
    sae.push_to_hub("org/smollm2-saes", folder="layers.8.resid_post")  # one folder of a multi-SAE repo
    push_many({"layers.8.resid_post": sae8, "layers.12.resid_post": sae12}, "org/smollm2-saes")
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from ..modeling import TopKSAE
from .card import write_card
from .multi import INDEX_FILE, entry_for, index_json, merge_entries, read_index

CARD_FILE = "README.md"


def write_collection_card(folder: Path, repo_id: str, entries: list[dict]) -> None:
    """A root README for a multi-SAE repo: library_name hfsae and a table of its SAEs."""
    base_models = sorted({entry["base_model"] for entry in entries if entry.get("base_model")})
    data = ModelCardData(library_name="hfsae", tags=["sparse-autoencoder", "topk-sae", "hfsae"],
                         base_model=base_models or None)
    rows = "\n".join(
        f"| `{e['folder']}` | {e.get('hook_point') or '–'} | {e.get('n_latents')} | {e.get('k')} |" for e in entries
    )
    example = entries[0].get("hook_point") or entries[0]["folder"] if entries else "layers.8.resid_post"
    content = (
        f"---\n{data.to_yaml()}\n---\n\n# {repo_id}\n\n"
        f"{len(entries)} TopK sparse autoencoders, one folder each, listed in `{INDEX_FILE}`.\n\n"
        "| folder | hook point | latents | k |\n|---|---|---|---|\n"
        f"{rows}\n\n## Usage\n\n```python\nimport hfsae\nfrom hfsae import TopKSAE\n\n"
        f'sae = TopKSAE.from_pretrained("{repo_id}", hookpoint="{example}")\n'
        f'saes = hfsae.hub.load_many("{repo_id}")\n```\n'
    )
    ModelCard(content).save(folder / CARD_FILE)


def existing_entries(api: HfApi, repo_id: str, revision: str | None) -> list[dict]:
    """The entries of the repo's index.json, or [] for a new repo or one without an index."""
    try:
        path = hf_hub_download(repo_id, INDEX_FILE, revision=revision, token=api.token)
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return []
    return read_index(path)["saes"]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload SAE with hfsae",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> CommitInfo:
    """Upload a saved SAE folder (one SAE, or several with index.json) as it is, adding a card if it has none."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / INDEX_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no saved SAE (no config.json or {INDEX_FILE}); save one first.")
    if not (folder / CARD_FILE).exists() and (folder / "config.json").is_file():
        write_card(folder, repo_id=repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision)


def push_to_hub(
    sae: TopKSAE,
    repo_id: str,
    *,
    folder: str | None = None,
    commit_message: str = "Upload SAE with hfsae",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> CommitInfo:
    """Upload one SAE to the repo root, or into `folder` of a multi-SAE repo (updating its index.json)."""
    if folder:
        return push_many({folder: sae}, repo_id, commit_message=commit_message, private=private, token=token,
                         revision=revision)
    with tempfile.TemporaryDirectory(prefix="hfsae-push-") as staging:
        sae.save_pretrained(staging)
        write_card(Path(staging), repo_id=repo_id)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message, revision=revision)


def push_many(
    saes: Mapping[str, TopKSAE],
    repo_id: str,
    *,
    commit_message: str = "Upload SAEs with hfsae",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> CommitInfo:
    """Upload several SAEs, one folder each, in one commit; index.json keeps the folders already there."""
    if not saes:
        raise ValueError("push_many needs at least one SAE; got an empty mapping.")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    entries = merge_entries(existing_entries(api, repo_id, revision), [entry_for(name, sae) for name, sae in saes.items()])
    with tempfile.TemporaryDirectory(prefix="hfsae-push-") as staging:
        staging = Path(staging)
        for name, sae in saes.items():
            sae.save_pretrained(staging / name)
            write_card(staging / name, repo_id=repo_id, subfolder=name)
        (staging / INDEX_FILE).write_text(index_json(entries), encoding="utf-8")
        write_collection_card(staging, repo_id, sorted(entries, key=lambda entry: entry["folder"]))
        return api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message, revision=revision)
