"""Build an SAE of the caller's class from a converted foreign SAE (what every converter's output ends in)."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..folder import SAEFolderError
from .formats import Converted


def build(cls: type, converted: Converted, *, where: str | os.PathLike = "the converted SAE", **defaults: Any):
    """A float32 `cls` (TopKSAE or a subclass) in eval mode holding `converted`'s weights and config fields.

    `defaults` fill config fields the format leaves unset (e.g. base_model from the registry); `where`
    names the source in errors. Shapes must agree with W_enc [n_latents, d_in], and non-finite weights
    are refused: a conversion never yields NaNs.
    """
    tensors = {"W_enc": converted.W_enc, "W_dec": converted.W_dec, "b_pre": converted.b_pre, "b_enc": converted.b_enc,
               **converted.extra}
    n_latents, d_in = converted.W_enc.shape
    expected = {"W_dec": (n_latents, d_in), "b_pre": (d_in,), "b_enc": (n_latents,)}
    for name, shape in expected.items():
        if tensors[name] is not None and tuple(tensors[name].shape) != shape:
            raise SAEFolderError(
                f"{where}: {name} should have shape {shape} to match W_enc {tuple(converted.W_enc.shape)}; "
                f"got {tuple(tensors[name].shape)}."
            )
    for name, tensor in tensors.items():
        if tensor is not None and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise SAEFolderError(
                f"{where}: converting gives {bad} non-finite value(s) in {name} (NaN or inf), e.g. from "
                "decoder rows of zero norm or non-finite weights in the file; refusing to build a broken SAE."
            )
    fields = {**defaults, **{name: value for name, value in converted.fields.items() if value is not None}}
    config = cls.config_class(d_in=d_in, n_latents=n_latents, latent_bias=converted.b_enc is not None, **fields)
    sae = cls(config)
    for name, tensor in converted.extra.items():  # W_skip, threshold: shaped by the config the fields made
        own = getattr(sae, name, None)
        if own is None or own.shape != tensor.shape:
            wanted = "no such tensor" if own is None else f"shape {tuple(own.shape)}"
            raise SAEFolderError(f"{where}: {name} {tuple(tensor.shape)} does not fit this config ({wanted}).")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if tensor is not None:
                getattr(sae, name).copy_(tensor)
    return sae.eval()

