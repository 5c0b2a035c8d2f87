"""`hfsae train` under torchrun: two data-parallel processes train the same SAE as one process."""

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


def train_arguments(model_folder, text_file, output_dir):
    return [
        "train", "--model", str(model_folder), "--dataset", str(text_file), "--hook-points", "layers.1.resid_post",
        "--n-latents", "64", "--k", "4", "--context-size", "16", "--harvest-tokens", "480", "--eval-tokens", "96",
        "--batch-size", "96", "--train-tokens", "480", "--output-dir", str(output_dir), "--quiet",
    ]  # fmt: skip


def test_two_process_data_parallel_training_matches_one_process(tmp_path, tiny_lm, tiny_tokenizer):
    model_folder = tmp_path / "tiny-llama"
    tiny_lm("llama").save_pretrained(model_folder)
    tiny_tokenizer.save_pretrained(model_folder)
    rng = random.Random(0)
    words = ["sparse", "auto", "encoder", "latent", "token", "layer", "model", "the", "of", "a"]
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)))

    assert main(train_arguments(model_folder, text_file, tmp_path / "one")) == 0

    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "hfsae.cli", *train_arguments(model_folder, text_file, tmp_path / "two"),
    ]  # fmt: skip
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    one, two = load_file(tmp_path / "one/model.safetensors"), load_file(tmp_path / "two/model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    metrics_one = json.loads((tmp_path / "one/training_metrics.json").read_text())
    metrics_two = json.loads((tmp_path / "two/training_metrics.json").read_text())
    assert metrics_one["tokens"] == metrics_two["tokens"] == 480
