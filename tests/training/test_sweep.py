"""`sweep` trains the whole grid from one activation stream and fits the scaling laws to it."""

import json


from hfsae.training.sweep import DEFAULT_K, DEFAULT_N_LATENTS, SweepConfig, sweep


def test_the_default_sweep_is_a_3_by_3_grid():
    config = SweepConfig()
    assert (config.n_latents, config.k) == (list(DEFAULT_N_LATENTS), list(DEFAULT_K))
    assert len(config.sae_names()) == 9


def test_a_sweep_writes_every_sae_of_the_grid_and_fits_them(tmp_path, tiny_lm_dir, small_corpus):
    config = SweepConfig(
        model=str(tiny_lm_dir),
        dataset=str(small_corpus),
        hook_points=["layers.1.resid_post"],
        n_latents=[32, 64, 128],
        k=[2, 4, 8],
        context_size=16,
        batch_size=128,
        harvest_tokens=2048,
        eval_tokens=512,
        train_tokens=128 * 8,
        dead_tokens=512,
        device_batch_tokens=512,
        output_dir=str(tmp_path / "sweep"),
        quiet=True,
    )
    report = sweep(config)
    index = json.loads((tmp_path / "sweep" / "index.json").read_text())["saes"]
    assert sorted((entry["n_latents"], entry["k"]) for entry in index) == sorted(
        (n, k) for n in (32, 64, 128) for k in (2, 4, 8)
    )
    fitted = {(run.n_latents, run.k): run.loss for run in report.runs}
    assert fitted == {(entry["n_latents"], entry["k"]): entry["fvu"] for entry in index}
    assert report.loss_nk is not None and report.loss_nk.n_points == 9
    saved = json.loads((tmp_path / "sweep" / "scaling.json").read_text())
    assert saved["loss_nk"]["coefficients"] == report.loss_nk.coefficients
    assert report.plot == tmp_path / "sweep" / "scaling.png"
