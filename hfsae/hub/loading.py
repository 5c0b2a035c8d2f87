"""Load SAEs by friendly name, Hub repo id or local path, in any supported format, one or many; list them.

    hfsae.load("gpt2-small-v5-32k-resid-post-layer-8")                    # registry name
    hfsae.load("EleutherAI/sae-pythia-70m-32k", hookpoint="layers.3")      # a folder of a sparsify repo
    hfsae.load("Qwen/SAE-Res-Qwen3-8B-Base-W64K-L0_50", hookpoint="layers.12", cache_dir="hf-cache")
    TopKSAE.from_pretrained("org/multi-sae", hookpoint="layers.8.resid_post", dtype=torch.bfloat16)
    hfsae.load_many("org/multi-sae")                                       # {folder: TopKSAE}, natural order

These are TopKSAE.from_pretrained with a device; hub/source.py finds, fetches and converts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from huggingface_hub import HfApi, constants

from ..modeling import TopKSAE
from .registry import RegistryEntry, registry
from .source import load_all


def load(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype: Any = None,
    hookpoint: str | None = None,
    subfolder: str = "",
    **options: Any,
) -> TopKSAE:
    """Load an SAE by friendly name, Hub repo id or local folder/file, in eval mode on `device`.

    `options`: transformers' download options (cache_dir, force_download, local_files_only, proxies,
    token) and format options (k= for Qwen-Scope files, norm_scaling_factor= for SAELens).

    Example:
        >>> sae = hfsae.load("gpt2-small-v5-32k-resid-post-layer-8")
        >>> sae = hfsae.load("EleutherAI/sae-pythia-70m-32k", hookpoint="layers.3", dtype=torch.bfloat16)
    """
    if dtype is not None:
        options["dtype"] = dtype
    sae = TopKSAE.from_pretrained(name_or_path, revision=revision, hookpoint=hookpoint, subfolder=subfolder, **options)
    return sae.to(device).eval()


def load_many(
    repo_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype: Any = None,
    strict: bool = False,
    **options: Any,
) -> dict[str, TopKSAE]:
    """Every TopK SAE of a repo or folder, by folder name in natural order (layers.2 before layers.10).

    Folders of other architectures are left out and named in a SkippedSAEsWarning; `strict=True`
    refuses such a repo instead. `options` as for `load`.

    Example:
        >>> saes = load_many("EleutherAI/sae-pythia-70m-32k")      # {"layers.0": TopKSAE, ...}
    """
    if dtype is not None:
        options["dtype"] = dtype
    saes = load_all(TopKSAE, repo_or_path, strict=strict, revision=revision, **options)
    return {name: sae.to(device).eval() for name, sae in saes.items()}


# ---- listing -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One SAE `hfsae list` shows: a registry entry, or a Hub model with library_name hfsae."""

    name: str
    repo: str
    folder: str
    format: str
    source: str  # "registry" | "hub"
    hook_point: str | None = None
    base_model: str | None = None


def list_saes(*, remote: bool = False, base_model: str | None = None) -> list[Listing]:
    """The registry, plus (remote=True) the Hub models whose card says library_name: hfsae.

    `base_model` keeps the SAEs of that model only (a Hub id like 'EleutherAI/pythia-70m', or its name).
    """
    listings = [listing_for(entry) for entry in registry().values()]
    if remote:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE=1 is set, so the Hub cannot be listed; unset it or drop --remote.")
        # The Hub matches a card's library_name among the tags that `filter` selects.
        models = HfApi().list_models(filter="hfsae", limit=1000, full=True)
        listings += [
            Listing(model.id, model.id, "", "hfsae", "hub", base_model=hub_base_model(model)) for model in models
        ]
    if base_model:
        wanted = base_model.lower()
        listings = [
            item for item in listings
            if item.base_model and wanted in (item.base_model.lower(), item.base_model.lower().rsplit("/", 1)[-1])
        ]
    return listings


def hub_base_model(model: Any) -> str | None:
    """The base_model a Hub listing carries in its card data (a string or a list of them), if any."""
    card = getattr(model, "card_data", None)
    value = card.get("base_model") if card is not None else None
    return value[0] if isinstance(value, list) and value else value if isinstance(value, str) else None


def listing_for(entry: RegistryEntry) -> Listing:
    return Listing(entry.name, entry.repo, entry.folder, entry.format, "registry", entry.hook_point, entry.base_model)

