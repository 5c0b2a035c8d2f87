"""Qwen-Scope (the Qwen team's TopK SAEs for Qwen3 / Qwen3.5): one `layer{n}.sae.pt` per layer, no config.

Each file is a plain dict of four tensors (as the repos' model cards document them):
W_enc [n, d], W_dec [d, n], b_enc [n], b_dec [d]. The cards' extraction demo hooks the output of
decoder layer n (the residual stream after it) and computes, per token,

    z     = TopK_k(ReLU(W_enc x + b_enc))          # the input is not shifted by b_dec
    x_hat = W_dec z + b_dec

TopKSAE encodes x − b_pre, so b_enc + W_enc b_dec takes b_enc's place. k is not in the file: it is
an explicit `k=`, else the model card's "Top-K" row, else the repo name's `L0_<k>` suffix.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import HfsaeError
from ...folder import CARD_FILE, SAEFolderError
from ..files import positive_int, read_torch_state_dict, require_tensors
from . import Context, Converted, Format, FolderView

FILE = re.compile(r"layer(\d+)\.sae\.pt")
TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")
CARD_K = re.compile(r"Top-?K\W{0,20}?(\d+)", re.IGNORECASE)
REPO_K = re.compile(r"L0[_-](\d+)\b")


class MissingKError(HfsaeError, ValueError):
    """A Qwen-Scope SAE whose k is nowhere: not passed, not in its model card, not in its repo name."""


def k_of(path: Path, context: Context) -> int:
    """k: the caller's k=, else the model card's Top-K row, else the repo name (…-L0_50), else an error."""
    if context.options.get("k") is not None:
        return positive_int(context.options["k"], "k", path)
    card = path.parent / CARD_FILE
    match = CARD_K.search(card.read_text(encoding="utf-8", errors="replace")) if card.is_file() else None
    match = match or REPO_K.search(context.repo.rstrip("/").rsplit("/", 1)[-1])
    if match is None:
        raise MissingKError(
            f"{path}: a Qwen-Scope SAE keeps no k in its file, and neither a model card nor the repo name "
            f"({context.repo!r}) gives one; pass it, e.g. hfsae.load(..., k=50)."
        )
    return int(match.group(1))


def base_model_of(path: Path) -> str | None:
    """The base_model of the model card's metadata next to the file, if any."""
    from huggingface_hub import ModelCard

    card = path.parent / CARD_FILE
    if not card.is_file():
        return None
    value = ModelCard.load(card).data.to_dict().get("base_model")
    return value[0] if isinstance(value, list) and value else value if isinstance(value, str) else None


def convert(path: Path, context: Context) -> Converted:
    state = read_torch_state_dict(path)
    require_tensors(state, list(TENSORS), path)
    W_enc, W_dec, b_enc, b_dec = (state[name].float() for name in TENSORS)
    if W_dec.shape != W_enc.shape[::-1]:
        raise SAEFolderError(f"{path}: W_dec should be [d, n] = {tuple(W_enc.shape[::-1])} to match W_enc "
                           f"{tuple(W_enc.shape)}; got {tuple(W_dec.shape)}.")
    layer = FILE.fullmatch(path.name)
    return Converted(
        W_enc=W_enc, b_enc=b_enc + W_enc @ b_dec, W_dec=W_dec.T.contiguous(), b_pre=b_dec,
        fields={
            "k": k_of(path, context),
            "hook_point": f"layers.{layer.group(1)}.resid_post" if layer else None,
            "base_model": base_model_of(path),
        },
    )


def recognise(view: FolderView) -> list[str]:
    layers = {name: int(match.group(1)) for name in view.names if (match := FILE.fullmatch(name))}
    return sorted(layers, key=layers.get)


def fetch(view: FolderView, sae: str) -> list[str]:
    return [sae] + ([CARD_FILE] if CARD_FILE in view.names else [])


def hook_point(view: FolderView, sae: str) -> str | None:
    match = FILE.fullmatch(sae)
    return f"layers.{match.group(1)}.resid_post" if match else None


FORMAT = Format(
    name="qwen_scope",
    layout="Qwen-Scope: layer<n>.sae.pt dicts of W_enc, W_dec, b_enc, b_dec (k from k=, the card or the repo name)",
    recognise=recognise,
    fetch=fetch,
    hook_point=hook_point,
    convert=convert,
    tensor_keys=frozenset(TENSORS),
)
