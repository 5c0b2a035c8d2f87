"""Save and restore the whole training state: weights, optimiser, EMA, dead counts, data position, RNG.

A checkpoint is a folder `output_dir/checkpoints/step-00000100/` holding `state.safetensors` (every
tensor, by flat name), `trainer_state.json` (everything else) and, written last, `manifest.json`
(the byte size of each file). It is written under a temporary name and renamed into place, so a
crash mid-write leaves either no checkpoint or a complete one; one without a manifest, or whose
files do not match it, is never loaded. No pickles: tensors go to safetensors, the rest to JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"
TENSORS_FILE = "state.safetensors"
STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or corrupt."""


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimiser steps."""
    return f"step-{step:08d}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(
    output_dir: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], *, keep: int = 2
) -> Path:
    """Write a checkpoint atomically and keep only the newest `keep`; returns its folder."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    temporary = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        save_file(contiguous, temporary / TENSORS_FILE)
        _fsync_file(temporary / TENSORS_FILE)
        _write_json(temporary / STATE_FILE, state)
        # The manifest goes last: its presence certifies that the files before it are complete.
        files = {name: (temporary / name).stat().st_size for name in (TENSORS_FILE, STATE_FILE)}
        _write_json(temporary / MANIFEST, {"format": FORMAT_VERSION, "step": step, "files": files})
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    for old in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _check_complete(folder: Path) -> None:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{folder} is not a complete checkpoint: it has no {MANIFEST} (the write was interrupted). "
            "Resume from an earlier checkpoint, or use resume_from_checkpoint='last'."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest_path} is unreadable ({err}); the checkpoint is corrupt.") from err
    for name, size in files.items():
        path = folder / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            raise CheckpointError(
                f"{path} should have {size} bytes but has {actual}; the checkpoint is corrupt. "
                "Resume from an earlier checkpoint."
            )


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints under output_dir/checkpoints, oldest first (incomplete ones skipped)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.glob("step-*")):
        try:
            _check_complete(folder)
        except CheckpointError:
            continue
        found.append(folder)
    return found


def resolve_checkpoint(output_dir: str | Path, name: str) -> Path:
    """The folder for resume_from_checkpoint: 'last' (newest complete one in output_dir) or a path."""
    if name == "last":
        found = complete_checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"resume_from_checkpoint='last' found no complete checkpoint in {Path(output_dir) / CHECKPOINTS_DIR}. "
                "Train with save_steps set to write checkpoints, or start without resuming."
            )
        return found[-1]
    folder = Path(name)
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint folder {folder} does not exist; pass a checkpoint folder or 'last'.")
    return folder


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON state of a complete checkpoint; raises CheckpointError otherwise."""
    folder = Path(folder)
    _check_complete(folder)
    return load_file(folder / TENSORS_FILE), json.loads((folder / STATE_FILE).read_text())


# ---- optimiser state without pickles ---------------------------------------------------------------


def flatten_optimizer_state(state_dict: dict[str, Any], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors named `{prefix}{param}.{key}` and JSON-able rest."""
    tensors, scalars = {}, {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{param_id}.{key}"] = value
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state`: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith(prefix):
            param_id, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(param_id), {})[key] = tensor
    for name, value in rest["scalars"].items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}
