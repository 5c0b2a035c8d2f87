"""The whole training job: load the language model, harvest activations, train, save model folders.

    results = train(TrainConfig())          # the built-in default: SmolLM2-135M, one middle layer

Output (`output_dir`): a single SAE goes directly into output_dir; several go into subfolders
named like `layers.10.resid_post/n8192_k32`, listed in `index.json`. Each folder holds
`config.json` and `model.safetensors` (save_pretrained; EMA or raw weights, whichever had the
lower held-out FVU), `training_config.json` and `training_metrics.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..activations.models import load_language_model  # noqa: F401 (H3b moves callers to hfsae.activations)
from .config import TrainConfig
from .trainer import Trainer, TrainResult, make_accelerator

INDEX_FILE = "index.json"
TRAINING_CONFIG_FILE = "training_config.json"
TRAINING_METRICS_FILE = "training_metrics.json"


def harvest(model, tokenizer, config: TrainConfig, *, split: str, n_tokens: int) -> dict[str, torch.Tensor]:
    """Activations {hook_point: [n_tokens, d_in]} (CPU, float32) from the documents of `split` ('train'/'test')."""
    from ..activations.source import ActivationSource, TextSource

    text = TextSource(dataset=config.dataset, text_column=config.text_column, split=split, hub_split=config.split)
    source = ActivationSource(
        model,
        tokenizer,
        config.hook_points,
        text=text,
        context_size=config.context_size,
        contexts_per_forward=max(1, config.device_batch_tokens // config.context_size),
        batch_tokens=config.device_batch_tokens,
        buffer_tokens=config.device_batch_tokens,  # the trainer shuffles; no need to here
        n_tokens=n_tokens,
        seed=config.seed,
        cache_dir=None if config.activation_cache is None else Path(config.activation_cache),
        progress=not config.quiet,
    )
    batches: dict[str, list[torch.Tensor]] = {name: [] for name in config.hook_points}
    for batch in source:
        for name, x in batch.items():
            batches[name].append(x.cpu())
    tables = {name: torch.cat(parts) for name, parts in batches.items()}
    found = next(iter(tables.values())).shape[0]
    if found < n_tokens:
        raise ValueError(
            f"The {split!r} split of dataset {config.dataset!r} gave only {found} tokens; {n_tokens} were asked for. "
            "Use more text or lower harvest_tokens / eval_tokens."
        )
    return tables


def train(config: TrainConfig) -> list[TrainResult]:
    """Train every SAE of `config` and write them to config.output_dir; returns their results.

    Example:
        >>> results = train(TrainConfig(output_dir="my-sae"))   # about 4–5 minutes on 2 CPU cores
        >>> results[0].metrics["fvu"]
    """
    started = time.perf_counter()
    accelerator = make_accelerator(config)
    model, tokenizer = load_language_model(config.model, device=accelerator.device, quiet=config.quiet)
    train_tables = harvest(model, tokenizer, config, split="train", n_tokens=config.harvest_tokens)
    heldout_tables = harvest(model, tokenizer, config, split="test", n_tokens=config.eval_tokens)
    base_model = getattr(model, "name_or_path", None) or config.model
    del model  # the SAEs need the memory more than the language model now
    d_in = {name: table.shape[1] for name, table in train_tables.items()}
    trainer = Trainer(config, d_in, accelerator=accelerator, base_model=base_model)
    results = trainer.fit(train_tables, heldout_tables)
    harvest_seconds = time.perf_counter() - started - results[0].metrics["elapsed_seconds"]
    for result in results:
        result.metrics["harvest_seconds"] = round(harvest_seconds, 2)
        result.metrics["total_seconds"] = round(time.perf_counter() - started, 2)
    if trainer.accelerator.is_main_process:
        save_results(results, config)
    trainer.accelerator.end_training()
    return results


# ---- output folders ---------------------------------------------------------------------------------


def _write_text_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def save_model_folder(result: TrainResult, config: TrainConfig, folder: Path) -> None:
    """Write one SAE's folder; every file is written under a temporary name and renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        result.sae.save_pretrained(staging)
        (staging / TRAINING_CONFIG_FILE).write_text(config.to_json_string())
        (staging / TRAINING_METRICS_FILE).write_text(json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
        for path in staging.iterdir():
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_results(results: list[TrainResult], config: TrainConfig) -> None:
    """One folder per SAE: output_dir itself for a single SAE, else subfolders plus index.json."""
    output_dir = Path(config.output_dir)
    if len(results) == 1:
        save_model_folder(results[0], config, output_dir)
        return
    index = []
    for result in results:
        save_model_folder(result, config, output_dir / result.name)
        sae_config = result.sae.config
        index.append(
            {
                "path": result.name,
                "hook_point": sae_config.hook_point,
                "n_latents": sae_config.n_latents,
                "k": sae_config.k,
                "fvu": result.metrics["fvu"],
                "dead_fraction": result.metrics["dead_fraction"],
            }
        )
    _write_text_atomically(output_dir / INDEX_FILE, json.dumps({"saes": index}, indent=2) + "\n")
