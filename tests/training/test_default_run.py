"""`hfsae train` with no options: the built-in default, end to end (slow: several minutes)."""

import json

import pytest

from hfsae import TopKSAE


@pytest.mark.slow
def test_the_default_run_gives_a_smollm2_layer_10_sae_with_fvu_below_0_25_and_under_5_percent_dead(default_sae_dir):
    metrics = json.loads((default_sae_dir / "training_metrics.json").read_text())
    sae = TopKSAE.from_pretrained(default_sae_dir)
    assert (sae.config.d_in, sae.config.k) == (576, 32) and 4096 <= sae.config.n_latents <= 8192
    assert sae.config.hook_point == "layers.10.resid_post" and sae.config.base_model == "SmolLM2-135M-Instruct"
    assert metrics["fvu"] < 0.25
    assert metrics["dead_fraction"] < 0.05
