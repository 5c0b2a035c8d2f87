"""Load SAEs by friendly name, Hub repo id or local path, one or many, and list the known ones.

    hfsae.load("gpt2-small-v5-32k-resid-post-layer-8")                    # registry name
    hfsae.load("org/sae-smollm2", revision="3f2c…")                          # Hub repo, pinned
    TopKSAE.from_pretrained("org/multi-sae", hookpoint="layers.8.resid_post")
    load_many("org/multi-sae")                                             # {folder: TopKSAE}
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open

from ..modeling import TopKSAE
from . import openai, saelens, sparsify
from .files import SAEFileError
from .multi import INDEX_FILE, folder_for_hook_point, read_index
from .registry import RegistryEntry, UnknownSAEError, lookup, registry, unknown_name_error

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


class NotInCacheError(FileNotFoundError):
    """Offline mode is on and the requested files are not in the local Hugging Face cache."""


@dataclass(frozen=True)
class Source:
    """Where an SAE's files are: a local folder or a Hub repo, a subfolder, a revision and a format."""

    location: str  # local path or Hub repo id
    subfolder: str
    revision: str | None
    format: str
    local: bool

    def describe(self) -> str:
        where = f"{self.location}/{self.subfolder}" if self.subfolder else self.location
        return where if self.local or not self.revision else f"{where} at revision {self.revision}"


# ---- resolving a name to a Source --------------------------------------------------------------------


def is_repo_id(name: str) -> bool:
    return bool(REPO_ID.fullmatch(name)) and not name.startswith((".", "/")) and ".." not in name


def resolve(
    name_or_path: str | os.PathLike, *, hookpoint: str | None = None, subfolder: str = "", revision: str | None = None
) -> Source:
    """Decide where `name_or_path` points: a registry name, a local path, or a Hub repo id."""
    name = os.fspath(name_or_path)
    if name in registry():
        entry = lookup(name)
        return Source(entry.repo, entry.folder, revision or entry.revision, entry.format, local=False)
    path = Path(name).expanduser()
    if path.exists():
        return resolve_local(path, hookpoint=hookpoint, subfolder=subfolder)
    if is_repo_id(name):
        if hookpoint is not None and not subfolder:
            index = read_index(download(Source(name, "", revision, "hfsae", local=False), INDEX_FILE))
            subfolder = folder_for_hook_point(index, hookpoint, where=f"Hub repo {name}")
        return Source(name, subfolder, revision, "hfsae", local=False)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"No SAE at {name}: that path does not exist.")
    raise unknown_name_error(name)


def resolve_local(path: Path, *, hookpoint: str | None, subfolder: str) -> Source:
    """A local file or folder: an hfsae folder, a multi-SAE folder (needs hookpoint), or a foreign format."""
    from .convert import detect_format

    folder = path / subfolder if subfolder else path
    if hookpoint is not None and (folder / INDEX_FILE).is_file():
        folder = folder / folder_for_hook_point(read_index(folder / INDEX_FILE), hookpoint, where=str(folder))
    found = detect_format(folder)
    if found is None:
        if (folder / INDEX_FILE).is_file():
            names = ", ".join(entry["folder"] for entry in read_index(folder / INDEX_FILE)["saes"])
            raise SAEFileError(f"{folder} holds several SAEs ({names}); pick one with hookpoint= or load_many().")
        raise SAEFileError(
            f"{folder} holds no SAE hfsae can read: expected config.json + model.safetensors, "
            f"{INDEX_FILE}, a SAELens or sparsify folder, or an OpenAI .pt file."
        )
    if found == "hfsae":
        check_local_weights(folder)
    return Source(str(folder), "", None, found, local=True)


def check_local_weights(folder: Path) -> None:
    """Fail early, naming the file, when a safetensors file in `folder` is truncated or corrupt."""
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{folder} has a config.json but no model.safetensors; re-save or re-download it.")
    for path in weights:
        try:
            with safe_open(path, framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise SAEFileError(
                f"{path} is not a readable safetensors file ({err}). It may be truncated: re-save or re-download it."
            ) from err


# ---- downloading and loading ---------------------------------------------------------------------------


def download(source: Source, filename: str) -> Path:
    """One file of a Hub source, through the cache; errors name the repo, the file and the revision."""
    path_in_repo = f"{source.subfolder}/{filename}" if source.subfolder else filename
    try:
        return Path(hf_hub_download(source.location, path_in_repo, revision=source.revision))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if constants.HF_HUB_OFFLINE:
            raise not_in_cache(source, path_in_repo) from err
        raise FileNotFoundError(
            f"Could not reach the Hub to download {path_in_repo} from {source.describe()} and it is not cached: {err}"
        ) from err
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {source.location!r} does not exist (or you lack access to it).") from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {source.location!r} has no revision {source.revision!r}.") from err
    except EntryNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {source.location!r} has no file {path_in_repo} (revision {source.revision or 'main'}).") from err


