"""Sharded SAEs to and from ordinary hfsae folders, optimizer state included, for any process count.

A checkpoint never records how it was sharded: the model is one ordinary hfsae folder (config.json
+ model.safetensors, loadable by `TopKSAE.from_pretrained` on one process) and the Adam moments are
full-size tensors in `optimizer.safetensors`. Resuming on a different number of processes or shards
just reads other rows. Rank 0 writes; every rank reads only its own rows (safetensors slices).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..configuration import TopKSAEConfig
from .grid import barrier
from .sharded import ShardedTopKSAE

OPTIMIZER_FILE = "optimizer.safetensors"


class CheckpointError(FileNotFoundError):
    """A folder lacks the files of an hfsae model or training state."""


def _replace_folder(build, folder: str) -> None:
    """Run build(tmp_folder), then move the result to `folder` in one rename.

    A crash mid-write must not leave a folder that loads but holds half its tensors.
    """
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        build(tmp)
        if os.path.exists(folder):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.replace(folder, os.path.join(old, "x"))
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_sharded_model(sae: ShardedTopKSAE, folder: str, *, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Gather the shards and write one hfsae folder (+ optimizer.safetensors); every rank must call this."""
    model = sae.to_full_model() if sae.grid.data_rank == 0 else None
    optimizer_state = gather_optimizer_state(sae, optimizer) if optimizer is not None and sae.grid.data_rank == 0 else None

    def build(tmp: str) -> None:
        model.save_pretrained(tmp)
        if optimizer_state is not None:
            save_file(optimizer_state, os.path.join(tmp, OPTIMIZER_FILE))

    if sae.grid.is_main:
        _replace_folder(build, folder)
    barrier(sae.grid)  # nobody reads the folder before rank 0 has finished it


def _weight_files(folder: str) -> dict[str, str]:
    """Parameter name → the safetensors file holding it (one file, or a sharded index)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(folder, file) for name, file in weight_map.items()}
    single = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(single):
        raise CheckpointError(
            f"{folder!r} holds no model.safetensors (nor model.safetensors.index.json); expected a folder "
            f"written by save_pretrained."
        )
    with safe_open(single, "pt") as f:
        return {name: single for name in f.keys()}


def load_sharded_model(folder: str, grid, *, device: str | torch.device = "cpu") -> ShardedTopKSAE:
    """This rank's shard of the hfsae model in `folder`, reading only its rows."""
    config = TopKSAEConfig.from_pretrained(folder)
    sae = ShardedTopKSAE(config, grid)
    files = _weight_files(folder)
    state = {}
    for name, parameter in sae.named_parameters():
        if name not in files:
            raise CheckpointError(f"{folder!r} has no weight {name!r}; it holds {', '.join(sorted(files))}.")
        with safe_open(files[name], "pt") as f:
            state[name] = f.get_tensor(name) if name == "b_pre" else f.get_slice(name)[sae.start : sae.stop]
    dtype = next(iter(state.values())).dtype
    sae = sae.to(device=device, dtype=dtype)
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            parameter.copy_(state[name])
    return sae


def _parameter_names(sae: ShardedTopKSAE, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter of `optimizer`, in its state_dict order."""
    names = {id(parameter): name for name, parameter in sae.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_optimizer_state(sae: ShardedTopKSAE, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state with full-size tensors, named '<parameter>.<key>' (collective)."""
    state = optimizer.state_dict()["state"]
    gathered = {}
    for index, name in enumerate(_parameter_names(sae, optimizer)):
        for key, value in sorted(state.get(index, {}).items()):
            parameter = getattr(sae, name)
            if torch.is_tensor(value) and value.shape == parameter.shape:
                value = sae.gather_full(name, value)  # moments shaped like their parameter (Adam's exp_avg…)
            elif not torch.is_tensor(value):
                value = torch.tensor(value)
            gathered[f"{name}.{key}"] = value.detach().cpu().contiguous()
    return gathered


def load_optimizer_state_(sae: ShardedTopKSAE, optimizer: torch.optim.Optimizer, folder: str) -> None:
    """Restore the state saved by `save_sharded_model(..., optimizer=)`, taking this rank's rows."""
    path = os.path.join(folder, OPTIMIZER_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder!r} has no {OPTIMIZER_FILE}; save with save_sharded_model(..., optimizer=...).")
    state_dict = optimizer.state_dict()
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        for index, name in enumerate(_parameter_names(sae, optimizer)):
            parameter = getattr(sae, name)
            entry = {}
            for key in (k[len(name) + 1 :] for k in keys if k.startswith(f"{name}.")):
                saved = f.get_slice(f"{name}.{key}")
                if name != "b_pre" and list(saved.get_shape()) == [sae.config.n_latents, *parameter.shape[1:]]:
                    value = saved[sae.start : sae.stop]  # a moment shaped like its parameter: this rank's rows
                else:
                    value = f.get_tensor(f"{name}.{key}")
                entry[key] = value.to(parameter.device) if value.dim() else value
            state_dict["state"][index] = entry
    optimizer.load_state_dict(state_dict)


def save_training_state(sae: ShardedTopKSAE, optimizer: torch.optim.Optimizer, folder: str) -> None:
    """Model and optimizer state in one folder, resumable on any number of processes (collective)."""
    save_sharded_model(sae, folder, optimizer=optimizer)


def load_training_state(folder: str, grid, optimizer_factory, *, device="cpu"):
    """(sae, optimizer) restored from `folder` for this grid; optimizer_factory(parameters) builds the optimizer."""
    sae = load_sharded_model(folder, grid, device=device)
    optimizer = optimizer_factory(sae.parameters())
    load_optimizer_state_(sae, optimizer, folder)
    return sae, optimizer
