"""The `hfsae` command: parsing, one-line errors, and an end-to-end `hfsae train` on a tiny model."""

import json
import random

import pytest

from hfsae import TopKSAE
from hfsae.cli import COMMANDS, main, parse
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
    assert status == 0, capsys.readouterr().err
    index = json.loads((output_dir / "index.json").read_text())
    assert [entry["path"] for entry in index["saes"]] == ["layers.1.resid_post/n64_k4", "layers.2.resid_post/n64_k4"]
    folder = output_dir / "layers.2.resid_post/n64_k4"
    sae = TopKSAE.from_pretrained(folder)
    assert (sae.config.d_in, sae.config.n_latents, sae.config.k) == (32, 64, 4)
    assert (sae.config.hook_point, sae.config.context_size, sae.config.dataset) == (
        "layers.2.resid_post", 16, str(text_file)
    )
    metrics = json.loads((folder / "training_metrics.json").read_text())
    assert {"fvu", "fvu_raw", "fvu_ema", "dead_fraction", "tokens", "steps", "elapsed_seconds"} <= metrics.keys()
    assert metrics["tokens"] == 600 and metrics["steps"] == 5
    assert metrics["fvu"] == min(metrics["fvu_raw"], metrics["fvu_ema"])
    assert TrainConfig.from_json_string((folder / "training_config.json").read_text()).output_dir == str(output_dir)


def test_leading_positional_arguments_fill_the_commands_positional_fields():
    from hfsae.cli import parse

    _, eval_args = parse(["eval", "some/sae", "--n-tokens", "64"])
    assert (eval_args.model, eval_args.n_tokens) == ("some/sae", 64)
    _, convert_args = parse(["convert", "in.pt", "out", "--from", "openai"])
    assert (convert_args.src, convert_args.dst, convert_args.source_format) == ("in.pt", "out", "openai")
    _, space_args = parse(["space", "my-sae"])
    assert space_args.sae == "my-sae"
