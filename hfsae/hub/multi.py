"""Many SAEs in one folder or Hub repo: one subfolder per hook point or size, listed in index.json.

    index.json                    {"format": "hfsae-index", "version": 1, "saes": [{"folder": ..., "hook_point": ...}]}
    layers.8.resid_post/          config.json + model.safetensors (+ README.md)
    layers.8.resid_post.131k/     a second size at the same hook point

The index schema and its checks live in hfsae.folder; this module saves SAEs into such a folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..folder import INDEX_FILE, index_entry, read_index, write_index


def merge_entries(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` with the entries of `new` added, replacing any for the same folder."""
    replaced = {entry["folder"] for entry in new}
    return [entry for entry in old if entry["folder"] not in replaced] + new


def save_many(saes: Mapping[str, Any], folder: str | os.PathLike) -> Path:
    """Save each SAE in `folder/<name>/` (save_pretrained) and list them in `folder/index.json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / INDEX_FILE
    old = read_index(index_path)["saes"] if index_path.exists() else []
    entries = merge_entries(old, [index_entry(name, sae.config) for name, sae in saes.items()])  # checks the names
    for name, sae in saes.items():
        sae.save_pretrained(folder / name)
    write_index(folder, entries)
    return folder
