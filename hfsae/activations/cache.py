"""On-disk activation cache: activations written once as safetensors shards, streamed by later runs.

Layout of a cache folder (the folder given as `--activation-cache DIR`):

    DIR/shard_00000.safetensors   {hook_point: [rows, d]} in float32/bfloat16/float16, harvest order
    DIR/manifest.json             what the rows were made from, rows and sha256 of every shard

The cache is built in a folder beside DIR (hfsae.folder.staged_folder), the manifest written last, and
swapped into place, so a crash mid-build leaves nothing a later run reads as complete (and the next build
removes what the killed one left). A manifest is checked before use: its schema, shard names that stay
inside DIR, and row counts that agree with each shard's header; reads check each shard's sha256 the first
time it is opened.

The manifest's description says what the rows were made from; a run whose description differs is refused.
Its model fingerprint covers what determines the activations: the config, the dtype, the tokenizer, and a
hash of every weight the forward pass uses up to the deepest hook point, read from the model already in memory.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from hfsae.activations.hook_points import HookPoint, decoder_layers
from hfsae.folder import file_sha256, read_json, staged_folder, write_json_atomic

from ..errors import HfsaeError
from ..nested import flatten

__all__ = [
    "CACHE_DTYPES",
    "ActivationCache",
    "CacheMismatchError",
    "CorruptCacheError",
    "model_fingerprint",
    "tokenizer_fingerprint",
]

MANIFEST = "manifest.json"
FORMAT = "hfsae-activation-cache"
FORMAT_VERSION = 3  # 3: the fingerprint hashes every weight up to the deepest hook point, and the tokenizer
SHARD_NAME = re.compile(r"^shard_\d{5}\.safetensors$")
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}  # how a shard header names them


class CorruptCacheError(HfsaeError, ValueError):
    """A cache shard is unreadable or does not match its manifest's checksum."""


class CacheMismatchError(HfsaeError, ValueError):
    """The cache folder holds activations of another model, hook point, text or dtype."""


def _tensor_bytes(tensor: torch.Tensor):
    # Through uint8: numpy has no bfloat16, and the bytes are what the forward pass computes with.
    return tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy()


def model_fingerprint(model: nn.Module, hook_points: Sequence[HookPoint]) -> dict:
    """What determines a model's activations at `hook_points`: its name, config, dtype, and the sha256 of every
    weight and buffer except those of decoder layers after the deepest hook point (the forward stops there)."""
    later: set[int] = set()
    if all(point.layer is not None for point in hook_points):
        deepest = max(point.layer for point in hook_points)
        for layer in list(decoder_layers(model))[deepest + 1 :]:
            later.update(id(tensor) for tensor in chain(layer.parameters(), layer.buffers()))
    digest = hashlib.sha256()
    for name, tensor in chain(model.named_parameters(), model.named_buffers()):
        if id(tensor) not in later:
            digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}\n".encode())
            digest.update(_tensor_bytes(tensor))
    config = getattr(model, "config", None)
    return {
        "name": getattr(model, "name_or_path", type(model).__name__),
        "config": config.to_json_string(use_diff=False) if config is not None else None,
        "weights_sha256": digest.hexdigest(),
        "dtype": str(next(model.parameters()).dtype),
    }


