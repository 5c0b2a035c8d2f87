"""Scaling-law fits recover known coefficients; `scaling` reads a sweep folder and writes its fit and plot."""

import json

import numpy as np
import pytest

from hfsae.evaluation.scaling import (
    ScalingFitError,
    compute_frontier,
    fit_loss_compute,
    fit_loss_n,
    fit_loss_nk,
    loss_compute,
    loss_n,
    loss_nk,
    read_sweep,
    scaling,
)

# The paper's GPT-4 fit (docs/method.md §5).
PAPER_NK = dict(alpha=-0.50, beta_k=0.26, beta_n=-0.017, gamma=-0.042, zeta=-1.32, eta=-0.085)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def paper_grid(noise: float, seed: int = 0):
    """Losses from the paper's L(n, k) on n 2^10..2^20, k 8..256, with multiplicative noise."""
    n, k = (grid.ravel() for grid in np.meshgrid(2.0 ** np.arange(10, 22, 2), 2.0 ** np.arange(3, 9)))
    rng = np.random.default_rng(seed)
    return n, k, loss_nk(n, k, **PAPER_NK) * np.exp(rng.normal(0, noise, n.size))


def test_loss_nk_matches_the_formula_at_a_hand_computed_point():
    # n = e^2, k = e: reducible exp(α + β_k + 2β_n + 2γ), irreducible exp(ζ + η).
    expected = np.exp(-0.5 + 0.26 - 0.034 - 0.084) + np.exp(-1.32 - 0.085)
    assert loss_nk(np.e**2, np.e, **PAPER_NK) == pytest.approx(expected, rel=1e-12)


def test_fit_loss_nk_recovers_the_papers_coefficients_from_noisy_data():
    n, k, loss = paper_grid(noise=0.002)
    fit = fit_loss_nk(n, k, loss)
    for name, true in PAPER_NK.items():
        estimate, error = fit.coefficients[name], fit.standard_errors[name]
        assert abs(estimate - true) < 4 * error, (name, estimate, true, error)
        assert abs(estimate - true) < 0.05 * max(abs(true), 0.2), (name, estimate, true)
    assert fit.n_points == 36
    assert fit.rms_log_residual == pytest.approx(0.002, rel=0.3)


def test_fit_loss_nk_is_exact_on_noiseless_data_with_near_zero_errors():
    n, k, loss = paper_grid(noise=0.0)
    fit = fit_loss_nk(n, k, loss)
    np.testing.assert_allclose([fit.coefficients[name] for name in PAPER_NK], list(PAPER_NK.values()), atol=1e-6)
    assert max(fit.standard_errors.values()) < 1e-6


def test_standard_errors_grow_with_the_noise():
    quiet_fit = fit_loss_nk(*paper_grid(noise=0.002, seed=1))
    noisy_fit = fit_loss_nk(*paper_grid(noise=0.02, seed=1))
    for name in PAPER_NK:
        assert noisy_fit.standard_errors[name] > 5 * quiet_fit.standard_errors[name], name


@pytest.mark.parametrize(
    ("a", "b", "c", "compute_range"), [(0.09, 0.056, 0.084, (1, 1e6)), (0.09, 2.8, 0.084, (1e12, 1e20))]
)
def test_fit_loss_compute_recovers_known_coefficients(a, b, c, compute_range):
    compute = np.geomspace(*compute_range, 12)
    rng = np.random.default_rng(0)
    loss = loss_compute(compute, a, b, c) * np.exp(rng.normal(0, 0.002, compute.size))
    fit = fit_loss_compute(compute, loss)
    for name, true in {"a": a, "b": b, "c": c}.items():
        estimate, error = fit.coefficients[name], fit.standard_errors[name]
        assert abs(estimate - true) < 4 * error, (name, estimate, true, error)
        assert estimate == pytest.approx(true, rel=0.05), name


def test_a_fit_with_no_degrees_of_freedom_reports_nan_errors():
    compute = np.array([1e3, 1e4, 1e5])
    fit = fit_loss_compute(compute, loss_compute(compute, 0.1, 1.0, 0.3))
    assert all(np.isnan(error) for error in fit.standard_errors.values())


