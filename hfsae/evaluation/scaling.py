"""Scaling-law fits (docs/method.md §5): L(n, k), L(n) and L(C) with standard errors, from a sweep's
results, and their plot.

The converged-loss law is

    L(n, k) = exp(α + β_k log k + β_n log n + γ log k log n) + exp(ζ + η log k)

(the paper's GPT-4 fit: α −0.50, β_k 0.26, β_n −0.017, γ −0.042, ζ −1.32, η −0.085); at one k it
is L(n) = exp(α + β log n) + exp(ζ), a power law in n above an irreducible floor, which four runs
at one k already determine. The compute law is L(C) = a + b · C^(−c). All are fitted by
`scipy.optimize.least_squares` on the *logarithm* of the loss: the runs of a sweep differ in loss by a factor more than by an amount,
so relative residuals weigh small and large runs alike. Standard errors come from the covariance
s² (JᵀJ)⁻¹ at the optimum, s² the residual variance with m − p degrees of freedom.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from hfsae.folder import CONFIG_FILE, TRAINING_METRICS_FILE, read_json, write_bytes_atomic, write_json_atomic

from ..errors import HfsaeError

LOSS_NK_COEFFICIENTS = ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta")
LOSS_NK_FORMULA = "L(n, k) = exp(α + β_k log k + β_n log n + γ log k log n) + exp(ζ + η log k)"
LOSS_N_COEFFICIENTS = ("alpha", "beta", "zeta")
LOSS_N_FORMULA = "L(n) = exp(α + β log n) + exp(ζ)"
LOSS_COMPUTE_COEFFICIENTS = ("a", "b", "c")
LOSS_COMPUTE_FORMULA = "L(C) = a + b · C^(−c)"
SYMBOLS = {"alpha": "α", "beta": "β", "beta_k": "β_k", "beta_n": "β_n", "gamma": "γ", "zeta": "ζ", "eta": "η"}


class ScalingFitError(HfsaeError, ValueError):
    """The sweep results cannot be fitted (too few runs, non-positive losses, a missing file)."""


@dataclass
class ScalingFit:
    """The fitted coefficients of one scaling law, with standard errors and the fit's residual."""

    formula: str
    coefficients: dict[str, float]
    standard_errors: dict[str, float]  # nan when the fit has no degrees of freedom left
    rms_log_residual: float  # root mean square of log L_fit − log L over the fitted points
    n_points: int
    log_residuals: list[float]  # log L_fit − log L of each fitted point, in the order given

    def __str__(self) -> str:
        lines = [f"{self.formula}   ({self.n_points} runs, rms log residual {self.rms_log_residual:.3g})"]
        for name, value in self.coefficients.items():
            lines.append(f"  {SYMBOLS.get(name, name):>4} = {value: .4g} ± {self.standard_errors[name]:.2g}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary of the fit."""
        return {
            "formula": self.formula,
            "coefficients": self.coefficients,
            "standard_errors": self.standard_errors,
            "rms_log_residual": self.rms_log_residual,
            "n_points": self.n_points,
            "log_residuals": self.log_residuals,
        }


def loss_nk(n, k, alpha, beta_k, beta_n, gamma, zeta, eta):
    """The paper's converged-loss law L(n, k) (docs/method.md §5), elementwise over arrays n, k."""
    log_n, log_k = np.log(n), np.log(k)
    reducible = np.exp(alpha + beta_k * log_k + beta_n * log_n + gamma * log_k * log_n)
    irreducible = np.exp(zeta + eta * log_k)
    return reducible + irreducible


def loss_n(n, alpha, beta, zeta):
    """L(n, k) at one k: exp(α + β log n) + exp(ζ), elementwise over an array n."""
    return np.exp(alpha + beta * np.log(n)) + np.exp(zeta)


def loss_compute(compute, a, b, c):
    """The compute law L(C) = a + b · C^(−c), elementwise over an array of compute C."""
    return a + b * np.power(compute, -c)


def _covariance_errors(result, n_points: int) -> np.ndarray:
    """Standard errors sqrt(diag(s² (JᵀJ)⁻¹)) of a least_squares result; nan without degrees of freedom."""
    n_params = result.x.size
    if n_points <= n_params:
        return np.full(n_params, np.nan)
    residual_variance = 2 * result.cost / (n_points - n_params)  # cost is ½ Σ r²
    # pinv rather than inv: a sweep that barely constrains one coefficient should give a huge error
    # for it, not a LinAlgError.
    covariance = np.linalg.pinv(result.jac.T @ result.jac) * residual_variance
    return np.sqrt(np.clip(np.diag(covariance), 0, None))


def _check_losses(loss: np.ndarray, n_params: int, law: str) -> None:
    if loss.size < n_params:
        raise ScalingFitError(
            f"{law} has {n_params} coefficients; got {loss.size} runs. Sweep at least {n_params} runs."
        )
    if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise ScalingFitError(f"losses must be positive and finite to fit {law}; got {loss.tolist()}.")


def _linear_fit(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(design, target, rcond=None)[0]


def _loss_nk_starts(n: np.ndarray, k: np.ndarray, loss: np.ndarray) -> list[np.ndarray]:
    """Starting points from a split of each k's loss into an irreducible floor and a reducible rest.

    For a guessed floor (a fraction of the smallest loss seen at that k) both terms are log-linear
    in their coefficients, so two linear least-squares solves give a start close to the optimum.
    """
    log_n, log_k = np.log(n), np.log(k)
    min_loss_at_k = {value: loss[k == value].min() for value in np.unique(k)}
    floor = np.array([min_loss_at_k[value] for value in k])
    starts = []
    for fraction in (0.3, 0.6, 0.85, 0.95):
        guess_floor = fraction * floor
        zeta, eta = _linear_fit(np.stack([np.ones_like(log_k), log_k], 1), np.log(guess_floor))
        reducible = np.clip(loss - guess_floor, 1e-3 * loss, None)
        design = np.stack([np.ones_like(log_n), log_k, log_n, log_k * log_n], 1)
        alpha, beta_k, beta_n, gamma = _linear_fit(design, np.log(reducible))
        starts.append(np.array([alpha, beta_k, beta_n, gamma, zeta, eta]))
    return starts


def fit_loss_nk(n_latents, k, loss) -> ScalingFit:
    """Fit L(n, k) to runs with n_latents, k, loss: [runs] each; returns coefficients α … η ± errors.

    Example:
        >>> fit = fit_loss_nk([1024, 2048, 4096] * 3, [8] * 3 + [16] * 3 + [32] * 3, losses)
        >>> fit.coefficients["gamma"], fit.standard_errors["gamma"]
    """
    n = np.asarray(n_latents, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    _check_losses(loss, len(LOSS_NK_COEFFICIENTS), "L(n, k)")
    log_loss = np.log(loss)

    def residuals(theta):
        return np.log(loss_nk(n, k, *theta)) - log_loss

    # The sum of two exponentials has local optima (which term carries the floor); the best of a
    # few starts from the linearised guess is reliably the global one on paper-like data.
    results = [least_squares(residuals, start, method="lm", x_scale="jac") for start in _loss_nk_starts(n, k, loss)]
    best = min(results, key=lambda result: result.cost)
    return _fit_result(LOSS_NK_FORMULA, LOSS_NK_COEFFICIENTS, best, best.x, _covariance_errors(best, loss.size))


def fit_loss_n(n_latents, loss) -> ScalingFit:
    """Fit L(n) = exp(α + β log n) + exp(ζ) to runs at one k; returns α, β, ζ ± errors (β < 0: loss falls with n).

    Example:
        >>> fit = fit_loss_n([1024, 2048, 4096, 8192, 16384], losses)
        >>> fit.coefficients["beta"], fit.standard_errors["beta"]
    """
    n = np.asarray(n_latents, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    _check_losses(loss, len(LOSS_N_COEFFICIENTS), "L(n)")
    if np.unique(n).size < len(LOSS_N_COEFFICIENTS):
        raise ScalingFitError(f"L(n) needs at least {len(LOSS_N_COEFFICIENTS)} distinct n; got {sorted(set(n.tolist()))}.")
    log_loss, log_n = np.log(loss), np.log(n)

    def residuals(theta):
        return np.log(loss_n(n, *theta)) - log_loss

    # As for L(n, k): a guessed floor makes the rest log-linear in log n, which gives the starts.
    results = []
    for fraction in (0.0, 0.3, 0.6, 0.85, 0.95):
        floor = fraction * loss.min()
        alpha, beta = _linear_fit(np.stack([np.ones_like(log_n), log_n], 1), np.log(loss - floor))
        start = np.array([alpha, beta, math.log(max(floor, 1e-6 * loss.min()))])
        with np.errstate(over="ignore"):  # a trial step far off may overflow exp; the solver steps back
            results.append(least_squares(residuals, start, method="lm", x_scale="jac"))
    best = min(results, key=lambda result: result.cost)
    return _fit_result(LOSS_N_FORMULA, LOSS_N_COEFFICIENTS, best, best.x, _covariance_errors(best, loss.size))


def _fit_result(formula: str, names, result, values, errors) -> ScalingFit:
    return ScalingFit(
        formula=formula,
        coefficients=dict(zip(names, map(float, values))),
        standard_errors=dict(zip(names, map(float, errors))),
        rms_log_residual=float(np.sqrt(np.mean(result.fun**2))),
        n_points=int(result.fun.size),
        log_residuals=result.fun.tolist(),
    )


def fit_loss_compute(compute, loss) -> ScalingFit:
    """Fit L(C) = a + b · C^(−c) to runs with compute, loss: [runs] each; returns a, b, c ± errors.

    The fit runs in (a, log b, c) with a ≥ 0, which keeps the model positive; the error of b
    follows by the delta method, se(b) = b · se(log b).
    """
    compute = np.asarray(compute, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    _check_losses(loss, len(LOSS_COMPUTE_COEFFICIENTS), "L(C)")
    if np.any(compute <= 0) or not np.all(np.isfinite(compute)):
        raise ScalingFitError(f"compute must be positive and finite to fit L(C); got {compute.tolist()}.")
    log_loss, log_compute = np.log(loss), np.log(compute)

    def residuals(theta):
        a, log_b, c = theta
        return np.log(a + np.exp(log_b - c * log_compute)) - log_loss

    results = []
    for fraction in (0.0, 0.5, 0.8, 0.95):
        a = fraction * loss.min()
        intercept, slope = _linear_fit(np.stack([np.ones_like(log_compute), log_compute], 1), np.log(loss - a))
        start = np.array([a, intercept, -slope])
        results.append(least_squares(residuals, start, bounds=([0, -np.inf, -np.inf], np.inf), x_scale="jac"))
    best = min(results, key=lambda result: result.cost)
    se_a, se_log_b, se_c = _covariance_errors(best, loss.size)
    a, log_b, c = best.x
    b = math.exp(log_b)
    return _fit_result(LOSS_COMPUTE_FORMULA, LOSS_COMPUTE_COEFFICIENTS, best, (a, b, c), (se_a, b * se_log_b, se_c))


# ---------------------------------------------------------------------------------------------
# Sweep results on disk
# ---------------------------------------------------------------------------------------------


@dataclass
class SweepRun:
    """One trained SAE of a sweep: its size, sparsity, held-out loss and training compute."""

    path: Path
    hook_point: str | None
    n_latents: int
    k: int
    d_in: int
    loss: float  # held-out FVU (the paper's normalised MSE)
    tokens: int | None
    compute: float | None  # training FLOPs, estimated as 6 · tokens · n_latents · d_in when not recorded


def _number(values: dict, name: str, path: Path, *, whole: bool = False, required: bool = True):
    """values[name] as a finite positive number (an int when `whole`); None when absent and not `required`."""
    value = values.get(name)
    if value is None and not required:
        return None
    kind = "a whole number" if whole else "a number"
    ok = isinstance(value, int) if whole else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not ok or value <= 0:
        found = "nothing" if value is None else repr(value)
        raise ScalingFitError(
            f"{path} should hold {name!r} as {kind} above 0; it holds {found}. Re-create the file by training "
            "that SAE again, or remove its folder from the sweep."
        )
    return value


def read_sweep(sweep_dir: str | Path) -> list[SweepRun]:
    """Every SAE folder under sweep_dir with both config.json and training_metrics.json, sorted by (k, n)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(
            f"sweep folder {str(sweep_dir)!r} does not exist; pass the --output-dir of `hfsae sweep`."
        )
    runs = []
    for config_path in sorted(sweep_dir.rglob(CONFIG_FILE)):
        metrics_path = config_path.with_name(TRAINING_METRICS_FILE)
        if not metrics_path.is_file():
            continue
        config, metrics = read_json(config_path), read_json(metrics_path)
        n, k, d = (_number(config, name, config_path, whole=True) for name in ("n_latents", "k", "d_in"))
        fvu = _number(metrics, "fvu", metrics_path)
        tokens = _number(metrics, "tokens", metrics_path, whole=True, required=False)
        # The dense encoder matmul dominates a TopK SAE's step (docs/method.md §6): 2 FLOPs per
        # multiply-add, forward plus two backward products, hence 6 · tokens · n · d.
        compute = _number(metrics, "flops", metrics_path, required=False) or (6.0 * tokens * n * d if tokens else None)
        runs.append(SweepRun(config_path.parent, config.get("hook_point"), n, k, d, fvu, tokens, compute))
    if not runs:
        raise ScalingFitError(
            f"no SAE folder with config.json and training_metrics.json under {str(sweep_dir)!r}; "
            "train one with `hfsae sweep --output-dir DIR` first."
        )
    return sorted(runs, key=lambda run: (run.k, run.n_latents))


def compute_frontier(runs: list[SweepRun]) -> list[SweepRun]:
    """The runs on the compute-efficient frontier: each has a lower loss than every cheaper run."""
    frontier, best = [], math.inf
    for run in sorted((run for run in runs if run.compute), key=lambda run: run.compute):
        if run.loss < best:
            frontier.append(run)
            best = run.loss
    return frontier


# ---------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------


def plot_loss_nk(
    runs: list[SweepRun],
    fit: ScalingFit | None,
    path: str | Path,
    *,
    compute_fit: ScalingFit | None = None,
    n_fits: dict[int, ScalingFit] | None = None,
) -> Path:
    """Write a PNG of held-out loss against n_latents, one colour per k, with the fitted L(n, k) curves.

    n_fits (k → L(n) fit at that k) are drawn dashed. With compute_fit, a second panel shows loss
    against training compute and the fitted L(C).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    panels = 2 if compute_fit is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    axis = axes[0, 0]
    ks = sorted({run.k for run in runs})
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(ks)))
    n_all = np.array([run.n_latents for run in runs], dtype=np.float64)
    n_grid = np.geomspace(n_all.min() / 1.5, n_all.max() * 1.5, 100)
    for k, colour in zip(ks, colours):
        at_k = [run for run in runs if run.k == k]
        axis.scatter(
            [run.n_latents for run in at_k], [run.loss for run in at_k], color=colour, label=f"k = {k}", zorder=3
        )
        if fit is not None:
            axis.plot(n_grid, loss_nk(n_grid, k, **fit.coefficients), color=colour, lw=1.2)
        if n_fits and k in n_fits:
            axis.plot(n_grid, loss_n(n_grid, **n_fits[k].coefficients), color=colour, lw=1.2, ls="--")
    axis.set(xscale="log", yscale="log", xlabel="n_latents", ylabel="held-out FVU", title="L(n, k) solid, L(n) dashed")
    axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    if compute_fit is not None:
        axis = axes[0, 1]
        with_compute = [run for run in runs if run.compute]
        compute = np.array([run.compute for run in with_compute])
        axis.scatter(compute, [run.loss for run in with_compute], color="0.6", label="runs", zorder=2)
        frontier = compute_frontier(with_compute)
        axis.scatter(
            [run.compute for run in frontier], [run.loss for run in frontier], color="C3", label="frontier", zorder=3
        )
        grid = np.geomspace(compute.min() / 1.5, compute.max() * 1.5, 100)
        axis.plot(grid, loss_compute(grid, **compute_fit.coefficients), color="C3", lw=1.2, label="fit")
        axis.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="held-out FVU", title="L(C)")
        axis.legend(fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, dpi=120, format="png")
    plt.close(figure)
    return write_bytes_atomic(path, png.getvalue())


# ---------------------------------------------------------------------------------------------
# A sweep folder in, its fits and plot out
# ---------------------------------------------------------------------------------------------


@dataclass
class ScalingReport:
    """What `scaling` fitted from a sweep: the L(n, k) fit, the L(C) fit when possible, and the plot."""

    runs: list[SweepRun]
    loss_nk: ScalingFit | None
    loss_compute: ScalingFit | None
    plot: Path
    notes: list[str]
    loss_n: dict[int, ScalingFit] = field(default_factory=dict)  # k → L(n) at that k

    def __str__(self) -> str:
        parts = [
            f"{len(self.runs)} runs: n_latents {sorted({r.n_latents for r in self.runs})}, k {sorted({r.k for r in self.runs})}"
        ]
        parts += [f"k = {k}: {fit}" for k, fit in self.loss_n.items()]
        parts += [str(fit) for fit in (self.loss_nk, self.loss_compute) if fit is not None]
        parts += self.notes
        parts.append(f"plot: {self.plot}")
        return "\n".join(parts)


def _runs_at(runs: list[SweepRun], hook_point: str | None, sweep_dir: Path) -> list[SweepRun]:
    """The runs of one hook point: the one asked for, or the only one the sweep has."""
    hook_points = sorted({str(run.hook_point) for run in runs})
    if hook_point is None:
        if len(hook_points) > 1:
            raise ScalingFitError(
                f"{str(sweep_dir)!r} holds SAEs at {len(hook_points)} hook points ({', '.join(hook_points)}); "
                "choose one with --hook-point."
            )
        return runs
    chosen = [run for run in runs if run.hook_point == hook_point]
    if not chosen:
        raise ScalingFitError(
            f"no SAE at hook point {hook_point!r} in {str(sweep_dir)!r}; it has {', '.join(hook_points)}."
        )
    return chosen


def scaling(
    sweep_dir: str | Path, *, hook_point: str | None = None, plot_path: str | Path | None = None, quiet: bool = False
) -> ScalingReport:
    """Fit L(n, k), L(n) per k and L(C) to a sweep's SAE folders (or a folder of several sweeps), write the
    plot (scaling.png) and the fits beside it (scaling.json).

    L(n) is fitted at each k with at least 4 values of n. L(C) is fitted to the compute-efficient frontier
    of the runs at the most common k (docs/method.md §5 fits compute-optimal runs); it needs at least 4
    frontier runs, L(n, k) at least 7 runs.

    Example:
        >>> report = scaling("sweeps/default")      # after `hfsae sweep --output-dir sweeps/default`
        >>> report.loss_nk.coefficients["alpha"]
    """
    sweep_dir = Path(sweep_dir)
    runs = _runs_at(read_sweep(sweep_dir), hook_point, sweep_dir)
    notes = []
    fit_nk = None
    # One degree of freedom beyond the six coefficients, so that errors can be estimated.
    if (
        len(runs) > len(LOSS_NK_COEFFICIENTS)
        and len({run.k for run in runs}) >= 2
        and len({run.n_latents for run in runs}) >= 2
    ):
        fit_nk = fit_loss_nk([r.n_latents for r in runs], [r.k for r in runs], [r.loss for r in runs])
    else:
        notes.append(
            f"L(n, k) not fitted: needs > {len(LOSS_NK_COEFFICIENTS)} runs over at least 2 values of n and of k; "
            f"got {len(runs)}."
        )
    fits_n = {}
    for k in sorted({run.k for run in runs}):
        at_k = [run for run in runs if run.k == k]
        # One degree of freedom beyond the three coefficients, so that errors can be estimated.
        if len({run.n_latents for run in at_k}) > len(LOSS_N_COEFFICIENTS):
            fits_n[k] = fit_loss_n([r.n_latents for r in at_k], [r.loss for r in at_k])
    ks = [run.k for run in runs]
    common_k = max(set(ks), key=lambda k: (ks.count(k), k))
    frontier = compute_frontier([run for run in runs if run.k == common_k])
    fit_compute = None
    if len(frontier) > len(LOSS_COMPUTE_COEFFICIENTS):
        fit_compute = fit_loss_compute([r.compute for r in frontier], [r.loss for r in frontier])
        notes.append(f"L(C) fitted on the {len(frontier)} compute-efficient runs at k = {common_k}.")
    else:
        notes.append(
            f"L(C) not fitted: needs > {len(LOSS_COMPUTE_COEFFICIENTS)} compute-efficient runs at one k; "
            f"got {len(frontier)} at k = {common_k}."
        )
    plot = plot_loss_nk(runs, fit_nk, plot_path or sweep_dir / "scaling.png", compute_fit=fit_compute, n_fits=fits_n)
    summary = {
        "runs": [
            {"path": str(r.path), "n_latents": r.n_latents, "k": r.k, "fvu": r.loss, "tokens": r.tokens, "compute": r.compute}
            for r in runs
        ],
        "loss_n": {
            str(k): {**fit.to_dict(), "n_latents": [r.n_latents for r in runs if r.k == k]} for k, fit in fits_n.items()
        },
        "loss_nk": fit_nk.to_dict() if fit_nk else None,
        "loss_compute": fit_compute.to_dict() if fit_compute else None,
        "notes": notes,
    }
    write_json_atomic(plot.with_suffix(".json"), summary)  # scaling.png → scaling.json
    report = ScalingReport(runs, fit_nk, fit_compute, plot, notes, loss_n=fits_n)
    if not quiet:
        print(report)
    return report
