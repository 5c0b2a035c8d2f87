"""Convert dictionary_learning TopK dictionaries (ae.pt + config.json) into a TopKSAE.

dictionary_learning (saprmarks/dictionary_learning, dictionary_learning/trainers/top_k.py) saves each
trained dictionary as a folder (e.g. `trainer_0/`) holding `ae.pt`, a plain state dict, and
`config.json` = {"trainer": {"dict_class": "AutoEncoderTopK", "activation_dim", "dict_size", "k",
"layer", "lm_name", "submodule_name", ...}, "buffer": {...}}. Its AutoEncoderTopK computes, per token,

    z     = TopK_k(ReLU(encoder.weight (x − b_dec) + encoder.bias))
    x_hat = decoder.weight z + b_dec                          decoder.weight [activation_dim, dict_size]

which is a TopKSAE with W_enc = encoder.weight, b_enc = encoder.bias, W_dec = decoder.weightᵀ and
b_pre = b_dec (ReLU before TopK keeps the same values as after it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .build import positive_int, sae_from_tensors
from .files import SAEFileError, UnsupportedArchitectureError, read_json, read_torch_state_dict, require_tensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "ae.pt"
SUPPORTED_CLASSES = ("AutoEncoderTopK",)
# submodule_name as dictionary_learning's scripts write it ('resid_post_layer_3') → hfsae hook-point site.
SUBMODULE_SITES = {"resid_post": "resid_post", "mlp_out": "mlp_out", "attn_out": "attn_out"}


def trainer_config(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """The `trainer` section of a dictionary_learning config.json, checked to be one."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict):
        raise SAEFileError(
            f"{path} is not a dictionary_learning config: it has no 'trainer' object (keys: {sorted(cfg)})."
        )
    return trainer


def hook_point_of(trainer: dict[str, Any]) -> str | None:
    """'resid_post_layer_3' → 'layers.3.resid_post'; None when the name says too little."""
    match = re.fullmatch(r"(\w+?)_layer_(\d+)", str(trainer.get("submodule_name") or ""))
    if match and match.group(1) in SUBMODULE_SITES:
        return f"layers.{match.group(2)}.{SUBMODULE_SITES[match.group(1)]}"
    return None


def from_dictionary_learning(path: str | os.PathLike, *, base_model: str | None = None):
    """Load one dictionary_learning AutoEncoderTopK folder (ae.pt + config.json) as a TopKSAE.

    Example:
        >>> sae = from_dictionary_learning("saes/resid_post_layer_3/trainer_0")
    """
    path = Path(path)
    trainer = trainer_config(read_json(path / CONFIG_FILE), path / CONFIG_FILE)
    dict_class = trainer.get("dict_class")
    if dict_class not in SUPPORTED_CLASSES:
        raise UnsupportedArchitectureError(
            f"{path / CONFIG_FILE}: unsupported architecture dict_class={dict_class!r}. hfsae converts "
            f"{', '.join(SUPPORTED_CLASSES)} only (BatchTopK thresholds, JumpReLU, gated and ReLU dictionaries "
            "have no TopKSAE equivalent)."
        )
    state = read_torch_state_dict(path / WEIGHTS_FILE)
    require_tensors(state, ["encoder.weight", "encoder.bias", "decoder.weight", "b_dec"], path / WEIGHTS_FILE)
    k = trainer.get("k", state.get("k"))
    return sae_from_tensors(
        W_enc=state["encoder.weight"].float(),
        b_enc=state["encoder.bias"].float(),
        W_dec=state["decoder.weight"].float().T.contiguous(),
        b_pre=state["b_dec"].float(),
        k=positive_int(k, "k", path / CONFIG_FILE),
        hook_point=hook_point_of(trainer),
        base_model=base_model or trainer.get("lm_name"),
        where=path,
    )
