"""Build the SAE from weight tensors already in hfsae's layout (what every converter ends with)."""

from __future__ import annotations

import os
from typing import Any

import torch

from .files import SAEFileError
from .model_class import sae_class


def sae_from_tensors(
    *,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    W_dec: torch.Tensor,
    b_pre: torch.Tensor,
    k: int,
    where: str | os.PathLike = "the converted SAE",
    **config_fields: Any,
):
    """A float32 TopKSAE with W_enc [n_latents, d_in], b_enc [n_latents], W_dec [n_latents, d_in], b_pre [d_in].

    `where` names the source in errors; `config_fields` go to TopKSAEConfig (normalize, dataset_scale,
    hook_point, base_model, ...). Non-finite weights are refused: a conversion never yields NaNs.
    """
    n_latents, d_in = W_enc.shape
    tensors = {"W_enc": W_enc, "W_dec": W_dec, "b_pre": b_pre, "b_enc": b_enc}
    expected = {"W_dec": (n_latents, d_in), "b_pre": (d_in,), "b_enc": (n_latents,)}
    for name, shape in expected.items():
        if tensors[name] is not None and tuple(tensors[name].shape) != shape:
            raise SAEFileError(
                f"{where}: {name} should have shape {shape} to match W_enc {tuple(W_enc.shape)}; "
                f"got {tuple(tensors[name].shape)}."
            )
    for name, tensor in tensors.items():
        if tensor is not None and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise SAEFileError(
                f"{where}: converting gives {bad} non-finite value(s) in {name} (NaN or inf), e.g. from "
                "decoder rows of zero norm or non-finite weights in the file; refusing to build a broken SAE."
            )
    cls = sae_class()
    config = cls.config_class(d_in=d_in, n_latents=n_latents, k=k, latent_bias=b_enc is not None, **config_fields)
    sae = cls(config)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_pre.copy_(b_pre)
        if b_enc is not None:
            sae.b_enc.copy_(b_enc)
    return sae.eval()


def positive_int(value: Any, name: str, where: str | os.PathLike) -> int:
    """`value` when it is a whole number ≥ 1 (an int, or a float like 32.0), else SAEFileError naming the field."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())  # dictionary_learning keeps k as a buffer
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SAEFileError(f"{where}: {name} must be a whole number ≥ 1; got {value!r}.")
    return value
