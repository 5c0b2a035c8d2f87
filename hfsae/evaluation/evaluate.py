"""`evaluate`: every metric of docs/method.md §4 for one SAE on held-out text, and `eval_results.json`.

    results = evaluate(sae)                            # base model, hook point, text from sae.config
    write_eval_results("my-sae", results)              # eval_results.json + n2g_explanations.json

Sample sizes default to what runs in a few minutes on a CPU for the built-in default
(SmolLM2-135M, 8192 latents); all are `EvalConfig` fields. The reconstruction metrics, dead
fraction and N2G use `n_tokens` tokens read only up to the hook point; the downstream loss and
ablation sparsity need whole forward passes and use the first `n_downstream_tokens` of them.
Which metrics there are, their keys and groups, is `hfsae.metric_table.METRICS`: each group's runner
here computes one result and the table reads the metrics from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hfsae.activations import (
    FIRST_POSITION_USED,
    TextSource,
    capture,
    load_language_model,
    positions_used,
    token_contexts,
)
from hfsae.activations.text import FILE_BUILDERS
from hfsae.folder import EVAL_RESULTS_FILE, N2G_FILE, write_json_atomic
from hfsae.metric_table import METRIC_BY_KEY, METRICS, SKIPPABLE_GROUPS, metric_values
from hfsae.modeling import SparseCode

from .ablation import ablation_sparsity
from .downstream import downstream_loss
from .metrics import omitted_metrics, reconstruction_metrics
from .n2g import n2g_evaluate
from .probes import ProbeResult, ProbeTask, builtin_probe_tasks, evaluate_probes, task_from_dataset

@dataclass
class EvalConfig:
    """How an SAE is evaluated: which text, how many tokens for each metric, what to skip.

    Each field's help is its `hfsae eval --help` (transformers' TrainingArguments convention).
    """

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Text to evaluate on ('builtin', a Hub dataset or local files); None: the SAE's training dataset."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text of each document."})
    split: str = field(
        default="test",
        metadata={"help": "Held-out split of the text ('test': documents the trainer never read; 'all')."},
    )
    context_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per context; None: the SAE's training context size, else 64 (the paper's)."},
    )
    n_tokens: int = field(
        default=8192,
        metadata={
            "help": "Tokens (at least; whole contexts, first positions not counted) for FVU, L0, cosine, "
            "progressive recovery, dead fraction (the window) and N2G."
        },
    )
    n_downstream_tokens: int = field(
        default=1024,
        metadata={
            "help": "Tokens (of the above) for the spliced and zero-ablated CE and KL: three full forward passes."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Contexts per forward pass."})
    ablation_positions: int = field(
        default=4, metadata={"help": "Tokens at which every active latent is ablated in turn (k samples each)."}
    )
    ablation_horizon: int = field(
        default=4, metadata={"help": "T: positions whose logits are compared, the ablated token included."}
    )
    n2g_latents: int = field(
        default=16, metadata={"help": "Random latents (among those that fire) to explain with N2G."}
    )
    n2g_examples: int = field(default=4, metadata={"help": "Top-activating examples per explained latent."})
    n2g_max_suffix: int = field(default=12, metadata={"help": "Longest context suffix an N2G pattern may keep."})
    probe_contexts: int = field(
        default=48, metadata={"help": "Contexts of the built-in probe suite (half Python source, half prose)."}
    )
    probe_datasets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra probe tasks: labelled datasets (local json/jsonl/csv/parquet or Hub names), "
            "columns text, label."
        },
    )
    builtin_probes: bool = field(
        default=True, metadata={"help": "Run the built-in probe suite (see hfsae.evaluation.probes)."}
    )
    skip: list[str] = field(
        default_factory=list,
        metadata={"help": "Metric groups to leave out: downstream, ablation, n2g, probes (their keys are then null)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for the sampled tokens, latents and probe contexts."})

    def __post_init__(self):
        unknown = sorted(set(self.skip) - set(SKIPPABLE_GROUPS))
        if unknown:
            raise ValueError(f"Unknown metric groups to skip: {unknown}; choose among {', '.join(SKIPPABLE_GROUPS)}.")
        for name in ("n_tokens", "n_downstream_tokens", "batch_size", "ablation_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={getattr(self, name)}.")


@dataclass
class EvalResults:
    """The metrics of docs/method.md §4 for one SAE and what they were measured on.

    `metrics` holds every metric of `hfsae.metric_table.METRICS` by key (None where its group was
    skipped or does not apply); each is also an attribute: `results.fvu`, `results.delta_ce`.
    """

    metrics: dict[str, Any]
    n_tokens: int
    omitted: dict[str, str] = field(default_factory=dict)
    """{metric: why it does not apply to this variant}: those metrics are left out, never estimated."""
    n_downstream_tokens: int | None = None
    probes: list[ProbeResult] = field(default_factory=list)
    hook_point: str | None = None
    target_hook_point: str | None = None
    architecture: str | None = None
    base_model: str | None = None
    dataset: str | None = None
    context_size: int | None = None
    config: EvalConfig | None = None
    n2g_explanations: list[dict] = field(default_factory=list)
    """Per explained latent: its patterns (token ids and text, '*' for a wildcard), precision, recall."""

    def __getattr__(self, name: str):
        # Called only for names that are not fields: the table's metrics.
        if name in METRIC_BY_KEY and "metrics" in self.__dict__:
            return self.metrics.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict:
        """The JSON-able content of eval_results.json: the table's metrics by key, then the context
        (without the N2G explanations; NaN → null; progressive's k' as string keys)."""
        data = {metric.key: self.metrics.get(metric.key) for metric in METRICS}
        data["progressive"] = {str(k_prime): fvu for k_prime, fvu in (data["progressive"] or {}).items()}
        skipped = ("metrics", "n2g_explanations")
        data |= {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skipped}
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


def write_eval_results(directory: str | os.PathLike, results: EvalResults) -> Path:
    """Write eval_results.json and n2g_explanations.json into directory (created if needed); returns the first.

    The folder's card is not rendered here: whoever finishes the folder calls
    `hfsae.hub.card.write_card` after this (as `hfsae eval` does).
    """
    directory = Path(directory)
    write_json_atomic(directory / N2G_FILE, _finite_or_none(results.n2g_explanations))
    return write_json_atomic(directory / EVAL_RESULTS_FILE, results.to_dict())


# ---- the pieces of an evaluation -------------------------------------------------------------------------


def _contexts(config: EvalConfig, dataset: str, tokenizer, context_size: int, texts=None) -> torch.Tensor:
    """The first held-out contexts (or contexts of `texts`) with n_tokens positions that count: [contexts, seq]."""
    if context_size < 2 + FIRST_POSITION_USED:
        raise ValueError(f"context_size must be at least {2 + FIRST_POSITION_USED}; got context_size={context_size}.")
    wanted = math.ceil(config.n_tokens / (context_size - FIRST_POSITION_USED))
    if texts is not None:
        where = f"{len(texts)} given texts"
    else:
        texts = TextSource(dataset=dataset, text_column=config.text_column, split=config.split)
        where = f"the {config.split!r} split of {dataset!r}"
    rows = [ids for _, (_, ids) in zip(range(wanted), token_contexts(texts, tokenizer, context_size))]
    if len(rows) < 2:
        raise ValueError(
            f"{where[0].upper()}{where[1:]} gives {len(rows)} context(s) of {context_size} tokens; evaluation needs "
            f"at least 2. Use more text, split='all', or a smaller context_size."
        )
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def _activations(model, input_ids: torch.Tensor, hook_points: list[str], batch_size: int, quiet: bool) -> list[torch.Tensor]:
    """Activations at each hook point of the positions that count, on the model's device: [contexts · (seq − 1), d].

    Held whole (n_tokens × d_in floats: 19 MB for the built-in default) so that FVU is one call of
    `hfsae.modeling.fvu` over every row, exactly as the trainer measures it. Several hook points (a
    transcoder's input and target) come from the same forward passes.
    """
    device = next(model.parameters()).device
    parts: list[list[torch.Tensor]] = [[] for _ in hook_points]
    for ids in tqdm(input_ids.split(batch_size), desc="activations", disable=quiet):
        captured = capture(model, ids.to(device), hook_points)
        for part, name in zip(parts, hook_points):
            part.append(positions_used(captured[name]).float())
    return [torch.cat(part) for part in parts]


def _load_probe_tasks(config: EvalConfig, tokenizer, context_size: int) -> list[ProbeTask]:
    tasks = []
    if config.builtin_probes:
        tasks += builtin_probe_tasks(
            tokenizer, n_contexts=config.probe_contexts, context_size=context_size, seed=config.seed
        )
    for name in config.probe_datasets:
        import datasets

        if Path(name).is_file():  # a local file, read by the `datasets` builder for its type
            builder = FILE_BUILDERS.get(Path(name).suffix.lower())
            if builder is None:
                raise ValueError(f"Probe dataset {name!r} is not a {'/'.join(FILE_BUILDERS)} file; convert it to one.")
            dataset = datasets.load_dataset(builder, data_files=name, split="train")
        else:
            dataset = datasets.load_dataset(name, split="train")
        tasks.append(task_from_dataset(dataset, tokenizer, name=name, context_size=context_size))
    return tasks


def _config_with(config: EvalConfig | None, options: dict) -> EvalConfig:
    """config (default EvalConfig()) with keyword options overriding its fields."""
    config = config or EvalConfig()
    if not options:
        return config
    valid = [f.name for f in dataclasses.fields(EvalConfig)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"Unknown evaluation options {unknown}; valid options are {', '.join(valid)}.")
    return dataclasses.replace(config, **options)


@dataclass
class _Run:
    """What every metric group reads: the SAE, the model, the held-out contexts and their code."""

    sae: object
    model: object
    tokenizer: object
    config: EvalConfig
    input_ids: torch.Tensor
    code: SparseCode
    context_size: int
    probe_tasks: list[ProbeTask]
    quiet: bool

    @property
    def downstream_ids(self) -> torch.Tensor:
        """The first contexts, enough for n_downstream_tokens: the groups that need whole forward passes."""
        return self.input_ids[: math.ceil(self.config.n_downstream_tokens / (self.context_size - FIRST_POSITION_USED))]


def _downstream(run: _Run):
    config = run.config
    return downstream_loss(
        run.sae,
        run.model,
        run.downstream_ids,
        hook_point=run.sae.config.hook_point,
        batch_size=config.batch_size,
        quiet=run.quiet,
    )


def _ablation(run: _Run):
    config = run.config
    return ablation_sparsity(
        run.sae,
        run.model,
        run.downstream_ids,
        hook_point=run.sae.config.hook_point,
        n_positions=config.ablation_positions,
        horizon=min(config.ablation_horizon, run.context_size - FIRST_POSITION_USED),
        seed=config.seed,
        quiet=run.quiet,
    )


def _n2g(run: _Run):
    config, tokenizer, contexts = run.config, run.tokenizer, run.input_ids.shape[0]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # The code of the positions that count, per context: [contexts, seq − FIRST_POSITION_USED, k].
    code = dataclasses.replace(
        run.code,
        indices=run.code.indices.reshape(contexts, -1, run.code.indices.shape[-1]).cpu(),
        values=run.code.values.reshape(contexts, -1, run.code.values.shape[-1]).cpu(),
    )
    return n2g_evaluate(
        run.sae,
        run.model,
        run.input_ids,
        code,
        hook_point=run.sae.config.hook_point,
        pad_token_id=pad_token_id or 0,
        n_latents_explained=config.n2g_latents,
        n_examples=config.n2g_examples,
        max_suffix=config.n2g_max_suffix,
        seed=config.seed,
        quiet=run.quiet,
    )


def _probes(run: _Run) -> list[ProbeResult]:
    tasks = _load_probe_tasks(run.config, run.tokenizer, run.context_size) + run.probe_tasks
    hook_point, batch_size = run.sae.config.hook_point, run.config.batch_size
    return evaluate_probes(run.sae, run.model, tasks, hook_point=hook_point, batch_size=batch_size)


# What computes each skippable group of hfsae.metric_table; its result is what the group's metrics read.
GROUP_RUNNERS = {"downstream": _downstream, "ablation": _ablation, "n2g": _n2g, "probes": _probes}


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
    config = _config_with(config, options)
    hook_point = sae.config.hook_point
    if hook_point is None:
        raise ValueError(
            "The SAE's config names no hook_point; set sae.config.hook_point (e.g. 'layers.8.resid_post')."
        )
    if model is None or tokenizer is None:
        if sae.config.base_model is None:
            raise ValueError("The SAE's config names no base_model; pass model= and tokenizer= to evaluate it.")
        model, tokenizer = load_language_model(sae.config.base_model, quiet=quiet)
    sae.eval()
    context_size = config.context_size or sae.config.context_size or 64
    dataset = config.dataset or sae.config.dataset or "builtin"
    input_ids = _contexts(config, dataset, tokenizer, context_size, texts)
    if texts is not None:
        dataset = f"{len(texts)} texts given to evaluate()"

    target = sae.config.target_hook_point
    x, *y = _activations(model, input_ids, [hook_point] + ([target] if target else []), config.batch_size, quiet)
    reconstruction, code = reconstruction_metrics(sae, x, *y)
    omitted = omitted_metrics(sae.config)
    run = _Run(sae, model, tokenizer, config, input_ids, code, context_size, list(probe_tasks or []), quiet)
    # A group runs unless skipped or every metric of it is omitted for this variant.
    groups = {"reconstruction": reconstruction} | {
        group: runner(run)
        for group, runner in GROUP_RUNNERS.items()
        if group not in config.skip and any(m.key not in omitted for m in METRICS if m.group == group)
    }
    return EvalResults(
        metrics=metric_values(groups),
        n_tokens=reconstruction.n_tokens,
        omitted=omitted,
        n_downstream_tokens=groups["downstream"].n_tokens if "downstream" in groups else None,
        probes=groups.get("probes", []),
        hook_point=hook_point,
        target_hook_point=target,
        architecture=sae.config.architecture,
        base_model=sae.config.base_model,
        dataset=dataset,
        context_size=context_size,
        config=config,
        n2g_explanations=[e.to_dict(tokenizer) for e in groups["n2g"].explanations] if "n2g" in groups else [],
    )