def tokenizer_fingerprint(tokenizer) -> dict:
    """The tokenizer's name, size and a sha256 of its whole definition (vocabulary, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = {
        "class": type(tokenizer).__name__,
        "backend": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
        "special": {key: str(value) for key, value in sorted(tokenizer.special_tokens_map.items())},
    }
    return {
        "name": getattr(tokenizer, "name_or_path", None),
        "size": len(tokenizer),
        "sha256": hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest(),
    }


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _schema_problem(manifest: dict) -> str | None:
    """What is wrong with a manifest's structure (None: nothing), checked before any of it is used."""
    if not isinstance(manifest.get("description"), dict):
        return "it has no 'description' object"
    if not _is_count(manifest.get("n_rows")):
        return f"'n_rows' must be a positive integer, not {manifest.get('n_rows')!r}"
    widths = manifest.get("widths")
    if not isinstance(widths, dict) or not widths or not all(_is_count(width) for width in widths.values()):
        return f"'widths' must map each hook point to a positive width, not {widths!r}"
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        return f"'shards' must be a non-empty list, not {shards!r}"
    for entry in shards:
        if not isinstance(entry, dict) or not SHARD_NAME.match(str(entry.get("file"))):
            return f"a shard entry must name a file shard_NNNNN.safetensors inside the cache; got {entry!r}"
        if not _is_count(entry.get("rows")) or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))):
            return f"shard {entry['file']} needs a positive 'rows' and a 'sha256' of 64 hex digits"
    if len({entry["file"] for entry in shards}) != len(shards):
        return "a shard file is listed twice"
    if sum(entry["rows"] for entry in shards) != manifest["n_rows"]:
        return f"its shards hold {sum(entry['rows'] for entry in shards)} rows, not the {manifest['n_rows']} of 'n_rows'"
    return None


