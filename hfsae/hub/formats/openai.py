"""OpenAI's released TopK SAE state dicts (.pt, v5 GPT-2 small, docs/method.md §7) as TopKSAEs.

OpenAI's `Autoencoder` (openai/sparse_autoencoder, model.py) computes, per token,

    x_n    = (x − mean(x)) / (std(x) + 1e-5)                      # layer norm, only for TopK SAEs
    z      = ReLU(TopK_k(encoder.weight (x_n − pre_bias) + latent_bias))
    x_hat  = (decoder.weight z + pre_bias) · std(x) + mean(x)

which is TopKSAE with normalize="layer_norm", W_enc = encoder.weight, b_enc = latent_bias,
W_dec = decoder.weightᵀ (rows are latents) and b_pre = pre_bias.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...folder import SAEFolderError
from ..files import UnsupportedArchitectureError, positive_int, read_torch_state_dict, require_tensors
from . import Context, Converted, Format, pt_files

# OpenAI's location names for GPT-2 small (the v5 release) → hfsae hook-point sites.
LOCATION_SITES = {
    "resid_delta_attn": "attn_out",
    "resid_delta_mlp": "mlp_out",
    "resid_post_attn": "resid_mid",
    "resid_post_mlp": "resid_post",
}
GPT2_SMALL = "openai-community/gpt2"


def hook_point_from_filename(path: str | os.PathLike) -> str | None:
    """'…/resid_post_mlp/8.pt' or 'v5_32k_layer_8.pt' → 'layers.8.resid_post' where the path says enough."""
    path = Path(path)
    layer = re.search(r"(\d+)$", path.stem)
    site = next((LOCATION_SITES[part] for part in path.parts if part in LOCATION_SITES), None)
    if layer is None or site is None:
        return None
    return f"layers.{layer.group(1)}.{site}"


def convert(path: Path, context: Context) -> Converted:
    """One OpenAI `.pt` TopK SAE (weights only, never pickled code) → the same SAE in hfsae's terms."""
    state = read_torch_state_dict(path)
    require_tensors(state, ["encoder.weight", "decoder.weight", "pre_bias"], path)
    activation = state.get("activation", "ReLU")
    if activation != "TopK":
        raise UnsupportedArchitectureError(
            f"{path}: unsupported architecture {activation!r}: hfsae converts OpenAI TopK SAEs only "
            "(state dict entry activation='TopK')."
        )
    activation_state = state.get("activation_state_dict")
    if not isinstance(activation_state, dict):
        raise SAEFolderError(
            f"{path}: activation_state_dict should be a dict like {{'k': 32, 'postact_fn': 'ReLU'}}; "
            f"got {activation_state!r:.80}."
        )
    postact = activation_state.get("postact_fn", "ReLU")
    if postact != "ReLU":
        raise UnsupportedArchitectureError(
            f"{path}: unsupported architecture TopK with postact_fn={postact!r}; hfsae applies ReLU after TopK."
        )
    if "k" not in activation_state:
        raise SAEFolderError(f"{path} lacks activation_state_dict['k'], the number of latents kept per token.")

    W_enc = state["encoder.weight"].float()
    guessed_hook_point = hook_point_from_filename(path)
    return Converted(
        W_enc=W_enc,
        b_enc=state["latent_bias"].float() if "latent_bias" in state else None,
        W_dec=state["decoder.weight"].float().T.contiguous(),
        b_pre=state["pre_bias"].float(),
        fields={
            "k": positive_int(activation_state["k"], "activation_state_dict['k']", path),
            # OpenAI enables layer norm exactly for TopK SAEs (Autoencoder.from_state_dict).
            "normalize": "layer_norm",
            "hook_point": guessed_hook_point,
            "base_model": GPT2_SMALL if W_enc.shape[1] == 768 and guessed_hook_point else None,
        },
    )


FORMAT = Format(
    name="openai",
    layout="OpenAI: a .pt state dict with encoder.weight, decoder.weight, pre_bias",
    # Any other .pt file is a candidate; its tensor keys decide once it is read (see tensor_keys).
    recognise=lambda view: pt_files(view, exclude=("ae.pt",)),
    fetch=lambda view, sae: [sae],
    hook_point=lambda view, sae: hook_point_from_filename(view.sae_path(sae)),
    convert=convert,
    tensor_keys=frozenset({"encoder.weight", "decoder.weight", "pre_bias"}),
)
