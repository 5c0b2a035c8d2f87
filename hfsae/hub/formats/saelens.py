"""SAELens TopK SAE folders (cfg.json + sae_weights.safetensors) as TopKSAEs, and export back.

SAELens (sae_lens/saes/sae.py, topk_sae.py) computes, per token,

    x_n   = norm_in(x)                       # normalize_activations: none | layer_norm | ...
    h     = (x_n − b_dec · apply_b_dec_to_input) @ W_enc + b_enc        W_enc [d_in, d_sae]
    h     = h · ‖W_dec_i‖                    # only when rescale_acts_by_decoder_norm
    z     = ReLU(TopK_k(h))
    x_hat = norm_out((z / ‖W_dec_i‖ if rescaled) · scaling_factor @ W_dec + b_dec)   W_dec [d_sae, d_in]

Each convention folds exactly into a TopKSAE's weights: the decoder-norm rescaling into W_enc,
b_enc and W_dec; a fine-tuning scaling factor into W_dec; an input without b_dec into b_enc.
layer_norm is the same per-token normalisation as hfsae's (docs/method.md §1).

SAELens saves a BatchTopK SAE (batchtopk_sae.py) for inference as a JumpReLU one: cfg.json says
architecture 'jumprelu' with metadata.training_architecture 'batchtopk' (k under
training_architecture_details), and `threshold` [d_sae] repeats its one learned threshold. JumpReLU
keeps ReLU(h) where h > threshold, which is hfsae's "batchtopk" with threshold inference.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ...folder import SAEFolderError, read_json, write_json_atomic
from ..files import UnsupportedArchitectureError, positive_int, read_safetensors, require_tensors
from . import Context, Converted, Format, FolderView, exported_weights

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# SAELens reads a cfg.json without sae_lens_version ≥ 6 as its older flat format; ours is the v6 layout.
SAELENS_FORMAT_VERSION = "6.0.0"

# TransformerLens hook names ↔ hfsae hook-point sites.
TRANSFORMER_LENS_SITES = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
}
MODEL_NAMES = {"gpt2-small": "openai-community/gpt2", "gpt2": "openai-community/gpt2"}
# The transformers modules whose output TransformerLens's hook_attn_out / hook_mlp_out read in Gemma-2/3.
POST_NORMS = {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}


def hook_point_from_transformer_lens(hook_name: str | None, model_name: str | None = None) -> str | None:
    """'blocks.8.hook_resid_post' → 'layers.8.resid_post'; other names are kept as they are.

    TransformerLens takes Gemma-2/3's hook_attn_out and hook_mlp_out after the block's post-norm
    (ln1_post / ln2_post), which transformers names post_attention_layernorm / post_feedforward_layernorm:
    for those models the hook point is that norm's output, not the attention or MLP output.
    """
    match = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", hook_name or "")
    if not match or match.group(2) not in TRANSFORMER_LENS_SITES:
        return hook_name
    layer, site = match.group(1), TRANSFORMER_LENS_SITES[match.group(2)]
    if site in POST_NORMS and re.search(r"gemma-?[23]", model_name or "", re.IGNORECASE):
        return f"model.layers.{layer}.{POST_NORMS[site]}:output"
    return f"layers.{layer}.{site}"


def hook_point_to_transformer_lens(hook_point: str | None) -> str | None:
    """'layers.8.resid_post' → 'blocks.8.hook_resid_post'; other names are kept as they are."""
    sites = {site: hook for hook, site in TRANSFORMER_LENS_SITES.items()}
    match = re.fullmatch(r"layers\.(\d+)\.(\w+)", hook_point or "")
    if match and match.group(2) in sites:
        return f"blocks.{match.group(1)}.{sites[match.group(2)]}"
    return hook_point


def trained_as_batchtopk(cfg: dict[str, Any]) -> bool:
    """Whether a cfg.json is SAELens's inference export of a BatchTopK SAE (a JumpReLU one with a shared threshold)."""
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    return cfg.get("architecture") == "jumprelu" and metadata.get("training_architecture") == "batchtopk"


def topk_of(cfg: dict[str, Any], path: Path) -> int:
    """k of a SAELens TopK config (v6 `architecture: topk, k`, or older `activation_fn: topk` + kwargs),
    or of a BatchTopK export (metadata.training_architecture_details.k)."""
    if trained_as_batchtopk(cfg):
        details = cfg["metadata"].get("training_architecture_details")
        k = details.get("k") if isinstance(details, dict) else None
        if k is None:
            raise UnsupportedArchitectureError(
                f"{path}: a BatchTopK export without metadata.training_architecture_details.k."
            )
        return positive_int(k, "k", path)
    architecture = cfg.get("architecture") or "standard"
    activation = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if architecture == "topk" or (architecture == "standard" and activation == "topk"):
        k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
        if k is None:
            raise UnsupportedArchitectureError(f"{path}: a TopK SAE config without k.")
        return positive_int(k, "k", path)
    name = architecture if architecture != "standard" else f"standard (activation {activation})"
    raise UnsupportedArchitectureError(
        f"{path}: unsupported architecture {name}. hfsae converts SAELens TopK SAEs "
        "(architecture 'topk', or 'standard' with activation_fn 'topk') and BatchTopK exports only."
    )


