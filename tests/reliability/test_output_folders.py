"""Class 1 and 9 of the hostile-input review: writing a folder never loses what was there, from any working
directory, and a killed write leaves nothing that a later run does not clean up."""

import os
import subprocess
import sys

import pytest

from hfsae.folder import SAE_OUTPUT, OutputDirError, check_output_folder, remove_stale_staging, staged_folder


def sae_files(folder, marker="old"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(marker)
    (folder / "model.safetensors").write_text(marker)


def names(folder):
    return sorted(path.name for path in folder.iterdir())


def test_overwriting_refuses_a_folder_with_files_the_writer_does_not_write(tmp_path):
    sae_files(tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    (tmp_path / "out" / ".git").mkdir()
    (tmp_path / "out" / ".git" / "HEAD").write_text("ref")
    with pytest.raises(OutputDirError, match=r"out holds files this command does not write \(\.git/HEAD, notes\.txt\)"):
        with staged_folder(tmp_path / "out", overwrite=True, replaces=SAE_OUTPUT):
            pytest.fail("the block must not run")
    assert names(tmp_path / "out") == [".git", "config.json", "model.safetensors", "notes.txt"]
    assert names(tmp_path) == ["out"]


def test_a_writer_of_other_files_never_replaces_an_sae_folder(tmp_path):
    sae_files(tmp_path / "sae")
    with pytest.raises(OutputDirError, match=r"sae holds files this command does not write \(config\.json, model"):
        check_output_folder(tmp_path / "sae", overwrite=True, replaces=("latents.parquet", "analysis.json"))


def test_a_previous_multi_sae_run_with_checkpoints_may_be_overwritten(tmp_path):
    out = tmp_path / "out"
    sae_files(out / "layers.1.resid_post" / "n64_k4")
    (out / "index.json").write_text("{}")
    (out / "checkpoints" / ".tmp-step-00000003-12").mkdir(parents=True)
    (out / "checkpoints" / "step-00000002").mkdir()
    (out / "checkpoints" / "step-00000002" / "state.safetensors").write_text("x")
    (out / ".README.md.abc.tmp").write_text("half")
    assert check_output_folder(out, overwrite=True, replaces=SAE_OUTPUT) == out


def test_a_file_given_as_output_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file", overwrite=True)


@pytest.mark.parametrize("output_dir", [".", "../a"])
def test_overwriting_the_current_directory_swaps_its_contents_and_keeps_it_usable(tmp_path, monkeypatch, output_dir):
    sae_files(tmp_path / "a")
    monkeypatch.chdir(tmp_path / "a")
    with staged_folder(output_dir, overwrite=True) as staging:
        (staging / "config.json").write_text("new")
    # The shell's folder is still the SAE folder: its contents changed, it did not move away.
    assert names(tmp_path) == ["a"]
    assert names(tmp_path / "a") == ["config.json"] and (tmp_path / "a" / "config.json").read_text() == "new"
    assert os.path.samefile(os.getcwd(), tmp_path / "a") and open("config.json").read() == "new"


def test_a_folder_holding_the_current_directory_is_never_replaced(tmp_path, monkeypatch):
    sae_files(tmp_path / "a")
    (tmp_path / "a" / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path / "a" / "checkpoints")
    with pytest.raises(OutputDirError, match="holds the current directory"):
        check_output_folder("..", overwrite=True)


@pytest.mark.parametrize("early", ["", "notes-before.txt"])
def test_a_file_that_appears_during_the_write_is_kept_with_the_old_folder(tmp_path, early):
    sae_files(tmp_path / "out")
    if early:  # a long job checked the folder at its start; this file appeared during the job, before the save
        (tmp_path / "out" / early).write_text("written meanwhile")
    with pytest.warns(UserWarning, match=r"appeared in it while it ran \((notes-before\.txt, )?notes\.txt\); the previous"):
        with staged_folder(tmp_path / "out", overwrite=True, replaces=SAE_OUTPUT, checked_before=bool(early)) as staging:
            (tmp_path / "out" / "notes.txt").write_text("written meanwhile")
            (staging / "config.json").write_text("new")
    kept = [path / "out" for path in tmp_path.iterdir() if path.name.startswith("out.previous-")]
    assert len(kept) == 1 and (kept[0] / "notes.txt").read_text() == "written meanwhile"
    assert names(tmp_path / "out") == ["config.json"]


def test_a_new_folder_staged_into_the_empty_current_directory_keeps_the_directory(tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()
    monkeypatch.chdir(tmp_path / "cache")
    with staged_folder(".") as staging:
        (staging / "manifest.json").write_text("{}")
    assert os.path.samefile(os.getcwd(), tmp_path / "cache") and names(tmp_path / "cache") == ["manifest.json"]
    assert names(tmp_path) == ["cache"]


def _killed_inside_staged_folder(destination, *, overwrite, between_swaps=False):
    """Run staged_folder in a child process that dies (os._exit) mid-write or between the two renames."""
    code = f"""
import os, sys
from pathlib import Path
import hfsae.folder as folder
if {between_swaps}:
    real = os.replace
    def replace(src, dst):
        real(src, dst)
        if ".old-" in str(dst):
            os._exit(9)
    folder.os.replace = replace
with folder.staged_folder({str(destination)!r}, overwrite={overwrite}) as staging:
    (staging / "model.safetensors").write_bytes(b"x" * 1000)
    if not {between_swaps}:
        os._exit(9)
"""
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 9


def test_a_killed_write_leaves_a_staging_folder_that_the_next_write_removes(tmp_path):
    _killed_inside_staged_folder(tmp_path / "cache", overwrite=False)
    assert [path.name.startswith(".cache.staging-") for path in tmp_path.iterdir()] == [True]
    with staged_folder(tmp_path / "cache") as staging:
        (staging / "manifest.json").write_text("{}")
    assert names(tmp_path) == ["cache"]


def test_a_kill_between_the_two_renames_restores_the_old_folder_on_the_next_run(tmp_path):
    sae_files(tmp_path / "sae")
    _killed_inside_staged_folder(tmp_path / "sae", overwrite=True, between_swaps=True)
    assert not (tmp_path / "sae").exists()  # the old folder sits in the hidden .sae.old-PID-…
    remove_stale_staging(tmp_path)
    assert names(tmp_path) == ["sae"] and (tmp_path / "sae" / "config.json").read_text() == "old"


def test_a_live_process_staging_folder_is_left_alone(tmp_path):
    live = tmp_path / f".cache.staging-{os.getppid()}-abcd1234"
    live.mkdir()
    remove_stale_staging(tmp_path)
    assert live.is_dir()
