"""`hfsae train` with no options: the built-in default, end to end (slow: several minutes)."""

import json

import pytest

from hfsae import TopKSAE
from hfsae.cli import main


@pytest.mark.slow
def test_the_default_run_reaches_the_issue_bars(tmp_path, builtin_lm, capsys):
    # builtin_lm skips when the wheel with the built-in model is missing (and converts it once).
    output_dir = tmp_path / "default-sae"
    assert main(["train", "--output-dir", str(output_dir), "--quiet"]) == 0, capsys.readouterr().err
    metrics = json.loads((output_dir / "training_metrics.json").read_text())
    sae = TopKSAE.from_pretrained(output_dir)
    assert (sae.config.d_in, sae.config.k) == (576, 32) and 4096 <= sae.config.n_latents <= 8192
    assert sae.config.hook_point == "layers.10.resid_post" and sae.config.base_model == "SmolLM2-135M-Instruct"
    assert metrics["fvu"] < 0.25
    assert metrics["dead_fraction"] < 0.05