def not_in_cache(source: Source, what: str) -> NotInCacheError:
    return NotInCacheError(
        f"{what} of {source.describe()} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}), and "
        "HF_HUB_OFFLINE=1 forbids downloading it. Load it once with network access, or unset HF_HUB_OFFLINE."
    )


def load_foreign(source: Source) -> TopKSAE:
    """Convert an SAE stored in a foreign format (downloading its files first when remote)."""
    if source.local:
        from .convert import load_local

        return load_local(source.location, source.format)
    files = {"saelens": [saelens.CONFIG_FILE, saelens.WEIGHTS_FILE], "sparsify": [sparsify.CONFIG_FILE, sparsify.WEIGHTS_FILE]}
    if source.format == "openai":
        return openai.from_openai(download(Source(source.location, "", source.revision, "openai", False), source.subfolder))
    if source.format not in files:
        raise ValueError(f"Unknown format {source.format!r} for {source.describe()}.")
    folder = [download(source, name) for name in files[source.format]][0].parent
    return saelens.from_saelens(folder) if source.format == "saelens" else sparsify.from_sparsify(folder)


def from_pretrained(
    base_from_pretrained: Callable[..., TopKSAE],
    name_or_path: str | os.PathLike,
    *args: Any,
    hookpoint: str | None = None,
    subfolder: str = "",
    revision: str | None = None,
    **kwargs: Any,
) -> TopKSAE:
    """TopKSAE.from_pretrained's logic: resolve the name, then convert or call transformers' loader."""
    source = resolve(name_or_path, hookpoint=hookpoint, subfolder=subfolder, revision=revision)
    if source.format != "hfsae":
        return load_foreign(source)
    try:
        return base_from_pretrained(source.location, *args, subfolder=source.subfolder, revision=source.revision, **kwargs)
    except OSError as err:
        if not source.local and constants.HF_HUB_OFFLINE and not isinstance(err, FileNotFoundError):
            raise not_in_cache(source, "The SAE") from err
        raise


def load(
    name_or_path: str | os.PathLike, *, revision: str | None = None, device: str = "cpu", hookpoint: str | None = None
) -> TopKSAE:
    """Load an SAE by friendly name, Hub repo id or local folder (or file, for foreign formats).

    Example:
        >>> sae = hfsae.load("gpt2-small-v5-32k-resid-post-layer-8")
    """
    return TopKSAE.from_pretrained(name_or_path, revision=revision, hookpoint=hookpoint).to(device).eval()


def load_many(repo_or_path: str | os.PathLike, *, revision: str | None = None, device: str = "cpu") -> dict[str, TopKSAE]:
    """Every SAE of a multi-SAE repo or folder (listed in its index.json), by folder name.

    Example:
        >>> saes = load_many("org/smollm2-saes")      # {"layers.8.resid_post": TopKSAE, ...}
    """
    name = os.fspath(repo_or_path)
    local = Path(name).expanduser()
    if local.exists():
        index = read_index(local / INDEX_FILE)
    else:
        if not is_repo_id(name):
            raise UnknownSAEError(f"{name!r} is neither a local folder nor a Hub repo id ('org/name').")
        index = read_index(download(Source(name, "", revision, "hfsae", local=False), INDEX_FILE))
    return {
        entry["folder"]: TopKSAE.from_pretrained(name, subfolder=entry["folder"], revision=revision).to(device).eval()
        for entry in index["saes"]
    }


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


def list_saes(*, online: bool | None = None) -> list[Listing]:
    """The registry, plus Hub models tagged library_name hfsae when online (never when HF_HUB_OFFLINE=1)."""
    listings = [listing_for(entry) for entry in registry().values()]
    if online is None:
        online = not constants.HF_HUB_OFFLINE
    if online:
        try:
            # The Hub indexes a card's library_name among the tags that `filter` matches.
            models = list(HfApi().list_models(filter="hfsae", limit=1000))
        except Exception as err:  # a listing convenience: any network failure falls back to the registry
            warnings.warn(f"Could not list hfsae models on the Hub ({err}); showing the registry only.", stacklevel=2)
            models = []
        listings += [Listing(model.id, model.id, "", "hfsae", "hub") for model in models]
    return listings


def listing_for(entry: RegistryEntry) -> Listing:
    return Listing(entry.name, entry.repo, entry.folder, entry.format, "registry", entry.hook_point, entry.base_model)