class ActivationCache:
    """One cache folder: build it from a stream of row blocks, or read rows of one shard."""

    def __init__(self, folder: str | Path, description: dict, *, dtype: str = "float32"):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"Activation cache dtype {dtype!r} is not one of {', '.join(map(repr, CACHE_DTYPES))}.")
        self.folder = Path(folder).expanduser()
        # Through JSON and back, as the manifest stores it, so the two compare equal (tuples → lists).
        self.description = json.loads(json.dumps({**description, "storage_dtype": dtype}, default=str))
        self.dtype = dtype
        self._verified: set[str] = set()
        self._manifest: dict | None = None

    @property
    def complete(self) -> bool:
        """Whether the folder holds a finished cache made from this description (else it must be built).

        Raises CacheMismatchError when it holds one made from something else, and FileExistsError when
        the folder holds files that are not a cache.
        """
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            if self.folder.is_dir() and any(self.folder.iterdir()):
                raise FileExistsError(
                    f"--activation-cache {self.folder} is a non-empty folder without {MANIFEST}, so not an activation "
                    "cache; give a new or empty folder."
                )
            return False
        manifest = read_json(manifest_path)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise CacheMismatchError(
                f"{manifest_path} is not an {FORMAT} version {FORMAT_VERSION} manifest; give another folder."
            )
        problem = _schema_problem(manifest)
        if problem:
            raise CorruptCacheError(f"{manifest_path} is not a valid activation cache manifest: {problem}. "
                                    f"Delete {self.folder} to rebuild it.")  # fmt: skip
        saved, wanted = flatten(manifest["description"]), flatten(self.description)
        differs = sorted(key for key in wanted.keys() | saved.keys() if saved.get(key) != wanted.get(key))
        if differs:
            raise CacheMismatchError(
                f"Activation cache {self.folder} was built from another {', '.join(differs)} "
                f"(cache: {_short({k: saved.get(k) for k in differs})}; this run: "
                f"{_short({k: wanted.get(k) for k in differs})}). Give another --activation-cache folder."
            )
        self._check_shard_headers(manifest)
        self._manifest = manifest
        return True

    def _check_shard_headers(self, manifest: dict) -> None:
        """Each shard's header (read without its data) holds [rows, width] of every hook point, in the cache dtype."""
        for entry in manifest["shards"]:
            path = self.folder / entry["file"]
            if not path.is_file():
                raise CorruptCacheError(f"Activation cache shard {path} is missing; delete {self.folder} to rebuild it.")
            try:
                with safe_open(path, framework="pt") as handle:
                    found = {name: (handle.get_slice(name).get_shape(), handle.get_slice(name).get_dtype())
                             for name in handle.keys()}  # noqa: SIM118  # fmt: skip
            except Exception as err:  # safetensors raises its own error types for bad files
                raise CorruptCacheError(f"Activation cache shard {path} is unreadable ({err}); delete {self.folder} "
                                        "to rebuild it.") from err  # fmt: skip
            wanted = {name: ([entry["rows"], width], _SAFETENSORS_DTYPES[self.dtype])
                      for name, width in manifest["widths"].items()}  # fmt: skip
            if found != wanted:
                raise CorruptCacheError(
                    f"Activation cache shard {path} holds {_short(found)}, but {MANIFEST} says {_short(wanted)}; "
                    f"delete {self.folder} to rebuild it."
                )

    @property
    def manifest(self) -> dict:
        if self._manifest is None and not self.complete:
            raise CorruptCacheError(f"No complete activation cache in {self.folder}; build it first.")
        return self._manifest

    @property
    def n_rows(self) -> int:
        return self.manifest["n_rows"]

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    def build(self, blocks: Iterable[dict[str, torch.Tensor]], *, shard_rows: int = 65536) -> None:
        """Write the cache from blocks {hook_point: [rows, d]} in order, holding at most one shard in memory."""
        dtype = CACHE_DTYPES[self.dtype]
        # Built in a folder beside DIR that replaces it (empty, or absent) only once the manifest is written.
        with staged_folder(self.folder) as staging:
            shards, pending, pending_rows, n_rows = [], [], 0, 0
            widths: dict[str, int] = {}

            def flush(rows: int) -> None:
                nonlocal pending, pending_rows
                joined = {name: torch.cat([block[name] for block in pending]) for name in pending[0]}
                file = f"shard_{len(shards):05d}.safetensors"
                save_file({name: tensor[:rows].contiguous() for name, tensor in joined.items()}, staging / file)
                shards.append({"file": file, "rows": rows, "sha256": file_sha256(staging / file)})
                rest = {name: tensor[rows:] for name, tensor in joined.items()}
                pending = [rest] if len(next(iter(rest.values()))) else []
                pending_rows -= rows

            for block in blocks:
                block = {name: tensor.detach().to("cpu", dtype) for name, tensor in block.items()}
                widths = {name: tensor.shape[-1] for name, tensor in block.items()}
                rows = len(next(iter(block.values())))
                pending.append(block)
                pending_rows += rows
                n_rows += rows
                while pending_rows >= shard_rows:
                    flush(shard_rows)
            if pending_rows:
                flush(pending_rows)
            if not n_rows:
                raise ValueError("The text gave no activations to cache; use more text.")
            # The manifest is the last file written: a folder without one is never read.
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "n_rows": n_rows, "widths": widths,
                        "shards": shards, "description": self.description}
            write_json_atomic(staging / MANIFEST, manifest)
        self._manifest = manifest
        self._verified = {shard["file"] for shard in shards}

    def read(self, shard: int, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Rows [start, stop) of shard number `shard`: {hook_point: [stop - start, d]} float32 on CPU."""
        entry = self.shards[shard]
        path = self.folder / entry["file"]
        if entry["file"] not in self._verified:
            if not path.is_file():
                raise CorruptCacheError(f"Activation cache shard {path} is missing; delete {self.folder} to rebuild it.")
            if file_sha256(path) != entry["sha256"]:
                raise CorruptCacheError(
                    f"Activation cache shard {path} fails its sha256 check; delete {self.folder} to rebuild it."
                )
            self._verified.add(entry["file"])
        try:
            with safe_open(path, framework="pt") as handle:
                return {name: handle.get_slice(name)[start:stop].float() for name in handle.keys()}  # noqa: SIM118
        except Exception as err:  # safetensors raises its own error types for bad files
            raise CorruptCacheError(f"Activation cache shard {path} is unreadable ({err}).") from err


def _short(values: dict) -> str:
    text = ", ".join(f"{key}={value!r}" for key, value in values.items())
    return text if len(text) <= 300 else text[:297] + "..."