def normalization_of(cfg: dict[str, Any], path: Path, norm_scaling_factor: float | None) -> dict[str, Any]:
    """TopKSAEConfig fields reproducing SAELens's normalize_activations."""
    mode = cfg.get("normalize_activations")
    if mode is not None and not isinstance(mode, (str, bool)):
        raise SAEFolderError(
            f"{path}: normalize_activations must be a string (none, layer_norm, expected_average_only_in); got {mode!r}."
        )
    if isinstance(mode, bool):  # SAELens's older boolean form
        mode = "expected_average_only_in" if mode else "none"
    mode = mode or "none"
    if mode in ("none", "layer_norm"):
        return {"normalize": mode}
    if mode == "expected_average_only_in":
        factor = norm_scaling_factor if norm_scaling_factor is not None else cfg.get("norm_scaling_factor")
        if factor is None:
            # What SAELens itself does without a known factor: apply nothing at run time.
            warnings.warn(
                f"{path}: normalize_activations='expected_average_only_in' without a norm_scaling_factor; "
                "like SAELens, the SAE reads raw activations. Pass norm_scaling_factor= if you know it.",
                stacklevel=3,
            )
            return {"normalize": "none"}
        # Scaling in, unscaling out is hfsae's dataset_scale; SAELens folds it the same way on load.
        return {"normalize": "dataset_scale", "dataset_scale": float(factor)}
    raise UnsupportedArchitectureError(
        f"{path}: normalize_activations={mode!r} has no hfsae equivalent "
        "(supported: none, layer_norm, expected_average_only_in)."
    )


def hook_name_of(cfg: dict[str, Any], path: Path) -> str | None:
    """The TransformerLens hook name of a SAELens config (v6 keeps it under metadata), checked to be a string."""
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook_name = metadata.get("hook_name", cfg.get("hook_name", cfg.get("hook_point")))
    if hook_name is not None and not isinstance(hook_name, str):
        raise SAEFolderError(f"{path}: hook_name must be a string like 'blocks.8.hook_resid_post'; got {hook_name!r}.")
    return hook_name


def checked_fields(cfg: dict[str, Any], path: Path) -> None:
    """Refuse, in one line naming the field, a cfg.json whose fields have the wrong kind of value."""
    for name in ("d_in", "d_sae"):
        if name not in cfg:
            raise SAEFolderError(f"{path} lacks {name}, the {'input width' if name == 'd_in' else 'number of latents'}.")
        positive_int(cfg[name], name, path)
    for name in ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm"):
        if name in cfg and not isinstance(cfg[name], bool):
            raise SAEFolderError(f"{path}: {name} must be true or false; got {cfg[name]!r}.")
    if "metadata" in cfg and not isinstance(cfg["metadata"], dict):
        raise SAEFolderError(f"{path}: metadata must be an object; got {cfg['metadata']!r}.")


def convert(path: Path, context: Context) -> Converted:
    """One SAELens TopK folder → the same SAE in hfsae's terms (option norm_scaling_factor= for
    expected_average_only_in SAEs whose cfg.json lacks it)."""
    norm_scaling_factor = context.options.get("norm_scaling_factor")
    cfg = read_json(path / CONFIG_FILE)
    checked_fields(cfg, path / CONFIG_FILE)
    metadata = {**cfg, **(cfg.get("metadata") or {})}
    k = topk_of(cfg, path / CONFIG_FILE)
    hook_name = hook_name_of(cfg, path / CONFIG_FILE)
    if cfg.get("reshape_activations", "none") != "none" or (hook_name or "").endswith("hook_z"):
        raise UnsupportedArchitectureError(
            f"{path}: unsupported architecture: per-head (hook_z) SAEs reshape their input; hfsae reads flat activations."
        )
    normalization = normalization_of(cfg, path / CONFIG_FILE, norm_scaling_factor)

    weights_path = path / WEIGHTS_FILE
    tensors = {name: tensor.float() for name, tensor in read_safetensors(weights_path).items()}
    batchtopk = trained_as_batchtopk(cfg)
    require_tensors(tensors, ["W_enc", "b_enc", "W_dec", "b_dec"] + ["threshold"] * batchtopk, weights_path)
    W_enc = tensors["W_enc"].T.contiguous()  # [d_sae, d_in]: hfsae keeps one row per latent
    b_enc, W_dec, b_dec = tensors["b_enc"], tensors["W_dec"], tensors["b_dec"]
    shape = (int(cfg["d_sae"]), int(cfg["d_in"]))
    if tuple(W_enc.shape) != shape:
        raise SAEFolderError(
            f"{weights_path}: W_enc has shape {tuple(W_enc.T.shape)}, but cfg.json says d_in={shape[1]}, d_sae={shape[0]} "
            f"(expected {(shape[1], shape[0])})."
        )

    scaling = tensors.get("finetuning_scaling_factor", tensors.get("scaling_factor"))
    if scaling is not None:
        W_dec = W_dec * scaling[:, None]
    if cfg.get("rescale_acts_by_decoder_norm"):
        norms = W_dec.norm(dim=1)
        if (norms == 0).any():  # NaN rows are caught by the finite check of build.build
            raise SAEFolderError(
                f"{weights_path}: {int((norms == 0).sum())} decoder row(s) have zero norm (e.g. latent "
                f"{int((norms == 0).nonzero()[0])}), so rescale_acts_by_decoder_norm divides by zero; "
                "this SAE cannot be converted exactly."
            )
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    if not cfg.get("apply_b_dec_to_input", True):
        # TopKSAE always encodes x − b_pre; adding W_enc b_dec to b_enc cancels that subtraction.
        b_enc = b_enc + W_enc @ b_dec

    model_name = metadata.get("model_name")
    return Converted(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_pre=b_dec, fields={
        "k": k,
        "architecture": "batchtopk" if batchtopk else "topk",
        "hook_point": hook_point_from_transformer_lens(hook_name, model_name),
        "base_model": MODEL_NAMES.get(model_name, model_name),
        "context_size": metadata.get("context_size"),
        "dataset": metadata.get("dataset_path"),
        **normalization,
    }, extra={"threshold": shared_threshold(tensors["threshold"], weights_path)} if batchtopk else {})


