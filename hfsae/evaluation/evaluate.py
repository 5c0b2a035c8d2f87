"""`evaluate`: every metric of docs/method.md §4 for one SAE on held-out text, and `eval_results.json`.

    results = evaluate(sae)                            # base model, hook point, text from sae.config
    write_eval_results("my-sae", results)              # eval_results.json + n2g_explanations.json

Sample sizes default to what runs in a few minutes on 2 CPU cores for the built-in default
(SmolLM2-135M, 8192 latents); all are `EvalConfig` fields. The reconstruction metrics, dead
fraction and N2G use `n_tokens` tokens read only up to the hook point; the downstream loss and
ablation sparsity need whole forward passes and use the first `n_downstream_tokens` of them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..training.config import documented
from .ablation import ablation_sparsity
from .downstream import downstream_loss
from .metrics import ReconstructionMetrics, progressive_ks
from .n2g import n2g_evaluate
from .probes import ProbeResult, ProbeTask, builtin_probe_tasks, evaluate_probes, task_from_dataset

EVAL_RESULTS_FILE = "eval_results.json"
N2G_EXPLANATIONS_FILE = "n2g_explanations.json"
METRIC_GROUPS = ("downstream", "ablation", "n2g", "probes")


@dataclass
class EvalConfig:
    """How an SAE is evaluated: which text, how many tokens for each metric, what to skip."""

    dataset: str | None = None
    """Text to evaluate on ("builtin", a Hub dataset or local files); None: the SAE's training dataset."""
    text_column: str = "text"
    """Column holding the text of each document."""
    split: str = "test"
    """Held-out split of the text ("test": documents the trainer never read; "all")."""
    context_size: int | None = None
    """Tokens per context; None: the SAE's training context size, else 64 (the paper's)."""
    n_tokens: int = 8192
    """Tokens for FVU, L0, cosine, progressive recovery, dead fraction (the window) and N2G."""
    n_downstream_tokens: int = 1024
    """Tokens (of the above) for the spliced and zero-ablated CE and KL: three full forward passes."""
    batch_size: int = 16
    """Contexts per forward pass."""
    ablation_positions: int = 4
    """Tokens at which every active latent is ablated in turn (k samples each)."""
    ablation_horizon: int = 4
    """T: positions whose logits are compared, the ablated token included."""
    n2g_latents: int = 16
    """Random latents (among those that fire) to explain with N2G."""
    n2g_examples: int = 4
    """Top-activating examples per explained latent."""
    n2g_max_suffix: int = 12
    """Longest context suffix an N2G pattern may keep."""
    probe_contexts: int = 48
    """Contexts of the built-in probe suite (half Python source, half prose)."""
    probe_datasets: list[str] = field(default_factory=list)
    """Extra probe tasks: labelled datasets (local json/jsonl/csv/parquet or Hub names), columns text, label."""
    builtin_probes: bool = True
    """Run the built-in probe suite (see hfsae.evaluation.probes)."""
    skip: list[str] = field(default_factory=list)
    """Metric groups to leave out: downstream, ablation, n2g, probes (their keys are then null)."""
    seed: int = 0
    """Seed for the sampled tokens, latents and probe contexts."""

    def __post_init__(self):
        unknown = sorted(set(self.skip) - set(METRIC_GROUPS))
        if unknown:
            raise ValueError(f"Unknown metric groups to skip: {unknown}; choose among {', '.join(METRIC_GROUPS)}.")
        for name in ("n_tokens", "n_downstream_tokens", "batch_size", "ablation_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={getattr(self, name)}.")


@dataclass
class EvalResults:
    """The metrics of docs/method.md §4 for one SAE (None where a metric group was skipped or undefined)."""

    fvu: float
    explained_variance: float
    l0: float
    dead_fraction: float
    cosine: float
    progressive: dict[int, float]
    n_tokens: int
    ce_clean: float | None = None
    ce_spliced: float | None = None
    delta_ce: float | None = None
    kl: float | None = None
    ce_zero: float | None = None
    ce_loss_recovered: float | None = None
    n_downstream_tokens: int | None = None
    ablation_sparsity: float | None = None
    n2g_precision: float | None = None
    n2g_recall: float | None = None
    probe_loss: float | None = None
    probe_loss_baseline: float | None = None
    probes: list[ProbeResult] = field(default_factory=list)
    hook_point: str | None = None
    base_model: str | None = None
    dataset: str | None = None
    context_size: int | None = None
    config: EvalConfig | None = None
    n2g_explanations: list[dict] = field(default_factory=list)
    """Per explained latent: its patterns (token ids and text, '*' for a wildcard), precision, recall."""

    def to_dict(self) -> dict:
        """The JSON-able content of eval_results.json (without the N2G explanations; NaN → null)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "n2g_explanations"}
        data["progressive"] = {str(k_prime): fvu for k_prime, fvu in self.progressive.items()}
        data["probes"] = [dataclasses.asdict(result) for result in self.probes]
        data["config"] = dataclasses.asdict(self.config) if self.config else None
        return _finite_or_none(data)


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


def _atomic_write_json(path: Path, data) -> None:
    # Write to a temporary name, then rename: an interrupted write must not leave half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_eval_results(directory: str | os.PathLike, results: EvalResults) -> Path:
    """Write eval_results.json and n2g_explanations.json into directory (created if needed); returns the first."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / EVAL_RESULTS_FILE
    _atomic_write_json(directory / N2G_EXPLANATIONS_FILE, _finite_or_none(results.n2g_explanations))
    _atomic_write_json(path, results.to_dict())
    return path


