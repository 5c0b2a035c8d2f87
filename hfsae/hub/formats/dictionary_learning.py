"""dictionary_learning TopK and BatchTopK dictionaries (ae.pt + config.json) as TopKSAEs.

dictionary_learning (saprmarks/dictionary_learning, dictionary_learning/trainers/top_k.py) saves each
trained dictionary as a folder (e.g. `trainer_0/`) holding `ae.pt`, a plain state dict, and
`config.json` = {"trainer": {"dict_class": "AutoEncoderTopK", "activation_dim", "dict_size", "k",
"layer", "lm_name", "submodule_name", ...}, "buffer": {...}}. Its AutoEncoderTopK computes, per token,

    z     = TopK_k(ReLU(encoder.weight (x − b_dec) + encoder.bias))
    x_hat = decoder.weight z + b_dec                          decoder.weight [activation_dim, dict_size]

which is a TopKSAE with W_enc = encoder.weight, b_enc = encoder.bias, W_dec = decoder.weightᵀ and
b_pre = b_dec (ReLU before TopK keeps the same values as after it).

Its BatchTopKSAE (trainers/batch_top_k.py) has the same tensors plus a `threshold` buffer, and at
inference keeps every latent whose ReLU'd pre-activation is strictly above it:

    z = f · (f > threshold),  f = ReLU(encoder.weight (x − b_dec) + encoder.bias)

which is hfsae's architecture "batchtopk" with threshold inference and that threshold. A threshold
still at its initial −1 (training stopped before estimating it) loads, and hfsae's encode says so.

SAEBench sweeps (`<sweep>/resid_post_layer_12/trainer_N/`) are such folders side by side, TopK among
other architectures; each folder's dict_class says which.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...folder import SAEFolderError, read_json
from ..files import UnsupportedArchitectureError, positive_int, read_torch_state_dict, require_tensors
from . import Context, Converted, Format, FolderView

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "ae.pt"
# The dictionary classes hfsae converts, by the hfsae architecture they are.
SUPPORTED_CLASSES = {"AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk"}
# dictionary_learning's other dictionary classes, by the architecture they are.
OTHER_CLASSES = {
    "AutoEncoder": "ReLU", "AutoEncoderNew": "ReLU", "GatedAutoEncoder": "gated", "JumpReluAutoEncoder": "JumpReLU",
    "MatryoshkaBatchTopKSAE": "Matryoshka BatchTopK",
}
# submodule_name as dictionary_learning's scripts write it ('resid_post_layer_3') → hfsae hook-point site.
SUBMODULE_SITES = {"resid_post": "resid_post", "mlp_out": "mlp_out", "attn_out": "attn_out"}


def trainer_config(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """The `trainer` section of a dictionary_learning config.json, checked to be one."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict):
        raise SAEFolderError(
            f"{path} is not a dictionary_learning config: it has no 'trainer' object (keys: {sorted(cfg)})."
        )
    return trainer


def hook_point_of(trainer: dict[str, Any]) -> str | None:
    """'resid_post_layer_3' → 'layers.3.resid_post'; None when the name says too little."""
    match = re.fullmatch(r"(\w+?)_layer_(\d+)", str(trainer.get("submodule_name") or ""))
    if match and match.group(1) in SUBMODULE_SITES:
        return f"layers.{match.group(2)}.{SUBMODULE_SITES[match.group(1)]}"
    return None


def architecture_of(trainer: dict[str, Any]) -> str | None:
    """Why a dictionary is not one hfsae runs ("gated (dict_class GatedAutoEncoder)"), or None for a TopK one."""
    dict_class = trainer.get("dict_class")
    if dict_class in SUPPORTED_CLASSES:
        return None
    return f"{OTHER_CLASSES.get(dict_class, 'unknown architecture')} (dict_class {dict_class!r})"


def convert(path: Path, context: Context) -> Converted:
    """One dictionary_learning AutoEncoderTopK or BatchTopKSAE folder (ae.pt + config.json) → the same SAE in hfsae's
    terms."""
    trainer = trainer_config(read_json(path / CONFIG_FILE), path / CONFIG_FILE)
    dict_class = trainer.get("dict_class")
    if dict_class not in SUPPORTED_CLASSES:
        raise UnsupportedArchitectureError(
            f"{path / CONFIG_FILE}: unsupported architecture dict_class={dict_class!r}. hfsae converts "
            f"{', '.join(SUPPORTED_CLASSES)} only (Matryoshka, JumpReLU, gated and ReLU dictionaries "
            "have no TopKSAE equivalent)."
        )
    architecture = SUPPORTED_CLASSES[dict_class]
    thresholded = architecture == "batchtopk"
    state = read_torch_state_dict(path / WEIGHTS_FILE)
    require_tensors(
        state, ["encoder.weight", "encoder.bias", "decoder.weight", "b_dec"] + ["threshold"] * thresholded,
        path / WEIGHTS_FILE,
    )
    k = trainer.get("k", state.get("k"))
    return Converted(
        W_enc=state["encoder.weight"].float(),
        b_enc=state["encoder.bias"].float(),
        W_dec=state["decoder.weight"].float().T.contiguous(),
        b_pre=state["b_dec"].float(),
        fields={
            "k": positive_int(k, "k", path / CONFIG_FILE),
            "hook_point": hook_point_of(trainer),
            "base_model": trainer.get("lm_name"),
            "architecture": architecture,
        },
        extra={"threshold": state["threshold"].float().reshape(())} if thresholded else {},
    )


def trainer_of(view: FolderView) -> dict[str, Any] | None:
    cfg = view.config(CONFIG_FILE)
    trainer = cfg.get("trainer") if cfg is not None else None
    return trainer if isinstance(trainer, dict) else None


def recognise(view: FolderView) -> list[str]:
    return [""] if WEIGHTS_FILE in view.names and trainer_of(view) is not None else []


FORMAT = Format(
    name="dictionary_learning",
    layout="dictionary_learning / SAEBench: config.json (with a 'trainer' section) + ae.pt",
    recognise=recognise,
    fetch=lambda view, sae: [CONFIG_FILE, WEIGHTS_FILE],
    hook_point=lambda view, sae: hook_point_of(trainer_of(view) or {}),
    convert=convert,
    unsupported=lambda view, sae: architecture_of(trainer_of(view) or {}),
)