def shared_threshold(threshold: torch.Tensor, path: Path) -> torch.Tensor:
    """The one threshold a BatchTopK export repeats per latent; differing ones are a JumpReLU SAE proper."""
    if threshold.numel() == 0 or not bool((threshold == threshold.reshape(-1)[0]).all()):
        raise UnsupportedArchitectureError(
            f"{path}: the per-latent thresholds differ (JumpReLU); hfsae runs BatchTopK exports, "
            "whose thresholds are one value."
        )
    return threshold.reshape(-1)[0]


def recognise(view: FolderView) -> list[str]:
    # The pair of names is SAELens's alone; `convert` checks the config's fields (checked_fields).
    return [""] if {CONFIG_FILE, WEIGHTS_FILE} <= view.names else []


def unsupported(view: FolderView, sae: str) -> str | None:
    try:
        topk_of(view.config(CONFIG_FILE) or {}, Path(view.sae_path(CONFIG_FILE)))
    except (UnsupportedArchitectureError, SAEFolderError) as err:
        return str(err).split(": ", 1)[-1]
    return None


def hook_point(view: FolderView, sae: str) -> str | None:
    cfg = view.config(CONFIG_FILE) or {}
    model_name = {**cfg, **(cfg.get("metadata") or {})}.get("model_name")
    return hook_point_from_transformer_lens(hook_name_of(cfg, Path(view.sae_path(CONFIG_FILE))), model_name)


FORMAT = Format(
    name="saelens",
    layout="SAELens: cfg.json + sae_weights.safetensors",
    recognise=recognise,
    fetch=lambda view, sae: [CONFIG_FILE, WEIGHTS_FILE],
    hook_point=hook_point,
    convert=convert,
    unsupported=unsupported,
)


def to_saelens(sae, path: str | os.PathLike) -> Path:
    """Write `sae` as a SAELens v6 TopK folder (cfg.json + sae_weights.safetensors) with the same outputs."""
    config = sae.config
    if config.architecture != "topk" or config.is_transcoder:
        variant = "a transcoder" if config.is_transcoder else f"architecture={config.architecture!r}"
        raise UnsupportedArchitectureError(
            f"Export to SAELens writes plain TopK SAEs only; this is {variant}, which would load there as another model."
        )
    # SAELens folds a constant input scale into the weights too (fold_activation_norm_scaling_factor).
    W_enc, W_dec, b_pre, b_enc = exported_weights(sae)
    normalize = "none" if config.normalize == "dataset_scale" else config.normalize
    if normalize not in ("none", "layer_norm"):
        raise UnsupportedArchitectureError(
            f"SAELens has no equivalent of normalize={normalize!r}; export works for none, layer_norm and dataset_scale."
        )
    cfg = {
        "architecture": "topk",
        "d_in": config.d_in,
        "d_sae": config.n_latents,
        "k": config.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": normalize,
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            "model_name": config.base_model,
            "hook_name": hook_point_to_transformer_lens(config.hook_point),
            "context_size": config.context_size,
            "dataset_path": config.dataset,
            "converted_from": "hfsae",
        },
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"W_enc": W_enc.T.contiguous(), "b_enc": b_enc.contiguous(), "W_dec": W_dec.contiguous(), "b_dec": b_pre}
    save_file(tensors, path / WEIGHTS_FILE)
    write_json_atomic(path / CONFIG_FILE, cfg)
    return path
