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

from ..folder import (  # noqa: F401 (HookPointNotInRepoError, folder_for_hook_point: re-exported for hub/)
    INDEX_FILE,
    INDEX_FORMAT,
    HookPointNotInRepoError,
    folder_for_hook_point,
    index_entry,
    natural_key,
    read_index,
    write_index,
)
from ..modeling import TopKSAE


def entry_for(folder: str, sae: TopKSAE) -> dict[str, Any]:
    """The index.json entry describing `sae` stored in `folder`."""
    return index_entry(folder, sae.config)


def default_folder(sae: TopKSAE, taken: set[str]) -> str:
    """The hook point as folder name, with the dictionary size appended when that name is taken."""
    base = sae.config.hook_point or "sae"
    if base not in taken:
        return base
    size = sae.config.n_latents
    return f"{base}.{size // 1024}k" if size % 1024 == 0 else f"{base}.{size}"


def index_json(entries: list[dict[str, Any]]) -> str:
    entries = sorted(entries, key=lambda entry: natural_key(entry["folder"]))
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
    entries = merge_entries(old, [entry_for(name, sae) for name, sae in saes.items()])  # checks the names first
    for name, sae in saes.items():
        sae.save_pretrained(folder / name)
    write_index(folder, entries)
    return folder
