"""The SAE folder: JSON round trips, atomic writes, staged folders, a safe index, the publish allow-list."""

import json
import os
from types import SimpleNamespace

import pytest

from hfsae.folder import (
    INDEX_FILE,
    INDEX_FORMAT,
    HookPointNotInRepoError,
    SAEFolderError,
    check_folder_name,
    folder_for_hook_point,
    index_entry,
    natural_key,
    publishable_files,
    read_index,
    read_json,
    staged_folder,
    write_index,
    write_json_atomic,
    write_text_atomic,
)

CONFIG = SimpleNamespace(hook_point="layers.2.resid_post", base_model="builtin", d_in=16, n_latents=64, k=4)


def test_json_round_trips_through_the_atomic_write(tmp_path):
    data = {"fvu": 0.125, "progressive": {"8": 0.3}, "name": "layers.2 ✓"}
    path = write_json_atomic(tmp_path / "metrics.json", data)
    assert read_json(path) == data
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_an_atomic_write_replaces_the_old_file_whole(tmp_path):
    path = tmp_path / "README.md"
    write_text_atomic(path, "old card " * 1000)
    write_text_atomic(path, "new card")
    assert path.read_text() == "new card"


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json_atomic(tmp_path / "eval_results.json", {"fvu": 0.5})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"fvu": object()})  # not serialisable: fails before the file is touched
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "\udc80")
    assert read_json(path) == {"fvu": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["eval_results.json"]


@pytest.mark.parametrize(
    "text, message",
    [("{not json", r"broken\.json is not valid JSON"), ("[1, 2]", r"broken\.json should hold a JSON object.*list")],
)
def test_bad_json_is_an_error_naming_the_file(tmp_path, text, message):
    (tmp_path / "broken.json").write_text(text)
    with pytest.raises(SAEFolderError, match=message):
        read_json(tmp_path / "broken.json")


def test_a_missing_json_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_json(tmp_path / "absent.json")


def test_a_staged_folder_is_swapped_in_whole_on_success(tmp_path):
    destination = tmp_path / "sae"
    destination.mkdir()
    (destination / "model.safetensors").write_text("old")
    with staged_folder(destination, overwrite=True) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".")
        (staging / "config.json").write_text("{}")
        assert (destination / "model.safetensors").exists()  # nothing changes until the block ends
    assert sorted(p.name for p in destination.iterdir()) == ["config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]  # neither staging nor the old folder remains


def test_a_staged_folder_is_removed_on_error_and_the_destination_kept(tmp_path):
    destination = tmp_path / "sae"
    destination.mkdir()
    (destination / "config.json").write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with staged_folder(destination, overwrite=True) as staging:
            (staging / "config.json").write_text("half")
            raise RuntimeError("interrupted")
    assert (destination / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]


def test_a_staged_folder_refuses_a_non_empty_destination_without_overwrite(tmp_path):
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"sae already exists and is not empty. Choose another folder, or empty"):
        with staged_folder(tmp_path / "sae"):
            pass
    with pytest.raises(FileExistsError, match=r"not empty. Pass --overwrite-output-dir to replace it, or choose another"):
        with staged_folder(tmp_path / "sae", how_to_overwrite="--overwrite-output-dir to replace it"):
            pass
    with staged_folder(tmp_path / "new" / "nested") as staging:  # parents are created
        (staging / "a").write_text("a")
    assert (tmp_path / "new" / "nested" / "a").read_text() == "a"


def test_natural_order_puts_layer_2_before_layer_10():
    names = ["layers.10", "layers.2", "layers.1", "embed", "layers.2.131k", "layers.2.16k"]
    assert sorted(names, key=natural_key) == ["embed", "layers.1", "layers.2", "layers.2.16k", "layers.2.131k", "layers.10"]


def test_the_index_round_trips_in_natural_order(tmp_path):
    entries = [index_entry(name, CONFIG) for name in ("layers.10", "layers.2", "deep/layers.3")]
    write_index(tmp_path, entries)
    index = read_index(tmp_path / INDEX_FILE)
    assert index["format"] == INDEX_FORMAT and index["version"] == 1
    assert [entry["folder"] for entry in index["saes"]] == ["deep/layers.3", "layers.2", "layers.10"]
    assert index["saes"][1] == {
        "folder": "layers.2", "hook_point": "layers.2.resid_post", "base_model": "builtin", "d_in": 16, "n_latents": 64, "k": 4,
    }  # fmt: skip


