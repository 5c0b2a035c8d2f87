"""Build a TopKSAE from weight tensors already in hfsae's layout (what every converter ends with)."""

from __future__ import annotations

from typing import Any

import torch

from ..configuration import TopKSAEConfig
from ..modeling import TopKSAE


def sae_from_tensors(
    *,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    W_dec: torch.Tensor,
    b_pre: torch.Tensor,
    k: int,
    **config_fields: Any,
) -> TopKSAE:
    """A float32 TopKSAE with W_enc [n_latents, d_in], b_enc [n_latents], W_dec [n_latents, d_in], b_pre [d_in].

    `config_fields` go to TopKSAEConfig (normalize, dataset_scale, hook_point, base_model, ...).
    """
    n_latents, d_in = W_enc.shape
    expected = {"W_dec": (n_latents, d_in), "b_pre": (d_in,)}
    if b_enc is not None:
        expected["b_enc"] = (n_latents,)
    tensors = {"W_dec": W_dec, "b_pre": b_pre, "b_enc": b_enc}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{name} should have shape {shape} to match W_enc {tuple(W_enc.shape)}; got {tuple(tensors[name].shape)}."
            )
    config = TopKSAEConfig(d_in=d_in, n_latents=n_latents, k=k, latent_bias=b_enc is not None, **config_fields)
    sae = TopKSAE(config)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_pre.copy_(b_pre)
        if b_enc is not None:
            sae.b_enc.copy_(b_enc)
    return sae.eval()
