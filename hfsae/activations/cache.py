"""On-disk activation cache: harvested rows in safetensors shards, reused across runs.

Layout of one cache entry (a folder named by the hash of everything that determines its rows):

    <root>/<key>/shard_00000.safetensors   {hook_point: [rows, d] float32}, rows in harvest order
    <root>/<key>/manifest.json             the key's inputs, row counts per shard; written last

The entry is built in a temporary folder and renamed into place once the manifest is written, so a
crash mid-build leaves nothing a later run would read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["ActivationCache", "CorruptCacheError", "cache_key"]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CorruptCacheError(ValueError):
    """A cache entry is unreadable or does not match its manifest."""


def cache_key(description: dict) -> str:
    """A stable hash of a JSON-able description: the entry's folder name."""
    text = json.dumps({"format": FORMAT_VERSION, **description}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ActivationCache:
    """One cache entry: read rows by global index, or build it from a stream of row blocks."""

    def __init__(self, root: str | Path, description: dict):
        self.description = description
        self.folder = Path(root).expanduser() / cache_key(description)

    @property
    def manifest(self) -> dict | None:
        """The manifest of a complete entry, None when there is none (or it is unreadable)."""
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if manifest.get("format") != FORMAT_VERSION:
            return None
        return manifest

    @property
    def complete(self) -> bool:
        """Whether a finished entry exists whose shards are all present with the recorded sizes."""
        manifest = self.manifest
        if manifest is None:
            return False
        for shard in manifest["shards"]:
            path = self.folder / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                return False
        return True

    @property
    def n_rows(self) -> int:
        return self.manifest["n_rows"]

    def build(self, blocks: Iterable[dict[str, torch.Tensor]], *, shard_rows: int = 65536) -> None:
        """Write an entry from blocks {hook_point: [rows, d]} in order; replaces any unfinished one."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}-", dir=self.folder.parent))
        try:
            shards, pending, pending_rows, n_rows = [], [], 0, 0
            widths: dict[str, int] = {}

            def flush(rows: int) -> None:
                nonlocal pending, pending_rows
                joined = {name: torch.cat([block[name] for block in pending]) for name in pending[0]}
                shard = {name: tensor[:rows].contiguous() for name, tensor in joined.items()}
                rest = {name: tensor[rows:] for name, tensor in joined.items()}
                file = f"shard_{len(shards):05d}.safetensors"
                save_file(shard, staging / file)
                shards.append({"file": file, "rows": rows, "bytes": (staging / file).stat().st_size})
                pending = [rest] if len(next(iter(rest.values()))) else []
                pending_rows -= rows

            for block in blocks:
                block = {name: tensor.detach().to("cpu", torch.float32) for name, tensor in block.items()}
                widths = {name: tensor.shape[-1] for name, tensor in block.items()}
                pending.append(block)
                rows = len(next(iter(block.values())))
                pending_rows += rows
                n_rows += rows
                while pending_rows >= shard_rows:
                    flush(shard_rows)
            if pending_rows:
                flush(pending_rows)
            manifest = {
                "format": FORMAT_VERSION,
                "n_rows": n_rows,
                "widths": widths,
                "shards": shards,
                "description": self.description,
            }
            # The manifest is the last file written: an entry without one is never read.
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
            if self.folder.exists():
                shutil.rmtree(self.folder)
            staging.rename(self.folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def read(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Rows [start, stop) of every hook point: {hook_point: [stop - start, d]} float32 on CPU."""
        manifest = self.manifest
        if manifest is None:
            raise CorruptCacheError(f"No complete activation cache in {self.folder}; build it first.")
        pieces: dict[str, list[torch.Tensor]] = {}
        shard_start = 0
        for shard in manifest["shards"]:
            shard_stop = shard_start + shard["rows"]
            if shard_stop > start and shard_start < stop:
                lo, hi = max(start, shard_start) - shard_start, min(stop, shard_stop) - shard_start
                try:
                    with safe_open(self.folder / shard["file"], framework="pt") as handle:
                        for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                            pieces.setdefault(name, []).append(handle.get_slice(name)[lo:hi])
                except Exception as err:  # safetensors raises its own error types for bad files
                    raise CorruptCacheError(
                        f"Activation cache shard {self.folder / shard['file']} is unreadable ({err}); "
                        f"delete {self.folder} to rebuild it."
                    ) from err
            shard_start = shard_stop
        return {name: torch.cat(parts) for name, parts in pieces.items()}
