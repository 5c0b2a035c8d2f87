"""Class 8: user mistakes are one-line errors that say what to do, never "probably a bug", and every hint
names an option or syntax that exists."""

import json

import pytest
import torch

from hfsae.activations.models import DeviceError, load_language_model
from hfsae.activations.text import DatasetUnavailableError, TextSource, TextValueError, token_contexts
from hfsae.cli import NETWORK_LIBRARIES, _network_hint, is_user_error, main, parse
from hfsae.evaluation.scaling import ScalingFitError, read_sweep


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("hfsae: error:")]
    assert len(ours) == 1 and "Traceback" not in err and "probably a bug" not in ours[0], err
    return ours[0]


@pytest.fixture
def lm_dir(tmp_path, tiny_lm, tiny_tokenizer):
    tiny_lm("llama").save_pretrained(tmp_path / "lm")
    tiny_tokenizer.save_pretrained(tmp_path / "lm")
    return tmp_path / "lm"


def train_arguments(lm_dir, dataset, output_dir, *extra):
    return ["train", "--model", str(lm_dir), "--dataset", str(dataset), "--hook-points", "layers.1.resid_post",
            "--n-latents", "64", "--k", "4", "--context-size", "16", "--batch-size", "60", "--harvest-tokens", "600",
            "--eval-tokens", "120", "--train-tokens", "480", "--device-batch-tokens", "160",
            "--output-dir", str(output_dir), "--quiet", *extra]  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_map_naming_a_missing_device_is_refused_before_loading(lm_dir, tmp_path, capsys):
    with pytest.raises(DeviceError, match=r"device_map='cuda' asks for a cuda device, but torch here has none"):
        load_language_model(str(lm_dir), device_map="cuda")
    with pytest.raises(DeviceError, match=r"device='cuda:0' asks for a cuda device"):
        load_language_model(str(lm_dir), device="cuda:0")
    with pytest.raises(DeviceError, match=r"device_map='gpu7' is not a device"):
        load_language_model(str(lm_dir), device_map={"model": "gpu7"})
    capsys.readouterr()
    assert main(train_arguments(lm_dir, "builtin", tmp_path / "out", "--device-map", "cuda")) == 1
    assert "asks for a cuda device" in one_line_error(capsys)


def test_a_placement_strategy_is_not_mistaken_for_a_device(lm_dir):
    model, _ = load_language_model(str(lm_dir), device_map="auto", dtype="float32")
    assert next(model.parameters()).device.type in ("cpu", "cuda")


@pytest.mark.parametrize("value, kind", [(7, "int"), (["a b", "c"], "list"), (1.5, "float"), ({"t": "x"}, "dict")])
def test_a_text_column_of_other_values_names_the_column_and_their_type(tmp_path, value, kind):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": value}) for _ in range(5)))
    with pytest.raises(TextValueError, match=rf"Column 'text' of dataset '.*docs.jsonl' holds {kind} values .*not text"):
        list(TextSource(str(path), split="all").documents())


def test_in_memory_documents_that_are_not_text_are_refused_by_position(tiny_tokenizer):
    with pytest.raises(TextValueError, match=r"Document 1 holds int values \(such as '42'\)"):
        list(token_contexts(["some text", 42], tiny_tokenizer, context_size=4))


def test_training_on_numbers_is_a_one_line_error(lm_dir, tmp_path, capsys):
    (tmp_path / "numbers.jsonl").write_text("\n".join(json.dumps({"text": i}) for i in range(50)))
    capsys.readouterr()
    assert main(train_arguments(lm_dir, tmp_path / "numbers.jsonl", tmp_path / "out")) == 1
    assert "holds int values" in one_line_error(capsys) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_a_file_of_nul_bytes_is_named_as_not_text(tmp_path, suffix):
    path = tmp_path / f"zeros{suffix}"
    path.write_bytes(b"\0" * 5000)
    with pytest.raises(DatasetUnavailableError, match=rf"zeros\{suffix} holds NUL bytes, so it is not a \{suffix} text file"):
        list(TextSource(str(path), split="all").documents())


def write_run(folder, config, metrics):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "training_metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize(
    "config, metrics, message",
    [
        ({"n_latents": 64, "k": 4, "d_in": 16}, {"fvu": "abc"}, r"training_metrics.json should hold 'fvu' as a number above 0; it holds 'abc'"),
        ({}, {"fvu": 0.1}, r"config.json should hold 'n_latents' as a whole number above 0; it holds nothing"),
        ({"n_latents": 64, "k": 4, "d_in": 16}, {"fvu": float("nan")}, r"'fvu' as a number above 0; it holds nan"),
        ({"n_latents": 64, "k": 4, "d_in": 16}, {"fvu": 0.1, "tokens": -3}, r"'tokens' as a whole number above 0; it holds -3"),
        ({"n_latents": "64", "k": 4, "d_in": 16}, {"fvu": 0.1}, r"'n_latents' as a whole number above 0; it holds '64'"),
    ],
)
def test_a_sweep_run_with_malformed_numbers_names_the_file_and_key(tmp_path, config, metrics, message):
    write_run(tmp_path / "sweep" / "a", config, metrics)
    with pytest.raises(ScalingFitError, match=message):
        read_sweep(tmp_path / "sweep")


def test_scaling_on_an_empty_config_is_a_one_line_error(tmp_path, capsys):
    write_run(tmp_path / "sweep" / "a", {}, {"fvu": 0.1})
    assert main(["scaling", str(tmp_path / "sweep")]) == 1
    assert "should hold 'n_latents'" in one_line_error(capsys)


@pytest.mark.parametrize("library", NETWORK_LIBRARIES)
def test_an_unreachable_hub_is_a_user_error_with_what_to_do(library):
    client = pytest.importorskip(library)
    with pytest.raises(client.TransportError) as caught:  # a real connection attempt to a port nothing listens on
        client.get("http://127.0.0.1:9/api/models/org/x")
    err = caught.value
    assert is_user_error(err)
    assert "cannot be reached: check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1" in _network_hint(err)
    assert _network_hint(ValueError("not a network error")) == ""


def test_the_push_syntax_that_space_suggests_exists():
    command, args = parse(["push", "my-sae", "org/my-sae"])
    assert (args.folder, args.repo_id) == ("my-sae", "org/my-sae")


def test_convert_into_a_non_empty_folder_suggests_no_option_it_lacks(tmp_path, capsys):
    from hfsae import TopKSAE, TopKSAEConfig

    TopKSAE(TopKSAEConfig(d_in=8, n_latents=32, k=2)).save_pretrained(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--from", "hfsae"]) == 1
    line = one_line_error(capsys)
    assert "dst already exists and is not empty. Choose another folder, or empty it first." in line
    assert "--overwrite-output-dir" not in line
    assert (tmp_path / "dst" / "notes.txt").read_text() == "mine"