def test_too_few_runs_names_the_number_needed():
    with pytest.raises(ScalingFitError, match=r"L\(n, k\) has 6 coefficients; got 3 runs"):
        fit_loss_nk([1024, 2048, 4096], [8, 8, 8], [0.3, 0.2, 0.1])


def test_a_non_positive_loss_is_rejected_with_its_value():
    with pytest.raises(ScalingFitError, match=r"positive and finite.*-0\.1"):
        fit_loss_compute([1, 2, 3, 4], [0.3, 0.2, 0.1, -0.1])


# ----- sweep folders -------------------------------------------------------------------------


def write_run(folder, *, n_latents, k, fvu, d_in=16, tokens=10_000, hook_point="layers.3.resid_post"):
    folder.mkdir(parents=True)
    config = {"model_type": "topk_sae", "d_in": d_in, "n_latents": n_latents, "k": k, "hook_point": hook_point}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "training_metrics.json").write_text(json.dumps({"fvu": fvu, "tokens": tokens, "dead_fraction": 0.0}))


@pytest.fixture
def paper_sweep(tmp_path):
    """A 4×3 sweep folder whose FVUs follow the paper's law (n 256..2048, k 4, 8, 16), laid out like the trainer's."""
    for n in (256, 512, 1024, 2048):
        for k in (4, 8, 16):
            fvu = float(loss_nk(n, k, **PAPER_NK)) * (1 + 0.001 * ((n + k) % 3 - 1))
            write_run(tmp_path / "layers.3.resid_post" / f"n{n}_k{k}", n_latents=n, k=k, fvu=fvu)
    (tmp_path / "index.json").write_text("[]")
    return tmp_path


def test_read_sweep_finds_every_run_with_its_compute(paper_sweep):
    runs = read_sweep(paper_sweep)
    assert [(run.k, run.n_latents) for run in runs][:4] == [(4, 256), (4, 512), (4, 1024), (4, 2048)]
    assert len(runs) == 12
    assert runs[0].compute == 6 * 10_000 * 256 * 16


def test_compute_frontier_keeps_only_runs_better_than_every_cheaper_one(tmp_path):
    for name, n, fvu in [("a", 256, 0.5), ("b", 512, 0.6), ("c", 1024, 0.4), ("d", 2048, 0.45)]:
        write_run(tmp_path / name, n_latents=n, k=4, fvu=fvu)
    assert [run.path.name for run in compute_frontier(read_sweep(tmp_path))] == ["a", "c"]


def test_scaling_fits_a_sweep_and_writes_the_plot_and_json(paper_sweep, capsys):
    report = scaling(paper_sweep)
    for name, true in PAPER_NK.items():
        assert abs(report.loss_nk.coefficients[name] - true) < 4 * report.loss_nk.standard_errors[name], name
    assert report.plot == paper_sweep / "scaling.png"
    assert report.plot.read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((paper_sweep / "scaling.json").read_text())
    assert saved["loss_nk"]["coefficients"] == report.loss_nk.coefficients
    assert len(saved["runs"]) == 12
    printed = capsys.readouterr().out
    assert "β_k" in printed and "±" in printed


def test_scaling_fits_l_of_c_when_the_frontier_has_enough_runs(tmp_path):
    for n in (64, 128, 256, 512, 1024, 2048):
        write_run(tmp_path / f"n{n}", n_latents=n, k=8, fvu=float(loss_compute(6 * 10_000 * n * 16, 0.05, 3.0, 0.2)))
    report = scaling(tmp_path, quiet=True)
    assert report.loss_nk is None  # one k only
    assert report.loss_compute.coefficients["c"] == pytest.approx(0.2, rel=1e-3)
    assert report.plot.read_bytes()[:8] == PNG_MAGIC