# ---- the pieces of an evaluation -------------------------------------------------------------------------


def _packed(texts: list[str], tokenizer, context_size: int, wanted: int) -> list[list[int]]:
    """Texts tokenised end to end, separated by the end-of-text token, cut into contexts."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream += list(ids) + separator
        if len(stream) >= wanted * context_size:
            break
    return [stream[i : i + context_size] for i in range(0, len(stream) - context_size + 1, context_size)][:wanted]


def _contexts(config: EvalConfig, dataset: str, tokenizer, context_size: int, texts=None) -> torch.Tensor:
    """The first ceil(n_tokens / context_size) held-out contexts (or contexts of `texts`): [contexts, context_size]."""
    from hfsae.activations.text import TextSource, token_contexts

    wanted = math.ceil(config.n_tokens / context_size)
    if texts is not None:
        rows, where = _packed(texts, tokenizer, context_size, wanted), f"{len(texts)} given texts"
    else:
        text = TextSource(dataset=dataset, text_column=config.text_column, split=config.split)
        rows = [ids for _, (_, ids) in zip(range(wanted), token_contexts(text, tokenizer, context_size))]
        where = f"the {config.split!r} split of {dataset!r}"
    if len(rows) < 2:
        raise ValueError(
            f"{where[0].upper()}{where[1:]} gives {len(rows)} context(s) of {context_size} tokens; evaluation needs "
            f"at least 2. Use more text, split='all', or a smaller context_size."
        )
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def _reconstruction(sae, model, input_ids: torch.Tensor, hook_point: str, batch_size: int, quiet: bool):
    """ReconstructionMetrics over input_ids [contexts, seq], and the code [contexts, seq, k] for N2G."""
    from hfsae.activations.hook_points import capture

    metrics = ReconstructionMetrics(n_latents=sae.config.n_latents)
    ks = progressive_ks(sae.config.k, sae.config.n_latents)
    indices, values = [], []
    device = next(model.parameters()).device
    for ids in tqdm(input_ids.split(batch_size), desc="reconstruction", disable=quiet):
        x = capture(model, ids.to(device), [hook_point])[hook_point].float()
        code = sae.encode(x)
        progressive = {k_prime: sae.decode(sae.encode(x, k=k_prime)) for k_prime in ks}
        metrics.update(x, code, sae.decode(code), progressive)
        indices.append(code.indices.cpu())
        values.append(code.values.cpu())
    code = dataclasses.replace(
        code, indices=torch.cat(indices), values=torch.cat(values), input_mean=None, input_scale=None
    )
    return metrics, code


def _load_probe_tasks(config: EvalConfig, tokenizer, context_size: int) -> list[ProbeTask]:
    tasks = []
    if config.builtin_probes:
        tasks += builtin_probe_tasks(
            tokenizer, n_contexts=config.probe_contexts, context_size=context_size, seed=config.seed
        )
    for name in config.probe_datasets:
        import datasets

        suffix = Path(name).suffix.lower().lstrip(".")
        if Path(name).exists():
            builder = {"jsonl": "json"}.get(suffix, suffix)
            dataset = datasets.load_dataset(builder, data_files=name, split="train")
        else:
            dataset = datasets.load_dataset(name, split="train")
        tasks.append(task_from_dataset(dataset, tokenizer, name=name, context_size=context_size))
    return tasks


def _mean(numbers: list[float]) -> float | None:
    return sum(numbers) / len(numbers) if numbers else None


def evaluate(
    sae,
    *,
    model=None,
    tokenizer=None,
    texts: list[str] | None = None,
    config: EvalConfig | None = None,
    probe_tasks: list[ProbeTask] | None = None,
    quiet: bool = False,
    **options,
) -> EvalResults:
    """Measure `sae` on held-out text the way the paper does (docs/method.md §4).

    model / tokenizer default to sae.config.base_model (the SAE must sit on the model's device);
    `texts` replaces the configured dataset with these documents (all of them, no split); keyword
    `options` override `EvalConfig` fields; `probe_tasks` adds ready-made tasks to the configured ones.

    Example:
        >>> results = evaluate(sae, n_tokens=4096, skip=["ablation"])
        >>> results.fvu, results.delta_ce, results.probe_loss
    """
    config = config or EvalConfig()
    if options:
        valid = [f.name for f in dataclasses.fields(EvalConfig)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"Unknown evaluation options {unknown}; valid options are {', '.join(valid)}.")
        config = dataclasses.replace(config, **options)
    hook_point = sae.config.hook_point
    if hook_point is None:
        raise ValueError(
            "The SAE's config names no hook_point; set sae.config.hook_point (e.g. 'layers.8.resid_post')."
        )
    if model is None or tokenizer is None:
        if sae.config.base_model is None:
            raise ValueError("The SAE's config names no base_model; pass model= and tokenizer= to evaluate it.")
        from hfsae.training.run import load_language_model

        model, tokenizer = load_language_model(sae.config.base_model, quiet=quiet)
    sae.eval()
    context_size = config.context_size or sae.config.context_size or 64
    dataset = config.dataset or sae.config.dataset or "builtin"
    input_ids = _contexts(config, dataset, tokenizer, context_size, texts)
    if texts is not None:
        dataset = f"{len(texts)} texts given to evaluate()"

    metrics, code = _reconstruction(sae, model, input_ids, hook_point, config.batch_size, quiet)
    results = EvalResults(
        fvu=metrics.fvu,
        explained_variance=metrics.explained_variance,
        l0=metrics.l0,
        dead_fraction=metrics.dead_fraction,
        cosine=metrics.cosine,
        progressive=metrics.progressive,
        n_tokens=metrics.n_tokens,
        hook_point=hook_point,
        base_model=sae.config.base_model,
        dataset=dataset,
        context_size=context_size,
        config=config,
    )
    downstream_ids = input_ids[: max(1, math.ceil(config.n_downstream_tokens / context_size))]
    if "downstream" not in config.skip:
        loss = downstream_loss(
            sae, model, downstream_ids, hook_point=hook_point, batch_size=config.batch_size, quiet=quiet
        )
        for name in ("ce_clean", "ce_spliced", "delta_ce", "kl", "ce_zero", "ce_loss_recovered"):
            setattr(results, name, getattr(loss, name))
        results.n_downstream_tokens = loss.n_tokens
    if "ablation" not in config.skip:
        horizon = min(config.ablation_horizon, context_size)
        results.ablation_sparsity = ablation_sparsity(
            sae,
            model,
            downstream_ids,
            hook_point=hook_point,
            n_positions=config.ablation_positions,
            horizon=horizon,
            seed=config.seed,
            quiet=quiet,
        ).mean
    if "n2g" not in config.skip:
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        n2g = n2g_evaluate(
            sae,
            model,
            input_ids,
            code,
            hook_point=hook_point,
            pad_token_id=pad_token_id or 0,
            n_latents_explained=config.n2g_latents,
            n_examples=config.n2g_examples,
            max_suffix=config.n2g_max_suffix,
            seed=config.seed,
            quiet=quiet,
        )
        results.n2g_precision, results.n2g_recall = n2g.precision, n2g.recall
        results.n2g_explanations = [explanation.to_dict(tokenizer) for explanation in n2g.explanations]
    if "probes" not in config.skip:
        tasks = _load_probe_tasks(config, tokenizer, context_size) + list(probe_tasks or [])
        results.probes = evaluate_probes(sae, model, tasks, hook_point=hook_point, batch_size=config.batch_size)
        results.probe_loss = _mean([result.loss for result in results.probes])
        results.probe_loss_baseline = _mean([result.baseline_loss for result in results.probes])
    return results


@documented
@dataclass
class EvalArgs(EvalConfig):
    """`hfsae eval MODEL`: the SAE to measure, where to write its results, and how to evaluate it."""

    model: str | None = None
    """The SAE: a saved folder, a Hub repo id or a registry name (see `hfsae list`)."""
    output_dir: str | None = None
    """Where eval_results.json goes; default: the SAE's own folder when it is local, else ./eval-<name>."""
    card: bool = True
    """Rewrite the folder's README.md model card with the new metrics."""
    quiet: bool = False
    """No progress bars."""

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ValueError("Name the SAE to evaluate: hfsae eval MODEL_DIR_OR_NAME.")


def run_eval(args: EvalArgs) -> EvalResults:
    """The `hfsae eval` command: evaluate, write eval_results.json (and the card), print the headline metrics."""
    from hfsae.hub.loading import load

    sae = load(args.model)
    config = EvalConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)})
    results = evaluate(sae, config=config, quiet=args.quiet)
    local = Path(args.model)
    output_dir = Path(args.output_dir) if args.output_dir else local if local.is_dir() else Path(f"eval-{local.name}")
    write_eval_results(output_dir, results)
    if args.card and (output_dir / "config.json").is_file():
        from hfsae.hub.card import write_card

        write_card(output_dir)
    print(
        f"{args.model}: FVU {results.fvu:.4f}, L0 {results.l0:.1f}, dead {results.dead_fraction:.2%}, "
        f"ΔCE {_fmt(results.delta_ce)}, CE recovered {_fmt(results.ce_loss_recovered)} → {output_dir / EVAL_RESULTS_FILE}"
    )
    return results


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
