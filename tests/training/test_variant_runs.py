"""The variants end to end on a tiny random Llama: `hfsae train` → load → `hfsae eval` → card, and resuming."""

import json

import pytest
import torch

import hfsae
from hfsae.cli import main
from hfsae.training.data import EpochBatches
from hfsae.training.trainer import Trainer

from test_run import cli_arguments
from training_helpers import synthetic_activations, tiny_config

EVAL = ["--n-tokens", "120", "--n-downstream-tokens", "60", "--context-size", "16", "--skip", "n2g", "probes", "--quiet"]


def train_eval_card(tmp_path, tiny_lm_dir, small_corpus, *options) -> tuple[dict, dict, str]:
    """(training metrics, eval_results.json, README.md) of one variant trained and evaluated with the CLI."""
    out = tmp_path / "out"
    arguments = cli_arguments(tiny_lm_dir, small_corpus, out, *options)
    assert main(arguments) == 0
    assert main(["eval", str(out), "--dataset", str(small_corpus), *EVAL]) == 0
    metrics = json.loads((out / "training_metrics.json").read_text())
    return metrics, json.loads((out / "eval_results.json").read_text()), (out / "README.md").read_text()


def test_batchtopk_trains_saves_its_threshold_evaluates_with_measured_l0_and_omits_progressive_recovery(
    tmp_path, tiny_lm_dir, small_corpus
):
    metrics, results, card = train_eval_card(tmp_path, tiny_lm_dir, small_corpus, "--architecture", "batchtopk")
    sae = hfsae.load(str(tmp_path / "out"))
    assert sae.config.architecture == "batchtopk" and float(sae.threshold) > 0
    assert results["architecture"] == "batchtopk" and results["progressive"] == {}
    assert "threshold" in results["omitted"]["progressive"]
    assert results["ablation_sparsity"] is not None  # the metrics that apply are all there
    # L0 as measured: the count of active latents, not k (thresholds keep a varying number per token).
    assert results["l0"] != 4 and 0 < results["l0"] and 0 < metrics["l0"]
    assert "| Progressive recovery | omitted |" in card and "- batchtopk" in card
    assert main(["eval", str(tmp_path / "out"), "--dataset", str(small_corpus), "--inference", "topk", *EVAL]) == 0
    per_token = json.loads((tmp_path / "out/eval_results.json").read_text())
    assert per_token["l0"] <= 4 and per_token["progressive"] and "progressive" not in per_token["omitted"]


def test_a_transcoder_predicts_the_mlp_output_from_its_input_and_is_evaluated_on_it(tmp_path, tiny_lm_dir, small_corpus):
    metrics, results, card = train_eval_card(
        tmp_path, tiny_lm_dir, small_corpus, "--hook-points", "model.layers.1.mlp:input",
        "--target-hook-points", "layers.1.mlp_out", "--skip-connection",
    )  # fmt: skip
    sae = hfsae.load(str(tmp_path / "out"))
    assert (sae.config.hook_point, sae.config.target_hook_point) == ("model.layers.1.mlp:input", "layers.1.mlp_out")
    assert sae.W_skip is not None and not sae.config.subtracts_b_pre
    assert results["target_hook_point"] == "layers.1.mlp_out" and results["l0"] == pytest.approx(4, abs=0.5)
    assert results["ablation_sparsity"] is None and "transcoder" in results["omitted"]["ablation_sparsity"]
    assert results["delta_ce"] is not None and results["progressive"]
    assert "| Ablation sparsity | omitted |" in card and "- transcoder" in card and "layers.1.mlp_out" in card


def test_a_checkpoint_keeps_the_batchtopk_threshold_and_its_update_count(tmp_path):
    config = tiny_config(tmp_path, architecture="batchtopk")
    data = {"h": synthetic_activations(1024)}
    trainer = Trainer(config)
    batches = iter(EpochBatches(data, batch_size=128, seed=0))
    trainer.init_runs_({"h": data["h"][:512]})
    for _ in range(3):
        trainer.train_step(next(batches)[0])
    tensors, state = trainer.state()
    resumed = Trainer(config)
    resumed.load_state_({name: tensor.clone() for name, tensor in tensors.items()}, state)  # as read from a file
    before, after = trainer.runs[0].sae, resumed.runs[0].sae
    assert int(after.threshold_updates) == 3 and float(after.threshold) > 0
    torch.testing.assert_close(after.threshold, before.threshold)
    batch = next(batches)[0]
    trainer.train_step(batch)
    resumed.train_step(batch)
    torch.testing.assert_close(after.threshold, before.threshold)
    torch.testing.assert_close(after.W_enc, before.W_enc)
