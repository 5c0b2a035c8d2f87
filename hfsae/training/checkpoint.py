"""Save and restore the whole training state: weights, optimiser, EMA, dead counts, data position, RNG.

A checkpoint is a folder `output_dir/checkpoints/step-00000100/` holding `state.safetensors` (every
tensor, by flat name), `trainer_state.json` (everything else) and, written last, `manifest.json`
(the run it belongs to and the sha256 of each file). It is staged and renamed into place
(hfsae.folder.staged_folder), so a crash mid-write leaves either no checkpoint or a complete one; one
without a manifest, whose files do not hash to it, or holding NaN or infinite values is never loaded.
No pickles: tensors go to safetensors, the rest to JSON.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, CheckpointNotFoundError
from ..folder import (
    CHECKPOINTS_DIR,
    NonFiniteWeightsError,
    check_finite,
    file_sha256,
    read_json,
    remove_stale_staging,
    staged_folder,
    write_json_atomic,
)

MANIFEST = "manifest.json"
TENSORS_FILE = "state.safetensors"
STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 2


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimiser steps."""
    return f"step-{step:08d}"


def remove_orphans(output_dir: str | Path) -> None:
    """Delete the staging folders of checkpoints whose writer was killed mid-write."""
    remove_stale_staging(Path(output_dir) / CHECKPOINTS_DIR)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    *,
    run_id: str,
    keep: int | None = 2,
) -> Path:
    """Write a checkpoint atomically; keep only the newest `keep` of run `run_id` (None: all). Returns it.

    Tensors holding NaN or infinite values are refused (NonFiniteWeightsError): resuming from them could
    only diverge again, and they would push the last good checkpoint out.
    """
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    check_finite(contiguous, what=f"The checkpoint of step {step}")
    final = Path(output_dir) / CHECKPOINTS_DIR / checkpoint_name(step)
    with staged_folder(final, overwrite=True, replaces=(TENSORS_FILE, STATE_FILE, MANIFEST)) as staging:
        save_file(contiguous, staging / TENSORS_FILE)
        with open(staging / TENSORS_FILE, "rb+") as handle:
            os.fsync(handle.fileno())
        write_json_atomic(staging / STATE_FILE, state)
        # The manifest goes last: its presence certifies that the files before it are complete.
        files = {name: file_sha256(staging / name) for name in (TENSORS_FILE, STATE_FILE)}
        write_json_atomic(staging / MANIFEST, {"format": FORMAT_VERSION, "step": step, "run_id": run_id, "sha256": files})
    if keep is not None:
        for old in checkpoints_of_run(output_dir, run_id)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not a complete checkpoint: it has no {MANIFEST} (the write was interrupted). "
            "Resume from an earlier checkpoint, or use resume_from_checkpoint='last'."
        )
    try:
        manifest = read_json(path)
    except ValueError as err:
        raise CheckpointError(f"{path} is unreadable ({err}); the checkpoint is corrupt.") from err
    hashed = manifest.get("sha256")
    # Exactly our two files: a manifest naming '../elsewhere' must not make verification read outside the folder.
    if manifest.get("format") != FORMAT_VERSION or not isinstance(hashed, dict) or set(hashed) != {TENSORS_FILE, STATE_FILE}:
        raise CheckpointError(f"{path} is not a format-{FORMAT_VERSION} checkpoint manifest; the checkpoint is corrupt.")
    return manifest


def verify_checkpoint(folder: str | Path) -> dict:
    """The manifest of a checkpoint whose files hash to it; CheckpointError otherwise."""
    folder = Path(folder)
    manifest = _manifest(folder)
    for name, expected in manifest["sha256"].items():
        path = folder / name
        actual = file_sha256(path) if path.is_file() else "missing"
        if actual != expected:
            raise CheckpointError(
                f"{path} does not match its checksum in {MANIFEST} (sha256 {actual[:12]}…, expected "
                f"{expected[:12]}…); the checkpoint is corrupt. Resume from an earlier checkpoint."
            )
    return manifest


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoints under output_dir/checkpoints that have a manifest, oldest first (not hashed)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    found = []
    for folder in sorted(root.glob("step-*")) if root.is_dir() else []:
        try:
            _manifest(folder)
        except CheckpointError:
            continue
        found.append(folder)
    return found


def checkpoints_of_run(output_dir: str | Path, run_id: str) -> list[Path]:
    """The checkpoints of run `run_id` under output_dir/checkpoints, oldest first (not hashed)."""
    return [folder for folder in checkpoints(output_dir) if _manifest(folder).get("run_id") == run_id]


def resolve_checkpoint(output_dir: str | Path, name: str) -> Path:
    """The folder for resume_from_checkpoint: 'last' (newest one in output_dir that verifies) or a path."""
    if name == "last":
        for folder in reversed(checkpoints(output_dir)):
            try:
                verify_checkpoint(folder)
            except CheckpointError:
                continue
            return folder
        raise CheckpointError(
            f"resume_from_checkpoint='last' found no complete checkpoint in {Path(output_dir) / CHECKPOINTS_DIR}. "
            "Train with save_steps set to write checkpoints, or start without resuming."
        )
    folder = Path(name)
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"Checkpoint folder {folder} does not exist; pass a checkpoint folder or 'last'.")
    return folder


def read_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """The JSON state of a checkpoint that verifies (cheap to read before loading any model)."""
    folder = Path(folder)
    verify_checkpoint(folder)
    return read_json(folder / STATE_FILE)


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON state of a checkpoint that verifies and holds only finite values; CheckpointError otherwise."""
    folder = Path(folder)
    verify_checkpoint(folder)
    tensors = load_file(folder / TENSORS_FILE)
    try:
        check_finite(tensors, what=str(folder / TENSORS_FILE))
    except NonFiniteWeightsError as err:
        raise CheckpointError(f"{err} Resume from an earlier checkpoint, or start without resuming.") from err
    return tensors, read_json(folder / STATE_FILE)
