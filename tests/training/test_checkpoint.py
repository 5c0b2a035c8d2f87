"""Atomic checkpoints: round trip, and a half-written checkpoint never loads (hfsae/training/checkpoint.py)."""

import json

import pytest
import torch

from hfsae.training import checkpoint
from hfsae.training.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)


def test_a_checkpoint_round_trips_tensors_and_state(tmp_path):
    tensors = {"a/weights.W": torch.arange(6.0).reshape(2, 3), "rng": torch.tensor([1, 2], dtype=torch.uint8)}
    folder = save_checkpoint(tmp_path, 5, tensors, {"step": 5, "note": "x"})
    loaded, state = load_checkpoint(folder)
    assert state == {"step": 5, "note": "x"}
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"x": torch.zeros(1)}, {"step": step}, keep=2)
    assert [folder.name for folder in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]


def test_a_crash_mid_write_leaves_the_previous_checkpoint_as_the_last(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(1)}, {"step": 1})

    def crash(path, data):
        raise KeyboardInterrupt  # the process is killed while the state file is being written

    monkeypatch.setattr(checkpoint, "_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"x": torch.ones(1)}, {"step": 2})
    assert resolve_checkpoint(tmp_path, "last").name == "step-00000001"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_a_folder_without_its_manifest_never_loads(tmp_path):
    folder = save_checkpoint(tmp_path, 1, {"x": torch.zeros(1)}, {"step": 1})
    (folder / checkpoint.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="no manifest.json"):
        load_checkpoint(folder)
    assert complete_checkpoints(tmp_path) == []


def test_a_truncated_tensor_file_never_loads(tmp_path):
    folder = save_checkpoint(tmp_path, 1, {"x": torch.zeros(100)}, {"step": 1})
    data = (folder / checkpoint.TENSORS_FILE).read_bytes()
    (folder / checkpoint.TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="should have"):
        load_checkpoint(folder)


def test_resuming_from_last_without_checkpoints_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="save_steps"):
        resolve_checkpoint(tmp_path, "last")


def test_optimizer_state_round_trips_without_pickles():
    parameter = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.Adam([parameter], lr=0.1)
    parameter.grad = torch.ones(3)
    optimizer.step()
    tensors, rest = checkpoint.flatten_optimizer_state(optimizer.state_dict(), "adam.")
    json.dumps(rest)  # everything that is not a tensor is JSON
    restored = checkpoint.unflatten_optimizer_state(tensors, rest, "adam.")
    original = optimizer.state_dict()
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(restored["state"][0][key], original["state"][0][key])
