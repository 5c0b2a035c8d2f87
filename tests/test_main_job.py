"""The main job of the README on the built-in default: the trained SAE is evaluated and carries its card."""

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from hfsae.cli import main
from hfsae.evaluation.evaluate import EVAL_RESULTS_FILE

METRICS = {
    "fvu", "explained_variance", "l0", "dead_fraction", "ce_clean", "ce_spliced", "delta_ce", "kl",
    "ce_loss_recovered", "progressive", "ablation_sparsity", "n2g_precision", "n2g_recall", "probe_loss",
    "probe_loss_baseline",
}  # fmt: skip


@pytest.mark.slow
def test_hfsae_eval_on_the_default_sae_writes_every_metric_and_refreshes_the_card(default_sae_dir, capsys):
    assert main(["eval", str(default_sae_dir), "--quiet"]) == 0, capsys.readouterr().err
    results = json.loads((default_sae_dir / EVAL_RESULTS_FILE).read_text())
    assert METRICS <= results.keys()
    assert results["l0"] <= 32 and 0 < results["fvu"] < 0.5
    assert results["ce_clean"] <= results["ce_spliced"] < results["ce_zero"]
    assert set(results["progressive"]) == {"8", "16", "32", "64", "128"}

    card = ModelCard.load(default_sae_dir / "README.md")
    assert card.data.library_name == "hfsae" and "layers.10.resid_post" in card.data.tags
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported["fvu"] == pytest.approx(results["fvu"])
    assert yaml.safe_load(card.content.split("---")[1])["library_name"] == "hfsae"
