"""Llama Scope (OpenMOSS's SAEs for Llama-3.1-8B): hyperparams.json + checkpoints/final.safetensors.

Each SAE folder (e.g. `Llama3_1-8B-Base-L15R-8x/`) holds lm_saes's hyperparams.json and the weights
encoder.weight [n, d], encoder.bias [n], decoder.weight [d, n], decoder.bias [d]. lm_saes
(OpenMOSS/Language-Model-SAEs, sae.py) computes, per token,

    x_n   = x · √d / norm_in                      # norm_activation 'dataset-wise'
    h     = encoder(x_n − b_dec · apply_decoder_bias_to_pre_encoder)
    z     = act(h · ‖W_dec_i‖) / ‖W_dec_i‖         # sparsity_include_decoder_norm
    x_hat = (decoder(z)) · norm_out / √d

The released SAEs were trained as TopK and published with a JumpReLU threshold (act_fn 'jumprelu',
jump_relu_threshold): those need thresholded inference, which a TopKSAE does not run, so they are
refused by name. A TopK config (act_fn 'topk', top_k) folds exactly: the decoder norms into W_enc,
b_enc and W_dec (as for SAELens), √d / norm into hfsae's dataset_scale when norm_in = norm_out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...folder import read_json
from ..files import UnsupportedArchitectureError, positive_int, read_safetensors, require_tensors
from . import Context, Converted, Format, FolderView
from .saelens import hook_point_from_transformer_lens

CONFIG_FILE = "hyperparams.json"
WEIGHTS_FILE = "checkpoints/final.safetensors"
BASE_MODEL = "meta-llama/Llama-3.1-8B"


def why_unsupported(cfg: dict[str, Any]) -> str | None:
    act_fn = cfg.get("act_fn", "relu")
    if act_fn == "jumprelu" or cfg.get("jump_relu_threshold"):
        return (f"JumpReLU (act_fn {act_fn!r}, jump_relu_threshold={cfg.get('jump_relu_threshold')}): published with a "
                "threshold, which needs thresholded inference; a TopKSAE keeps the top k latents instead")
    if act_fn != "topk":
        return f"act_fn {act_fn!r} (hfsae converts TopK Llama Scope SAEs only)"
    if cfg.get("hook_point_out", cfg.get("hook_point_in")) != cfg.get("hook_point_in"):
        return f"a transcoder (reads {cfg.get('hook_point_in')}, writes {cfg.get('hook_point_out')})"
    norms = cfg.get("dataset_average_activation_norm") or {}
    if cfg.get("norm_activation", "token-wise") != "dataset-wise" or norms.get("in") != norms.get("out"):
        return f"norm_activation {cfg.get('norm_activation')!r} with norms {norms} (hfsae folds dataset-wise, in = out)"
    return None


def convert(path: Path, context: Context) -> Converted:
    cfg = read_json(path / CONFIG_FILE)
    reason = why_unsupported(cfg)
    if reason:
        raise UnsupportedArchitectureError(f"{path / CONFIG_FILE}: unsupported architecture {reason}.")
    weights_path = path / WEIGHTS_FILE
    tensors = {name: tensor.float() for name, tensor in read_safetensors(weights_path).items()}
    require_tensors(tensors, ["encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"], weights_path)
    W_enc, b_enc, b_dec = tensors["encoder.weight"], tensors["encoder.bias"], tensors["decoder.bias"]
    W_dec = tensors["decoder.weight"].T.contiguous()
    if cfg.get("sparsity_include_decoder_norm", True):
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    scale = math.sqrt(W_enc.shape[1]) / float(cfg["dataset_average_activation_norm"]["in"])
    if not cfg.get("apply_decoder_bias_to_pre_encoder", True):
        # TopKSAE encodes x_n − b_pre; adding W_enc b_dec to b_enc cancels that subtraction.
        b_enc = b_enc + W_enc @ b_dec
    return Converted(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_pre=b_dec, fields={
        "k": positive_int(cfg.get("top_k"), "top_k", path / CONFIG_FILE),
        "normalize": "dataset_scale",
        "dataset_scale": scale,
        "hook_point": hook_point_from_transformer_lens(cfg.get("hook_point_in")),
        "base_model": BASE_MODEL,
    })


def recognise(view: FolderView) -> list[str]:
    if WEIGHTS_FILE not in view.files:
        return []
    cfg = view.config(CONFIG_FILE)
    return [""] if cfg is not None and "hook_point_in" in cfg else []


FORMAT = Format(
    name="llama_scope",
    layout="Llama Scope: hyperparams.json + checkpoints/final.safetensors",
    recognise=recognise,
    fetch=lambda view, sae: [CONFIG_FILE, WEIGHTS_FILE],
    hook_point=lambda view, sae: hook_point_from_transformer_lens(
        (view.config(CONFIG_FILE) or {}).get("hook_point_in")
    ),
    convert=convert,
    unsupported=lambda view, sae: why_unsupported(view.config(CONFIG_FILE) or {}),
)
