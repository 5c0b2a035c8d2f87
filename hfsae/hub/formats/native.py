"""hfsae's own folders: config.json (model_type 'topk_sae') + model.safetensors (or shards), loaded by transformers."""

from __future__ import annotations

import re

from ...configuration import TopKSAEConfig
from ...folder import CONFIG_FILE, SHARDED_WEIGHTS_INDEX, WEIGHTS_FILE
from . import Format, FolderView

SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def is_ours(config: dict | None) -> bool:
    """Whether a config.json describes an hfsae SAE (transformers' model_type), not another library's model."""
    return config is not None and config.get("model_type") == TopKSAEConfig.model_type


def has_weights(names: set[str]) -> bool:
    return WEIGHTS_FILE in names or SHARDED_WEIGHTS_INDEX in names


def recognise(view: FolderView) -> list[str]:
    # config.json is also dictionary_learning's and other libraries' (PyTorchModelHubMixin): ours by model_type only.
    return [""] if has_weights(view.names) and is_ours(view.config(CONFIG_FILE)) else []


def fetch(view: FolderView, sae: str) -> list[str]:
    return sorted(name for name in view.names
                  if name in (CONFIG_FILE, WEIGHTS_FILE, SHARDED_WEIGHTS_INDEX) or SHARD.fullmatch(name))


def hook_point(view: FolderView, sae: str) -> str | None:
    return (view.config(CONFIG_FILE) or {}).get("hook_point")


FORMAT = Format(
    name="hfsae",
    layout="hfsae: config.json (model_type 'topk_sae') + model.safetensors",
    recognise=recognise,
    fetch=fetch,
    hook_point=hook_point,
    convert=None,
)
