"""Sharded SAEs to and from ordinary hfsae folders, optimizer state included, for any process count.

A checkpoint never records how it was sharded: the model is one ordinary hfsae folder (config.json
+ model.safetensors, loadable by `TopKSAE.from_pretrained` on one process) and the Adam moments are
full-size tensors in `optimizer.safetensors`. Resuming on a different number of processes or shards
just reads other rows. Rank 0 writes; every rank reads only its own rows (safetensors slices).
"""

from __future__ import annotations

import os

import torch
from safetensors import safe_open

from ..errors import CheckpointNotFoundError
from .sharded import ShardedTopKSAE

OPTIMIZER_FILE = "optimizer.safetensors"


def save_sharded_model(sae: ShardedTopKSAE, folder: str, *, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Gather the shards and write one hfsae folder (+ optimizer.safetensors); every rank must call this."""
    optimizer_state = gather_optimizer_state(sae, optimizer) if optimizer is not None and sae.grid.data_rank == 0 else None
    sae.save_pretrained(folder, extra_files={OPTIMIZER_FILE: optimizer_state} if optimizer_state is not None else None)


def load_sharded_model(folder: str, grid, *, device: str | torch.device = "cpu") -> ShardedTopKSAE:
    """This rank's shard of the hfsae model in `folder`, reading only its rows (ShardedTopKSAE.from_pretrained)."""
    return ShardedTopKSAE.from_pretrained(folder, grid, device=device)


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
        raise CheckpointNotFoundError(f"{folder!r} has no {OPTIMIZER_FILE}; save with save_sharded_model(..., optimizer=...).")
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
