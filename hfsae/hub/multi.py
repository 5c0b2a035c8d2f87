"""Many SAEs in one folder or Hub repo: one subfolder per hook point or size, listed in index.json.

    index.json                    {"format": "hfsae-index", "version": 1, "saes": [{"folder": ..., "hook_point": ...}]}
    layers.8.resid_post/          config.json + model.safetensors (+ README.md)
    layers.8.resid_post.131k/     a second size at the same hook point
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..modeling import TopKSAE
from .files import SAEFileError, read_json

INDEX_FILE = "index.json"
INDEX_FORMAT = "hfsae-index"


class HookPointNotInRepoError(LookupError):
    """The multi-SAE folder or repo holds no SAE for the requested hook point."""


def entry_for(folder: str, sae: TopKSAE) -> dict[str, Any]:
    """The index.json entry describing `sae` stored in `folder`."""
    config = sae.config
    return {
        "folder": folder,
        "hook_point": config.hook_point,
        "base_model": config.base_model,
        "d_in": config.d_in,
        "n_latents": config.n_latents,
        "k": config.k,
    }


def default_folder(sae: TopKSAE, taken: set[str]) -> str:
    """The hook point as folder name, with the dictionary size appended when that name is taken."""
    base = sae.config.hook_point or "sae"
    if base not in taken:
        return base
    size = sae.config.n_latents
    return f"{base}.{size // 1024}k" if size % 1024 == 0 else f"{base}.{size}"


def index_json(entries: list[dict[str, Any]]) -> str:
    entries = sorted(entries, key=lambda entry: entry["folder"])
    return json.dumps({"format": INDEX_FORMAT, "version": 1, "saes": entries}, indent=2) + "\n"


def merge_entries(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` with the entries of `new` added, replacing any for the same folder."""
    replaced = {entry["folder"] for entry in new}
    return [entry for entry in old if entry["folder"] not in replaced] + new


def save_many(saes: Mapping[str, TopKSAE], folder: str | os.PathLike) -> Path:
    """Save each SAE in `folder/<name>/` (save_pretrained) and list them in `folder/index.json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / INDEX_FILE
    old = read_index(index_path)["saes"] if index_path.exists() else []
    for name, sae in saes.items():
        sae.save_pretrained(folder / name)
    entries = merge_entries(old, [entry_for(name, sae) for name, sae in saes.items()])
    index_path.write_text(index_json(entries), encoding="utf-8")
    return folder


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check an index.json."""
    index = read_json(path)
    if index.get("format") != INDEX_FORMAT or not isinstance(index.get("saes"), list):
        raise SAEFileError(f"{path} is not an hfsae index (expected format {INDEX_FORMAT!r} and a list 'saes').")
    for entry in index["saes"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("folder"), str):
            raise SAEFileError(f"{path}: every entry of 'saes' needs a 'folder'; got {entry!r}.")
    return index


def folder_for_hook_point(index: dict[str, Any], hook_point: str, *, where: str) -> str:
    """The one folder holding the SAE for `hook_point` (a hook point or a folder name)."""
    entries = index["saes"]
    matches = [entry["folder"] for entry in entries if entry["folder"] == hook_point]
    matches = matches or [entry["folder"] for entry in entries if entry.get("hook_point") == hook_point]
    if len(matches) == 1:
        return matches[0]
    folders = ", ".join(entry["folder"] for entry in entries) or "none"
    if not matches:
        raise HookPointNotInRepoError(f"{where} holds no SAE for hook point {hook_point!r}; it holds: {folders}.")
    raise HookPointNotInRepoError(
        f"{where} holds several SAEs for hook point {hook_point!r} ({', '.join(matches)}); "
        "pass one of those folder names as hookpoint= instead."
    )
