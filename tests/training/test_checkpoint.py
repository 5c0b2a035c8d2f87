"""Atomic checkpoints: round trip, checksums, rotation within a run (hfsae/training/checkpoint.py)."""

import subprocess
import sys

import pytest
import torch

from hfsae.folder import NonFiniteWeightsError

from hfsae.training import checkpoint
from hfsae.errors import CheckpointError, CheckpointNotFoundError
from hfsae.training.checkpoint import (
    checkpoints,
    load_checkpoint,
    remove_orphans,
    resolve_checkpoint,
    save_checkpoint,
)


def save(tmp_path, step, tensors=None, *, run_id="run-a", keep=2):
    return save_checkpoint(tmp_path, step, tensors or {"x": torch.zeros(100)}, {"step": step}, run_id=run_id, keep=keep)


def test_a_checkpoint_round_trips_tensors_and_state(tmp_path):
    tensors = {"a/weights.W": torch.arange(6.0).reshape(2, 3), "rng": torch.tensor([1, 2], dtype=torch.uint8)}
    folder = save_checkpoint(tmp_path, 5, tensors, {"step": 5, "note": "x"}, run_id="r")
    loaded, state = load_checkpoint(folder)
    assert state == {"step": 5, "note": "x"}
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)


def test_only_the_newest_checkpoints_of_this_run_are_kept(tmp_path):
    save(tmp_path, 9, run_id="an-older-run")
    for step in (1, 2, 3):
        save(tmp_path, step)
    assert [folder.name for folder in checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000009"]
    save(tmp_path, 4, keep=None)
    assert len(checkpoints(tmp_path)) == 4


def test_a_crash_mid_write_leaves_the_previous_checkpoint_as_the_last(tmp_path, monkeypatch):
    save(tmp_path, 1)

    def crash(path, data):
        raise KeyboardInterrupt  # the process is killed while the state file is being written

    monkeypatch.setattr(checkpoint, "write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2)
    assert resolve_checkpoint(tmp_path, "last").name == "step-00000001"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]  # no staging folder left


def test_orphaned_temporary_folders_are_removed(tmp_path):
    save(tmp_path, 1)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / "checkpoints" / f".step-00000002.staging-{int(finished.stdout)}-abcd1234"  # killed mid-write
    orphan.mkdir()
    (orphan / checkpoint.TENSORS_FILE).write_bytes(b"half")
    remove_orphans(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]


def test_a_folder_without_its_manifest_never_loads(tmp_path):
    folder = save(tmp_path, 1)
    (folder / checkpoint.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="no manifest.json"):
        load_checkpoint(folder)
    assert checkpoints(tmp_path) == []


def test_a_tensor_file_changed_in_place_fails_its_checksum_even_with_the_same_size(tmp_path):
    folder = save(tmp_path, 1)
    data = bytearray((folder / checkpoint.TENSORS_FILE).read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte
    (folder / checkpoint.TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(folder)


def test_last_skips_a_corrupt_newest_checkpoint(tmp_path):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    (newest / checkpoint.STATE_FILE).write_text('{"step": 99}')
    assert resolve_checkpoint(tmp_path, "last").name == "step-00000001"


def test_resuming_from_last_without_checkpoints_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="save_steps"):
        resolve_checkpoint(tmp_path, "last")


def test_non_finite_tensors_are_never_saved_and_the_last_good_checkpoint_stays(tmp_path):
    save(tmp_path, 1)
    with pytest.raises(NonFiniteWeightsError, match=r"checkpoint of step 2 holds NaN or infinite values in x\b"):
        save(tmp_path, 2, {"x": torch.tensor([1.0, float("nan")])})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]


def test_a_checkpoint_holding_nan_is_refused_on_load(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "check_finite", lambda tensors, what: None)  # a checkpoint of an older hfsae
    folder = save(tmp_path, 1, {"a/weights.W_dec": torch.tensor([float("inf")])})
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in a/weights.W_dec.*Resume from an earlier"):
        load_checkpoint(folder)


def test_a_manifest_naming_files_outside_the_checkpoint_is_refused(tmp_path):
    import json

    folder = save(tmp_path, 1)
    (tmp_path / "outside.txt").write_text("not part of the checkpoint")
    manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
    manifest["sha256"]["../../outside.txt"] = "0" * 64
    (folder / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="is not a format-2 checkpoint manifest"):
        load_checkpoint(folder)


def test_a_missing_checkpoint_folder_is_one_checkpoint_error_and_a_file_not_found(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist; pass a checkpoint folder or 'last'") as raised:
        resolve_checkpoint(tmp_path, str(tmp_path / "nowhere"))
    assert isinstance(raised.value, CheckpointError) and isinstance(raised.value, FileNotFoundError)
