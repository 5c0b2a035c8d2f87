"""The whole training job: check the output folder, load the language model, stream or harvest, train, save.

    results = train(TrainConfig())          # the built-in default: SmolLM2-135M, one middle layer

Output (`output_dir`, refused when it is not empty unless overwrite_output_dir or resuming, and even then
when it holds files training does not write: hfsae.folder.check_output_folder): a
single SAE goes directly into output_dir; several go into subfolders named like
`layers.10.resid_post/n8192_k32`, listed in `index.json` (hfsae.folder.write_index, what
`hfsae.load_many` and `hookpoint=` read). Each folder is staged and swapped in whole: `config.json`
and `model.safetensors` (EMA or raw weights, whichever had the lower held-out FVU),
`training_config.json`, `training_metrics.json`, and last the card (README.md) rendered from them.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..folder import (
    CHECKPOINTS_DIR,
    SAE_OUTPUT,
    TRAINING_CONFIG_FILE,
    TRAINING_METRICS_FILE,
    check_output_folder,
    index_entry,
    staged_folder,
    write_index,
    write_json_atomic,
    write_text_atomic,
)
from .checkpoint import read_checkpoint_state, resolve_checkpoint
from .config import TrainConfig
from .data import EpochBatches, StreamBatches
from .trainer import Trainer, TrainResult, make_accelerator


def check_output_dir(config: TrainConfig) -> Path | None:
    """Refuse a non-empty output_dir (unless overwriting), check a resume: before any model is loaded.

    Returns the checkpoint to resume from, or None.
    """
    output_dir = Path(config.output_dir)
    if config.resume_from_checkpoint:
        check_output_folder(output_dir, overwrite=True, replaces=SAE_OUTPUT)  # the run's end replaces it
        folder = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
        saved = TrainConfig.from_json_string(read_checkpoint_state(folder)["train_config"])
        config.check_resumable(saved, where=str(folder))
        return folder
    check_output_folder(
        output_dir,
        overwrite=config.overwrite_output_dir,
        replaces=SAE_OUTPUT,
        how_to_overwrite="--overwrite-output-dir to replace it, --resume-from-checkpoint last to continue the run saved in it",
    )
    return None


def _text_source(model, tokenizer, config: TrainConfig, *, split: str, n_tokens: int, batch_tokens: int,
                 buffer_tokens: int, cache: bool):  # fmt: skip
    from ..activations import ActivationSource, TextSource

    text = TextSource(dataset=config.dataset, text_column=config.text_column, split=split, hub_split=config.split)
    return ActivationSource(
        model,
        tokenizer,
        config.harvested_hook_points(),
        text=text,
        context_size=config.context_size,
        contexts_per_forward=max(1, config.device_batch_tokens // config.context_size),
        batch_tokens=batch_tokens,
        buffer_tokens=buffer_tokens,
        n_tokens=n_tokens,
        seed=config.seed,
        cache_dir=Path(config.activation_cache) if cache and config.activation_cache is not None else None,
        cache_dtype=config.activation_cache_dtype,
        progress=not config.quiet,
    )


def harvest(model, tokenizer, config: TrainConfig, *, split: str, n_tokens: int, cache: bool = False):
    """Activations {hook_point: [n_tokens, d_in]} (CPU, float32) from the documents of `split` ('train'/'test')."""
    import torch

    # The trainer shuffles harvested tokens itself: the smallest buffer the source accepts will do.
    source = _text_source(model, tokenizer, config, split=split, n_tokens=n_tokens, batch_tokens=config.device_batch_tokens,
                          buffer_tokens=4 * config.device_batch_tokens, cache=cache)  # fmt: skip
    # Rows go straight into tables of their final size: gathering blocks and concatenating them would
    # hold every activation twice at the end (2 × 4.8 GB for 2M tokens at d 576).
    tables: dict[str, torch.Tensor] = {}
    found = 0
    for batch in source:
        rows = next(iter(batch.values())).shape[0]
        for name, x in batch.items():
            if name not in tables:
                tables[name] = torch.empty(n_tokens, x.shape[1], dtype=x.dtype)
            tables[name][found : found + rows] = x
        found += rows
    if found < n_tokens:
        raise ValueError(
            f"The {split!r} split of dataset {config.dataset!r} gave only {found} tokens; {n_tokens} were asked for. "
            "Use more text or lower harvest_tokens / eval_tokens."
        )
    return tables


def train(config: TrainConfig) -> list[TrainResult]:
    """Train every SAE of `config` and write them to config.output_dir; returns their results (main process).

    Example:
        >>> results = train(TrainConfig(output_dir="my-sae"))   # minutes on a CPU (docs/performance.md)
        >>> results[0].metrics["fvu"]
    """
    from ..activations import load_language_model

    started = time.perf_counter()
    resume_from = check_output_dir(config)
    accelerator = make_accelerator(config)
    if resume_from is None and accelerator.is_main_process:
        shutil.rmtree(Path(config.output_dir) / CHECKPOINTS_DIR, ignore_errors=True)  # an overwritten run's
    init_from = None
    if config.init_from is not None and resume_from is None:
        from ..hub.loading import load

        init_from = load(config.init_from)
    model, tokenizer = load_language_model(
        config.model,
        device=accelerator.device,
        dtype=config.model_dtype,
        revision=config.model_revision,
        device_map=config.device_map,
        trust_remote_code=config.trust_remote_code,
        quiet=config.quiet,
    )
    base_model = getattr(model, "name_or_path", None) or config.model
    trainer = Trainer(config, accelerator=accelerator, base_model=base_model, init_from=init_from)
    heldout = harvest(model, tokenizer, config, split="test", n_tokens=config.eval_tokens)
    if config.streaming:
        source = _text_source(model, tokenizer, config, split="train", n_tokens=config.steps * config.batch_size,
                              batch_tokens=config.batch_size, buffer_tokens=config.buffer_tokens, cache=True)  # fmt: skip
        data = StreamBatches(source)
    else:
        harvest_started = time.perf_counter()
        tables = harvest(model, tokenizer, config, split="train", n_tokens=config.harvest_tokens, cache=True)
        trainer.forward_seconds, trainer.forward_tokens = time.perf_counter() - harvest_started, config.harvest_tokens
        del model  # the SAEs need the memory more than the language model now
        data = EpochBatches(tables, batch_size=config.batch_size, seed=config.seed)
    results = trainer.fit(data, heldout, resume_from=resume_from)
    for result in results:
        result.metrics["total_seconds"] = round(time.perf_counter() - started, 2)
        result.metrics["streaming"] = config.streaming
    if accelerator.is_main_process:
        save_results(results, config)
        if config.push_to_hub:
            from ..hub.push import push_folder

            push_folder(config.output_dir, config.push_to_hub)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


# ---- output folders ---------------------------------------------------------------------------------


def _write_model_folder(result: TrainResult, config: TrainConfig, folder: Path) -> None:
    """Stage one SAE's files, card last (it renders the training metrics), and swap the folder in."""
    from ..hub.card import write_card

    with staged_folder(folder, overwrite=True, replaces=SAE_OUTPUT, checked_before=True) as staging:
        result.sae.save_pretrained(staging)
        write_text_atomic(staging / TRAINING_CONFIG_FILE, config.to_json_string())
        write_json_atomic(staging / TRAINING_METRICS_FILE, result.metrics)
        write_card(staging)
        checkpoints = folder / CHECKPOINTS_DIR
        if checkpoints.is_dir():  # a single SAE lives in output_dir itself: keep its checkpoints
            os.replace(checkpoints, staging / CHECKPOINTS_DIR)


def save_results(results: list[TrainResult], config: TrainConfig) -> None:
    """One folder per SAE: output_dir itself for a single SAE, else subfolders plus index.json."""
    output_dir = Path(config.output_dir)
    if len(results) == 1:
        _write_model_folder(results[0], config, output_dir)
        return
    entries = []
    for result in results:
        _write_model_folder(result, config, output_dir / result.name)
        metrics = result.metrics
        entries.append(index_entry(result.name, result.sae.config, fvu=metrics["fvu"], dead_fraction=metrics["dead_fraction"]))
    write_index(output_dir, entries)
