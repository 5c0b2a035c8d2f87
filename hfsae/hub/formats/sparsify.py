"""EleutherAI sparsify SAE and transcoder folders (cfg.json + sae.safetensors) as TopKSAEs.

sparsify's SparseCoder (sparsify/sparse_coder.py, fused_encoder.py) computes, per token,

    z     = TopK_k(ReLU(encoder.weight (x − b_dec) + encoder.bias))
    x_hat = W_decᵀ z + b_dec  (+ W_skip x with skip_connection)   W_dec [num_latents, d_in], W_skip [d_in, d_in]

with no input normalisation. ReLU before TopK keeps the same values as TopK before ReLU (ReLU is
monotone), so this is TopKSAE with W_enc = encoder.weight, b_enc = encoder.bias, b_pre = b_dec.
A transcoder (`transcode: true`) encodes x itself, not x − b_dec, and predicts the output of the
module it was trained on from that module's input: hfsae's transcoder convention
(encoder_subtracts_decoder_bias None), with target_hook_point the module's output.
A run folder holds one subfolder per hook point, named after the module whose output it reads
(layers.6/, layers.6.mlp/, embed_tokens/), and newer runs keep sparsify's training config.json
at the root beside them: that file describes the run, not an SAE, and is left alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ...folder import SAEFolderError, read_json, write_json_atomic
from ..files import UnsupportedArchitectureError, positive_int, read_safetensors, require_tensors
from . import Context, Converted, Format, FolderView, exported_weights

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
# Keys of sparsify's SparseCoderConfig, of which a cfg.json holds at least one (SAELens's cfg.json has none).
CONFIG_KEYS = {"expansion_factor", "num_latents", "normalize_decoder", "multi_topk", "skip_connection", "transcode"}
SITES = {"mlp": "mlp_out", "self_attn": "attn_out", "attn": "attn_out"}


def hook_point_from_folder(name: str) -> str:
    """sparsify folder names (module paths) → hfsae hook points.

    'layers.6' (or 'layer_6') is that layer's output, resid_post; 'layers.6.mlp' its MLP's output, mlp_out;
    'embed_tokens' the token embedding's output; other names are kept (a module path hfsae resolves as it is).
    """
    name = re.sub(r"^layer_(\d+)", r"layers.\1", name.rsplit("/", 1)[-1])
    match = re.fullmatch(r"(?:layers|h)\.(\d+)(?:\.(\w+))?", name)
    if match and match.group(2) is None:
        return f"layers.{match.group(1)}.resid_post"
    if match and match.group(2) in SITES:
        return f"layers.{match.group(1)}.{SITES[match.group(2)]}"
    return name


def why_unsupported(cfg: dict[str, Any]) -> str | None:
    activation = cfg.get("activation", "topk")
    reasons = [
        reason
        for reason, present in (
            (f"activation {activation!r}", activation != "topk"),
            ("signed latents", cfg.get("signed")),
        )
        if present
    ]
    return ", ".join(reasons) or None


def transcoder_input(name: str) -> str:
    """The input of the module a sparsify folder names ('layers.6' → 'layers.6.resid_pre').

    sparsify names modules relative to the base model, hfsae from the causal LM: the base model sits at
    'model.' in Llama-style models (layers.N) and at 'transformer.' in GPT-2-style ones (h.N).
    """
    name = re.sub(r"^layer_(\d+)", r"layers.\1", name.rsplit("/", 1)[-1])
    match = re.fullmatch(r"(layers|h)\.(\d+)(\.\w+)?", name)
    if match and match.group(3) is None:
        return f"layers.{match.group(2)}.resid_pre"
    if match:
        return f"{'model' if match.group(1) == 'layers' else 'transformer'}.{name}:input"
    return f"{name}:input"


def placement(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """hook_point (and target_hook_point for a transcoder) of the SAE in folder `name`."""
    if cfg.get("transcode"):
        return {"hook_point": transcoder_input(name), "target_hook_point": hook_point_from_folder(name)}
    return {"hook_point": hook_point_from_folder(name)}


def recognise(view: FolderView) -> list[str]:
    # The pair of names is sparsify's alone; its config's keys are checked when converting (`convert`), so
    # that finding one folder of a large run downloads nothing.
    return [""] if {CONFIG_FILE, WEIGHTS_FILE} <= view.names else []


def unsupported(view: FolderView, sae: str) -> str | None:
    return why_unsupported(view.config(CONFIG_FILE) or {})


def convert(path: Path, context: Context) -> Converted:
    """One sparsify SAE folder → the same SAE in hfsae's terms."""
    cfg = read_json(path / CONFIG_FILE)
    reasons = why_unsupported(cfg)
    if reasons:
        raise UnsupportedArchitectureError(
            f"{path / CONFIG_FILE}: unsupported architecture with {reasons}; "
            "hfsae converts TopK sparsify SAEs and transcoders only."
        )
    if "k" not in cfg and not CONFIG_KEYS & set(cfg):
        keys = ", ".join(sorted(cfg))
        raise SAEFolderError(f"{path / CONFIG_FILE} is not a sparsify SparseCoder config (keys: {keys}).")
    if "k" not in cfg:
        raise UnsupportedArchitectureError(f"{path / CONFIG_FILE}: a TopK SAE config without k.")
    weights_path = path / WEIGHTS_FILE
    tensors = {name: tensor.float() for name, tensor in read_safetensors(weights_path).items()}
    skip = bool(cfg.get("skip_connection"))
    require_tensors(tensors, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"] + ["W_skip"] * skip, weights_path)
    return Converted(
        W_enc=tensors["encoder.weight"], b_enc=tensors["encoder.bias"], W_dec=tensors["W_dec"], b_pre=tensors["b_dec"],
        fields={"k": positive_int(cfg["k"], "k", path / CONFIG_FILE), "skip_connection": skip,
                **placement(path.name, cfg)},
        extra={"W_skip": tensors["W_skip"]} if skip else {},
    )


def why_not_exportable(config) -> str | None:
    """What in `config` sparsify's SparseCoder cannot compute, or None when it computes the same outputs."""
    reasons = [
        reason
        for reason, present in (
            (f"inference={config.inference_mode!r} (sparsify keeps the k largest per token)",
             config.inference_mode != "topk"),
            (f"normalize={config.normalize!r} (sparsify reads raw activations)",
             config.normalize not in ("none", "dataset_scale")),
            (f"d_out={config.d_out} != d_in={config.d_in} (sparsify's b_dec is both input offset and output bias)",
             config.output_size != config.d_in),
            (f"encoder_subtracts_decoder_bias={config.subtracts_b_pre} for a{' transcoder' if config.is_transcoder else 'n SAE'} "
             "(sparsify subtracts b_dec exactly when it is not a transcoder)",
             config.subtracts_b_pre == config.is_transcoder),
        )
        if present
    ]
    return "; ".join(reasons) or None


def to_sparsify(sae, path: str | os.PathLike) -> Path:
    """Write `sae` as a sparsify SparseCoder folder (cfg.json + sae.safetensors) with the same outputs."""
    config = sae.config
    reasons = why_not_exportable(config)
    if reasons:
        raise UnsupportedArchitectureError(
            f"sparsify cannot represent this SAE: {reasons}. Export it to hfsae or SAELens instead."
        )
    W_enc, W_dec, b_pre, b_enc = exported_weights(sae)
    tensors = {"encoder.weight": W_enc, "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_pre}
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip.detach().float()
    cfg = {
        "activation": "topk",
        "num_latents": config.n_latents,
        "k": config.k,
        "skip_connection": sae.W_skip is not None,
        "transcode": config.is_transcoder,
        "d_in": config.d_in,
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, path / WEIGHTS_FILE)
    write_json_atomic(path / CONFIG_FILE, cfg)
    return path


FORMAT = Format(
    name="sparsify",
    layout="sparsify: cfg.json + sae.safetensors",
    recognise=recognise,
    fetch=lambda view, sae: [CONFIG_FILE, WEIGHTS_FILE],
    # From the folder name alone, so that finding one folder downloads nothing: a transcoder is found by its target.
    hook_point=lambda view, sae: hook_point_from_folder(view.path) if view.path else None,
    convert=convert,
    unsupported=unsupported,
)
