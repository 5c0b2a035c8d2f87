"""`hfsae train` under torchrun: two (and four) gloo processes train what one process trains, in every mode.

Modes: data parallel (harvested epochs, and streaming), `--latent-shards 2` (each SAE's latents
split over the two ranks, saved as one ordinary folder) and `--distribute-saes` (each rank trains
half of the sweep's SAEs on the whole batch). Four processes combine latent shards with data parallel
(a 2 × 2 grid), or give each rank one SAE of four.
"""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hfsae.cli import main

from .launch import REPO, free_port

pytestmark = pytest.mark.slow


def train_arguments(model_folder, text_file, output_dir, *extra):
    return [
        "train", "--model", str(model_folder), "--dataset", str(text_file), "--hook-points", "layers.1.resid_post",
        "--n-latents", "64", "--k", "4", "--context-size", "16", "--harvest-tokens", "480", "--eval-tokens", "96",
        "--batch-size", "96", "--train-tokens", "480", "--output-dir", str(output_dir), "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture
def inputs(tmp_path, tiny_lm, tiny_tokenizer):
    model_folder = tmp_path / "tiny-llama"
    tiny_lm("llama").save_pretrained(model_folder)
    tiny_tokenizer.save_pretrained(model_folder)
    rng = random.Random(0)
    words = ["sparse", "auto", "encoder", "latent", "token", "layer", "model", "the", "of", "a"]
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)))
    return model_folder, text_file


def processes(count, arguments):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(count), "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "hfsae.cli", *arguments,
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def assert_same_model(one, two):
    expected, actual = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    metrics_one = json.loads((one / "training_metrics.json").read_text())
    metrics_two = json.loads((two / "training_metrics.json").read_text())
    assert metrics_one["tokens"] == metrics_two["tokens"] == 480


@pytest.mark.parametrize(
    "extra",
    [[], ["--streaming", "--buffer-tokens", "400", "--device-batch-tokens", "64"], ["--latent-shards", "2"]],
    ids=["data-parallel", "data-parallel-streaming", "latent-shards"],
)
def test_two_processes_train_the_sae_one_process_trains(tmp_path, inputs, extra):
    single = [] if "--latent-shards" in extra else extra  # one process trains the whole SAE itself
    assert main(train_arguments(*inputs, tmp_path / "one", *single)) == 0
    finished = processes(2, train_arguments(*inputs, tmp_path / "two", *extra))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_model(tmp_path / "one", tmp_path / "two")
    assert not (tmp_path / "two/checkpoints").exists() and (tmp_path / "two/README.md").is_file()


def test_distributing_the_saes_over_two_processes_trains_each_as_one_process_does(tmp_path, inputs):
    sweep = ["--hook-points", "layers.0.resid_post", "layers.1.resid_post", "--n-latents", "32", "64"]
    assert main([*train_arguments(*inputs, tmp_path / "one"), *sweep]) == 0
    finished = processes(2, [*train_arguments(*inputs, tmp_path / "two"), *sweep, "--distribute-saes"])
    assert finished.returncode == 0, finished.stderr[-3000:]
    index_one = json.loads((tmp_path / "one/index.json").read_text())
    index_two = json.loads((tmp_path / "two/index.json").read_text())
    folders = [entry["folder"] for entry in index_one["saes"]]
    assert folders == [entry["folder"] for entry in index_two["saes"]] and len(folders) == 4
    for folder in folders:
        assert_same_model(tmp_path / "one" / folder, tmp_path / "two" / folder)


def test_four_processes_shard_latents_on_a_two_by_two_grid_and_distribute_four_saes(tmp_path, inputs):
    assert main(train_arguments(*inputs, tmp_path / "one")) == 0
    finished = processes(4, train_arguments(*inputs, tmp_path / "grid", "--latent-shards", "2"))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_model(tmp_path / "one", tmp_path / "grid")

    sweep = ["--hook-points", "layers.0.resid_post", "layers.1.resid_post", "--n-latents", "32", "64"]
    assert main([*train_arguments(*inputs, tmp_path / "sweep-one"), *sweep]) == 0
    finished = processes(4, [*train_arguments(*inputs, tmp_path / "sweep-four"), *sweep, "--distribute-saes"])
    assert finished.returncode == 0, finished.stderr[-3000:]
    folders = [entry["folder"] for entry in json.loads((tmp_path / "sweep-one/index.json").read_text())["saes"]]
    for folder in folders:
        assert_same_model(tmp_path / "sweep-one" / folder, tmp_path / "sweep-four" / folder)


@pytest.mark.parametrize(
    "variant, name",
    [
        (["--architecture", "batchtopk"], "architecture='batchtopk'"),
        (["--hook-points", "model.layers.1.mlp:input", "--target-hook-points", "layers.1.mlp_out"], "transcoder"),
    ],
)
def test_a_variant_the_sharded_forward_cannot_run_is_refused_by_name_not_trained_as_topk(tmp_path, inputs, variant, name):
    model_folder, text_file = inputs
    result = processes(2, train_arguments(model_folder, text_file, tmp_path / "out", "--latent-shards", "2", *variant))
    assert result.returncode != 0
    assert name in result.stderr and "one process" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out/model.safetensors").exists()
