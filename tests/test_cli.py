"""The `hfsae` command: parsing, one-line errors, --version, `hfsae env`, and end-to-end runs on a tiny model."""

import importlib.metadata
import json
import platform
import random

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.cli import COMMANDS, Command, error_line, is_user_error, main, parse
from hfsae.commands.env import EnvArgs
from hfsae.training.config import TrainConfig


def test_train_options_parse_into_a_train_config_with_both_spellings():
    command, config = parse(
        ["train", "--output-dir", "x", "--n_latents", "64", "128", "--k", "8", "--aux-k-coef", "0", "--no-tied-init"]
    )
    assert command is COMMANDS["train"]
    assert config == TrainConfig(output_dir="x", n_latents=[64, 128], k=[8], aux_k_coef=0.0, tied_init=False)


def test_no_options_give_the_built_in_default():
    _, config = parse(["train"])
    assert config == TrainConfig()


def test_an_invalid_value_prints_one_line_and_exits_non_zero(capsys):
    assert main(["train", "--k", "5000"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("hfsae: error: Invalid TopKSAEConfig: k must be in 1..4095")


def test_an_unknown_option_prints_one_line_and_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--bogus", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --bogus 1" in err


def test_a_missing_model_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--model", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err


@pytest.fixture
def tiny_model_folder(tmp_path, tiny_lm, tiny_tokenizer):
    folder = tmp_path / "tiny-llama"
    tiny_lm("llama").save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def text_file(tmp_path):
    rng = random.Random(0)
    words = ["sparse", "auto", "encoder", "latent", "token", "layer", "model", "train", "the", "of", "a"]
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(600)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines))
    return path


