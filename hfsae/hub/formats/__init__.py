"""The SAE formats hfsae reads: one record per format, one module each, listed in FORMATS.

A format says how one of its SAEs is recognised in a folder (by file names *and* content: config
keys, or tensor keys for a lone .pt file), which files loading it needs, which hfsae hook point its
folder stands for, and how its files become a TopKSAE: `convert` returns config fields and tensors
(`Converted`); the caller's class builds the model, so a subclass loads as itself.

Adding a format is one module defining `FORMAT = Format(...)` plus one line in FORMATS below
("Adding a format" in docs/architecture.md walks through it). Order matters only where two formats
could claim the same files: the first whose `recognise` claims a file wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...folder import SAEFolderError


@dataclass(frozen=True)
class Converted:
    """A foreign SAE in hfsae's terms: W_enc [n, d], b_enc [n] or None, W_dec [n, d], b_pre [d], and config fields.

    `fields` go to the model's config class (k, hook_point, base_model, normalize, dataset_scale, ...);
    `extra` holds the tensors of a variant the fields select, by TopKSAE attribute (W_skip, threshold).
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor | None
    W_dec: torch.Tensor
    b_pre: torch.Tensor
    fields: dict[str, Any]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """What a converter may need besides the SAE's own files: the repo it came from and the caller's options."""

    repo: str  # Hub repo id or local folder
    sae: str  # the SAE's folder or file in the repo ("" for the root)
    options: dict[str, Any] = field(default_factory=dict)  # format options the caller passed, e.g. k=


@dataclass
class FolderView:
    """One folder of a repo as a format sees it while recognising: its files, and its small JSON files on demand.

    `files` are paths relative to the folder at any depth ('cfg.json', 'checkpoints/final.safetensors');
    `read_json(name)` downloads (Hub) or reads (local) one of them and returns the parsed object.
    """

    path: str  # the folder's path in the repo; "" for the root
    files: set[str]
    read_json: Callable[[str], Any]

    @property
    def names(self) -> set[str]:
        """The files directly in this folder."""
        return {name for name in self.files if "/" not in name}

    def config(self, name: str) -> dict[str, Any] | None:
        """The JSON object in file `name` of this folder, or None when the file is absent or not an object."""
        if name not in self.files:
            return None
        try:
            value = self.read_json(name)
        except SAEFolderError:  # not JSON, or not an object: no format's config; the error for the folder says so
            return None
        return value if isinstance(value, dict) else None

    def sae_path(self, sae: str) -> str:
        """The repo path of one SAE of this folder ("" is the folder itself, else one of its files)."""
        return "/".join(part for part in (self.path, sae) if part)


@dataclass(frozen=True)
class Format:
    """How hfsae finds, fetches, places and converts the SAEs of one format."""

    name: str
    layout: str  # what one SAE of it is made of, for messages: "cfg.json + sae.safetensors (EleutherAI sparsify)"
    recognise: Callable[[FolderView], list[str]]  # its SAEs in the folder: "" for the folder itself, or file names
    fetch: Callable[[FolderView, str], list[str]]  # the files one SAE needs, relative to its folder
    hook_point: Callable[[FolderView, str], str | None]  # hfsae's name for where its activations come from
    # → fields and tensors; None for hfsae's own folders, which transformers loads.
    convert: Callable[[Path, Context], Converted] | None
    # Why an SAE it recognises is not a TopK SAE hfsae can run ("JumpReLU (...)"), read from config only; None if it is.
    unsupported: Callable[[FolderView, str], str | None] = lambda view, sae: None
    tensor_keys: frozenset[str] = frozenset()  # a lone .pt file of this format holds (at least) these tensors


def pt_files(view: FolderView, exclude: tuple[str, ...] = ()) -> list[str]:
    """The .pt files directly in the folder, except the names in `exclude`."""
    return sorted(name for name in view.names if name.endswith(".pt") and name not in exclude)



def exported_weights(sae) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W_enc, W_dec, b_pre, b_enc) of `sae` in float32 as other libraries store them (b_enc zeros when absent).

    A constant input scale s (normalize="dataset_scale") is folded into the weights, as SAELens' and sparsify's
    SAEs take raw activations: W_enc (s x − b) = (s W_enc)(x − b / s), and the output is divided by s.
    """
    config = sae.config
    W_enc, W_dec, b_pre = sae.W_enc.detach().float(), sae.W_dec.detach().float(), sae.b_pre.detach().float()
    b_enc = sae.b_enc.detach().float() if sae.b_enc is not None else torch.zeros(config.n_latents)
    if config.normalize == "dataset_scale":
        scale = config.dataset_scale
        W_enc, W_dec, b_pre = W_enc * scale, W_dec / scale, b_pre / scale
    return W_enc, W_dec, b_pre, b_enc

def register() -> tuple[Format, ...]:
    """Every format, in the order recognition tries them."""
    from . import dictionary_learning, llama_scope, native, openai, qwen_scope, saelens, sparsify

    return (
        native.FORMAT,
        saelens.FORMAT,
        sparsify.FORMAT,
        dictionary_learning.FORMAT,
        llama_scope.FORMAT,
        qwen_scope.FORMAT,
        openai.FORMAT,
    )


FORMATS: tuple[Format, ...] = register()
BY_NAME: dict[str, Format] = {fmt.name: fmt for fmt in FORMATS}


def layouts() -> str:
    """Every format's layout, for messages that list what hfsae reads."""
    return "; ".join(fmt.layout for fmt in FORMATS)


def for_tensor_keys(keys: set[str]) -> Format | None:
    """The .pt format whose tensors `keys` holds (OpenAI's and Qwen-Scope's .pt dicts differ by key)."""
    return next((fmt for fmt in FORMATS if fmt.tensor_keys and fmt.tensor_keys <= keys), None)