def test_loss_n_is_loss_nk_at_one_k():
    # At fixed k the law is a power law in n over a floor: α = α + β_k log k, β = β_n + γ log k, ζ = ζ + η log k.
    k, n = 32.0, np.geomspace(1e3, 1e6, 7)
    p = PAPER_NK
    at_k = dict(
        alpha=p["alpha"] + p["beta_k"] * np.log(k), beta=p["beta_n"] + p["gamma"] * np.log(k), zeta=p["zeta"] + p["eta"] * np.log(k)
    )
    np.testing.assert_allclose(loss_n(n, **at_k), loss_nk(n, k, **p), rtol=1e-12)


def test_fit_loss_n_recovers_exponent_and_floor_with_errors_and_residuals():
    n = 2.0 ** np.arange(10, 17)
    true = dict(alpha=1.2, beta=-0.35, zeta=np.log(0.08))
    noise = np.random.default_rng(3).normal(0, 0.003, n.size)
    fit = fit_loss_n(n, loss_n(n, **true) * np.exp(noise))
    for name, value in true.items():
        assert abs(fit.coefficients[name] - value) < 4 * fit.standard_errors[name], name
    assert fit.standard_errors["beta"] < 0.1
    # The residuals are the fit's own, point by point: log L_fit − log L.
    expected = np.log(loss_n(n, **fit.coefficients)) - np.log(loss_n(n, **true) * np.exp(noise))
    np.testing.assert_allclose(fit.log_residuals, expected, atol=1e-9)
    assert fit.rms_log_residual == pytest.approx(np.sqrt(np.mean(expected**2)))


def test_fit_loss_n_refuses_too_few_sizes():
    with pytest.raises(ScalingFitError, match="at least 3 distinct n"):
        fit_loss_n([1024, 1024, 2048, 2048], [0.3, 0.31, 0.25, 0.26])


def test_scaling_fits_l_of_n_per_k_over_several_sweep_folders(tmp_path):
    # One sweep folder per n (their token budgets differ), fitted together from their parent.
    true = {8: dict(alpha=0.5, beta=-0.3, zeta=np.log(0.1)), 16: dict(alpha=0.2, beta=-0.3, zeta=np.log(0.07))}
    for n in (256, 512, 1024, 2048, 4096):
        for k, coefficients in true.items():
            write_run(tmp_path / f"sweep-n{n}" / f"n{n}_k{k}", n_latents=n, k=k, fvu=float(loss_n(n, **coefficients)))
    report = scaling(tmp_path, quiet=True)
    assert sorted(report.loss_n) == [8, 16]
    for k, coefficients in true.items():
        assert report.loss_n[k].coefficients["beta"] == pytest.approx(coefficients["beta"], abs=1e-6)
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved["loss_n"]["8"]["n_latents"] == [256, 512, 1024, 2048, 4096]
    assert len(saved["loss_n"]["8"]["log_residuals"]) == 5


def test_scaling_on_a_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass the --output-dir"):
        scaling(tmp_path / "nowhere")


def test_scaling_on_a_folder_without_runs_says_how_to_make_them(tmp_path):
    with pytest.raises(ScalingFitError, match="no SAE folder with config.json and training_metrics.json"):
        scaling(tmp_path)


def test_a_sweep_over_several_hook_points_asks_which_one_to_fit(paper_sweep):
    write_run(
        paper_sweep / "layers.5.resid_post" / "n256_k4", n_latents=256, k=4, fvu=0.3, hook_point="layers.5.resid_post"
    )
    with pytest.raises(
        ScalingFitError, match=r"2 hook points \(layers.3.resid_post, layers.5.resid_post\); choose one"
    ):
        scaling(paper_sweep)
    report = scaling(paper_sweep, hook_point="layers.3.resid_post", quiet=True)
    assert len(report.runs) == 12


def test_hfsae_scaling_prints_the_coefficients_and_writes_the_plot(paper_sweep, tmp_path, capsys):
    from hfsae.cli import main

    plot = tmp_path / "plots" / "fit.png"
    assert main(["scaling", "--sweep-dir", str(paper_sweep), "--plot-path", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "α =" in printed and "±" in printed and f"plot: {plot}" in printed
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert json.loads((tmp_path / "plots" / "fit.json").read_text())["loss_nk"]["n_points"] == 12