def test_hfsae_train_on_a_tiny_model_writes_loadable_folders(tmp_path, tiny_model_folder, text_file, capsys):
    output_dir = tmp_path / "saes"
    status = main(
        [
            "train", "--model", str(tiny_model_folder), "--dataset", str(text_file),
            "--hook-points", "layers.1.resid_post", "layers.2.resid_post", "--n-latents", "64", "--k", "4",
            "--context-size", "16", "--harvest-tokens", "600", "--eval-tokens", "120", "--batch-size", "120",
            "--train-tokens", "600", "--device-batch-tokens", "240", "--output-dir", str(output_dir), "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert status == 0, err
    assert "Writing model shards" not in err and "Loading weights" not in err  # --quiet hides the libraries' bars too
    index = json.loads((output_dir / "index.json").read_text())
    assert index["format"] == "hfsae-index"
    assert [entry["folder"] for entry in index["saes"]] == ["layers.1.resid_post/n64_k4", "layers.2.resid_post/n64_k4"]
    assert [entry["hook_point"] for entry in index["saes"]] == ["layers.1.resid_post", "layers.2.resid_post"]
    import hfsae

    assert sorted(hfsae.load_many(str(output_dir))) == ["layers.1.resid_post/n64_k4", "layers.2.resid_post/n64_k4"]
    assert hfsae.load(str(output_dir), hookpoint="layers.2.resid_post").config.hook_point == "layers.2.resid_post"
    folder = output_dir / "layers.2.resid_post/n64_k4"
    sae = TopKSAE.from_pretrained(folder)
    assert (sae.config.d_in, sae.config.n_latents, sae.config.k) == (32, 64, 4)
    assert (sae.config.hook_point, sae.config.context_size, sae.config.dataset) == (
        "layers.2.resid_post", 16, str(text_file)
    )
    metrics = json.loads((folder / "training_metrics.json").read_text())
    assert {"fvu", "fvu_raw", "fvu_ema", "dead_fraction", "tokens", "steps", "elapsed_seconds"} <= metrics.keys()
    assert metrics["tokens"] == 600 and metrics["steps"] == 5
    assert metrics["fvu"] == metrics[f"fvu_{metrics['weights']}"]
    assert TrainConfig.from_json_string((folder / "training_config.json").read_text()).output_dir == str(output_dir)


def test_leading_positional_arguments_fill_the_commands_positional_fields():
    from hfsae.cli import parse

    _, eval_args = parse(["eval", "some/sae", "--n-tokens", "64"])
    assert (eval_args.model, eval_args.n_tokens) == ("some/sae", 64)
    _, convert_args = parse(["convert", "in.pt", "out", "--from", "openai"])
    assert (convert_args.src, convert_args.dst, convert_args.source_format) == ("in.pt", "out", "openai")
    _, space_args = parse(["space", "my-sae"])
    assert space_args.sae == "my-sae"


# ---- one line for every error -------------------------------------------------------------------------


def one_line_error(capsys) -> str:
    """hfsae's message of a failed command, checked to be one line with no traceback (progress bars and
    the libraries' log lines may share stderr)."""
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("hfsae:")]
    assert len(ours) == 1 and "Traceback" not in err, err
    assert ours[0].startswith("hfsae: error: ") and err.endswith(ours[0] + "\n")
    return ours[0]


@pytest.fixture
def tiny_sae_folder(tmp_path, tiny_model_folder):
    """A saved SAE on the tiny Llama's layers.1.resid_post (d 32), whose base_model is the tiny model folder."""
    torch.manual_seed(0)
    config = TopKSAEConfig(
        d_in=32, n_latents=64, k=4, hook_point="layers.1.resid_post", base_model=str(tiny_model_folder), context_size=16
    )
    folder = tmp_path / "sae"
    TopKSAE(config).save_pretrained(folder)
    return folder


EVAL_RECONSTRUCTION_ONLY = ["--split", "all", "--n-tokens", "60", "--skip", "downstream", "ablation", "n2g", "probes"]


def test_hfsae_eval_writes_eval_results_then_the_card_with_them(tiny_sae_folder, text_file, capsys):
    args = ["eval", str(tiny_sae_folder), "--dataset", str(text_file), "--quiet", *EVAL_RECONSTRUCTION_ONLY]
    assert main(args) == 0, capsys.readouterr().err
    results = json.loads((tiny_sae_folder / "eval_results.json").read_text())
    assert results["n_tokens"] == 4 * 15 and results["hook_point"] == "layers.1.resid_post"
    assert f"FVU {results['fvu']:.4f}" in capsys.readouterr().out
    card = (tiny_sae_folder / "README.md").read_text()
    assert f"{results['fvu']:.4f}"[:5] in card  # rendered after eval_results.json existed


def test_an_empty_dataset_file_is_a_one_line_user_error(tiny_sae_folder, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["eval", str(tiny_sae_folder), "--dataset", str(empty), *EVAL_RECONSTRUCTION_ONLY]) == 1
    err = one_line_error(capsys)
    assert "unexpected" not in err and "empty.jsonl" in err


def test_a_malformed_dataset_file_says_what_the_parser_found(tiny_sae_folder, tmp_path, capsys):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": \n')
    assert main(["eval", str(tiny_sae_folder), "--dataset", str(broken), *EVAL_RECONSTRUCTION_ONLY]) == 1
    err = one_line_error(capsys)
    assert "unexpected" not in err and "JSON parse error" in err


def test_a_config_json_that_is_a_list_is_a_one_line_error_naming_the_file(tiny_sae_folder, capsys):
    (tiny_sae_folder / "config.json").write_text("[1, 2]")
    assert main(["eval", str(tiny_sae_folder), *EVAL_RECONSTRUCTION_ONLY]) == 1
    err = one_line_error(capsys)
    assert "unexpected" not in err and "config.json" in err


def test_corrupt_weights_are_a_one_line_error(tiny_sae_folder, capsys):
    (tiny_sae_folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    assert main(["eval", str(tiny_sae_folder), *EVAL_RECONSTRUCTION_ONLY]) == 1
    assert "unexpected" not in one_line_error(capsys)


def test_an_infinite_aux_k_coef_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    assert main(["train", "--aux-k-coef", "inf", "--output-dir", str(tmp_path / "out")]) == 1
    err = one_line_error(capsys)
    assert "unexpected" not in err and "aux_k_coef" in err
    assert not (tmp_path / "out").exists()


def test_user_error_families_include_the_data_libraries_exceptions_and_not_programming_errors():
    import datasets
    import pyarrow
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from safetensors import SafetensorError

    user = [
        StrictDataclassFieldValidationError("k", ValueError("k must be positive")),
        SafetensorError("Error while deserializing header"),
        datasets.exceptions.DatasetGenerationError("An error occurred while generating the dataset"),
        pyarrow.ArrowInvalid("JSON parse error"),
        torch.OutOfMemoryError("CUDA out of memory"),
        json.JSONDecodeError("Expecting value", "[", 1),
        KeyError("W_dec"),
        FileNotFoundError("nowhere"),
    ]
    bugs = [TypeError("f() got an unexpected keyword"), AttributeError("x"), RuntimeError("shape mismatch"),
            AssertionError(), ZeroDivisionError("division by zero")]  # fmt: skip
    assert [is_user_error(err) for err in user] == [True] * len(user)
    assert [is_user_error(err) for err in bugs] == [False] * len(bugs)


def test_the_error_line_adds_each_cause_that_says_something_new():
    try:
        try:
            raise ValueError("JSON parse error: Invalid value. in row 1")
        except ValueError as cause:
            raise OSError("An error occurred while generating the dataset") from cause
    except OSError as err:
        assert error_line(err) == "An error occurred while generating the dataset: JSON parse error: Invalid value. in row 1"
    multi_line = ValueError("first line\n   second line")
    assert error_line(multi_line) == "first line second line"
    try:
        try:
            raise ValueError("Class validation error for 'validate_architecture': ValueError: k must be positive.")
        except ValueError as cause:
            raise ValueError("Invalid TopKSAEConfig: k must be positive.") from cause
    except ValueError as err:
        assert error_line(err) == "Invalid TopKSAEConfig: k must be positive."


@pytest.fixture
def crashing_command(monkeypatch):
    """A command whose run has a genuine bug (ZeroDivisionError), registered like any other."""

    def run(args):
        return 1 / 0

    monkeypatch.setitem(COMMANDS, "crash", Command(EnvArgs, run, "Fail with a bug."))
    monkeypatch.delenv("HFSAE_DEBUG", raising=False)


def test_a_bug_is_one_line_that_points_to_debug(crashing_command, capsys):
    assert main(["crash"]) == 1
    err = one_line_error(capsys)
    assert "unexpected ZeroDivisionError: division by zero" in err and "--debug" in err and "HFSAE_DEBUG=1" in err


def test_debug_shows_the_traceback_of_a_bug(crashing_command, monkeypatch):
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "crash"])
    monkeypatch.setenv("HFSAE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["crash"])


def test_debug_also_shows_the_traceback_of_a_user_error(tmp_path):
    with pytest.raises(ValueError, match="k must be in 1..4095"):
        main(["--debug", "train", "--k", "5000"])


# ---- --version and env ----------------------------------------------------------------------------------


def test_version_prints_the_installed_distributions_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"hfsae {importlib.metadata.version('hfsae')}\n"


def test_env_lists_the_versions_a_bug_report_needs(capsys):
    assert main(["env"]) == 0
    lines = dict(
        line[2:].split(": ", 1) for line in capsys.readouterr().out.splitlines() if line.startswith("- ")
    )
    for name in ("hfsae", "torch", "transformers", "huggingface_hub", "accelerate", "datasets", "safetensors"):
        assert lines[name] == importlib.metadata.version(name)
    assert lines["Python"] == platform.python_version() and lines["Platform"] == platform.platform()
    assert lines["CUDA available"].startswith("yes" if torch.cuda.is_available() else "no")
    assert "gradio" in lines
