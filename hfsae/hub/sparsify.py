"""Convert EleutherAI sparsify SAE folders (cfg.json + sae.safetensors) into a TopKSAE.

sparsify's SparseCoder (sparsify/sparse_coder.py, fused_encoder.py) computes, per token,

    z     = TopK_k(ReLU(encoder.weight (x − b_dec) + encoder.bias))
    x_hat = W_decᵀ z + b_dec                                   W_dec [num_latents, d_in]

with no input normalisation. ReLU before TopK keeps the same values as TopK before ReLU (ReLU is
monotone), so this is TopKSAE with W_enc = encoder.weight, b_enc = encoder.bias, b_pre = b_dec.
A checkpoint folder holds one subfolder per hook point (e.g. layers.6/, layers.6.mlp/).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .build import positive_int, sae_from_tensors
from .files import UnsupportedArchitectureError, read_json, read_safetensors, require_tensors

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def hook_point_from_folder(name: str) -> str:
    """sparsify names folders after module paths: 'layers.6' (or 'layer_6') is that layer's output (resid_post)."""
    name = re.sub(r"^layer_(\d+)", r"layers.\1", name.rsplit("/", 1)[-1])
    parts = name.split(".")
    if len(parts) == 2 and parts[0] in ("layers", "h") and parts[1].isdigit():
        return f"layers.{parts[1]}.resid_post"
    if len(parts) == 3 and parts[0] in ("layers", "h") and parts[1].isdigit() and parts[2] in ("mlp", "self_attn", "attn"):
        return f"layers.{parts[1]}.{'mlp_out' if parts[2] == 'mlp' else 'attn_out'}"
    return name


def from_sparsify(path: str | os.PathLike, *, base_model: str | None = None):
    """Load one sparsify SAE folder as a TopKSAE with the same outputs.

    Example:
        >>> sae = from_sparsify("sae-pythia-70m-32k/layers.3")     # hook point layers.3.resid_post
    """
    path = Path(path)
    cfg = read_json(path / CONFIG_FILE)
    activation = cfg.get("activation", "topk")
    unsupported = [
        reason
        for reason, present in (
            (f"activation {activation!r}", activation != "topk"),
            ("skip_connection (an extra linear path W_skip)", cfg.get("skip_connection")),
            ("transcode (reads one activation, reconstructs another)", cfg.get("transcode")),
            ("signed latents", cfg.get("signed")),
        )
        if present
    ]
    if unsupported:
        raise UnsupportedArchitectureError(
            f"{path / CONFIG_FILE}: unsupported architecture with {', '.join(unsupported)}; "
            "hfsae converts plain TopK sparsify SAEs only."
        )
    if "k" not in cfg:
        raise UnsupportedArchitectureError(f"{path / CONFIG_FILE}: a TopK SAE config without k.")

    weights_path = path / WEIGHTS_FILE
    tensors = {name: tensor.float() for name, tensor in read_safetensors(weights_path).items()}
    require_tensors(tensors, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"], weights_path)
    return sae_from_tensors(
        W_enc=tensors["encoder.weight"],
        b_enc=tensors["encoder.bias"],
        W_dec=tensors["W_dec"],
        b_pre=tensors["b_dec"],
        k=positive_int(cfg["k"], "k", path / CONFIG_FILE),
        hook_point=hook_point_from_folder(path.name),
        base_model=base_model,
        where=path,
    )