@pytest.mark.parametrize(
    "folder, reason",
    [
        ("../T/victim", r"a '\.\.' part leads out"),
        ("layers.1/../../x", r"a '\.\.' part leads out"),
        ("/abs/path", "absolute path"),
        ("C:/Windows", "absolute path"),
        ("layers\\1", "backslash"),
        ("layers//1", "empty"),
        ("./layers.1", r"empty or '\.' part"),
        (".git", "hidden"),
        ("layers.1/.cache", "hidden"),
        ("", "non-empty string"),
        (3, "non-empty string"),
    ],
)
def test_an_index_entry_pointing_outside_the_repo_is_refused(tmp_path, folder, reason):
    (tmp_path / INDEX_FILE).write_text(json.dumps({"format": INDEX_FORMAT, "version": 1, "saes": [{"folder": folder}]}))
    with pytest.raises(SAEFolderError, match=rf"index\.json: SAE folder name .* is not allowed \(.*{reason}"):
        read_index(tmp_path / INDEX_FILE)
    with pytest.raises(SAEFolderError, match="is not allowed"):
        write_index(tmp_path / "out", [{"folder": folder}])
    assert not (tmp_path / "out").exists()


def test_check_folder_name_returns_a_good_name():
    assert check_folder_name("layers.8.resid_post/n64_k4") == "layers.8.resid_post/n64_k4"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"saes": [{"path": "a"}]}, "is not an hfsae index"),
        ({"format": INDEX_FORMAT, "saes": [{"path": "a"}]}, "must be an object with a 'folder'"),
        ({"format": INDEX_FORMAT, "saes": [{"folder": "a"}, {"folder": "a"}]}, "listed twice"),
    ],
)
def test_a_malformed_index_names_the_file_and_the_problem(tmp_path, content, message):
    (tmp_path / INDEX_FILE).write_text(json.dumps(content))
    with pytest.raises(SAEFolderError, match=message):
        read_index(tmp_path / INDEX_FILE)


def test_a_hook_point_finds_its_one_folder_by_hook_point_or_folder_name():
    index = {"saes": [index_entry("a", CONFIG), {"folder": "b", "hook_point": "layers.3.resid_post"}]}
    assert folder_for_hook_point(index, "layers.3.resid_post", where="repo") == "b"
    assert folder_for_hook_point(index, "a", where="repo") == "a"
    with pytest.raises(HookPointNotInRepoError, match=r"repo holds no SAE for hook point 'x'; it holds: a, b"):
        folder_for_hook_point(index, "x", where="repo")
    index["saes"].append(index_entry("c", CONFIG))
    with pytest.raises(HookPointNotInRepoError, match=r"several SAEs .* \(a, c\)"):
        folder_for_hook_point(index, CONFIG.hook_point, where="repo")


def touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def test_only_what_hfsae_writes_is_published_from_a_single_sae_folder(tmp_path):
    touch(
        tmp_path,
        "config.json", "model.safetensors", "README.md", "latent_density.png", "training_metrics.json",
        "eval_results.json", "analysis/latents.parquet", "analysis/analysis.json",
        ".env", ".saving-123/model.safetensors", "checkpoints/step-10/state.safetensors", "notes.txt",
        "analysis/.cache/x.json", "analysis/scratch/y.parquet",
    )  # fmt: skip
    os.symlink("/etc/hostname", tmp_path / "link.json")
    kept, left_out = publishable_files(tmp_path)
    assert kept == [
        "README.md", "analysis/analysis.json", "analysis/latents.parquet", "config.json", "eval_results.json",
        "latent_density.png", "model.safetensors", "training_metrics.json",
    ]  # fmt: skip
    assert sorted(left_out) == [
        ".env", ".saving-123/", "analysis/.cache/", "analysis/scratch/", "checkpoints/", "link.json", "notes.txt",
    ]  # fmt: skip


def test_a_multi_sae_folder_publishes_its_index_card_and_listed_folders_only(tmp_path):
    write_index(tmp_path, [index_entry("layers.10", CONFIG), index_entry("layers.2", CONFIG)])
    touch(
        tmp_path,
        "README.md", "layers.2/config.json", "layers.2/model.safetensors", "layers.10/config.json",
        "layers.10/checkpoints/a.json", "unlisted/config.json", "config.json",
    )  # fmt: skip
    kept, left_out = publishable_files(tmp_path)
    assert kept == [
        "README.md", "index.json", "layers.2/config.json", "layers.2/model.safetensors", "layers.10/config.json",
    ]  # fmt: skip
    assert sorted(left_out) == ["config.json", "layers.10/checkpoints/", "unlisted/"]
