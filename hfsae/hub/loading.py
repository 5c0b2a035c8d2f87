"""Load SAEs by friendly name, Hub repo id or local path, in any supported format, one or many.

    hfsae.load("gpt2-small-v5-32k-resid-post-layer-8")                    # registry name
    hfsae.load("EleutherAI/sae-pythia-70m-32k", hookpoint="layers.3")      # a folder of a sparsify repo
    TopKSAE.from_pretrained("org/multi-sae", hookpoint="layers.8.resid_post", dtype=torch.bfloat16)
    hfsae.load_many("org/multi-sae")                                       # {folder: TopKSAE}, natural order

One path for all of them: list the repo's (or folder's) files, find the folders holding one SAE and
their format (`FORMATS`), pick one by folder name or hook point, download only that folder's files
and convert them. Weights are read through safetensors or `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from safetensors import SafetensorError
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import HfsaeError
from ..folder import (
    CONFIG_FILE,
    INDEX_FILE,
    SHARDED_WEIGHTS_INDEX,
    WEIGHTS_FILE,
    check_folder_name,
    folder_for_hook_point,
    natural_key,
    read_index,
    read_json,
)
from . import dictionary_learning, openai, saelens, sparsify
from .files import SAEFileError
from .model_class import sae_class
from .registry import RegistryEntry, UnknownSAEError, lookup, registry, unknown_name_error

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")

# The files that mark a folder as one SAE of each format (a .pt file alone is an OpenAI SAE).
FORMATS = {
    "dictionary_learning": (dictionary_learning.CONFIG_FILE, dictionary_learning.WEIGHTS_FILE),
    "hfsae": (CONFIG_FILE, WEIGHTS_FILE),
    "saelens": (saelens.CONFIG_FILE, saelens.WEIGHTS_FILE),
    "sparsify": (sparsify.CONFIG_FILE, sparsify.WEIGHTS_FILE),
}
CONVERTERS: dict[str, Callable[[Path], Any]] = {
    "dictionary_learning": dictionary_learning.from_dictionary_learning,
    "openai": openai.from_openai,
    "saelens": saelens.from_saelens,
    "sparsify": sparsify.from_sparsify,
}
EXPECTED = (
    "config.json + model.safetensors (hfsae), cfg.json + sae_weights.safetensors (SAELens), "
    "cfg.json + sae.safetensors (sparsify), config.json + ae.pt (dictionary_learning) or an OpenAI .pt file"
)


class NotInCacheError(HfsaeError, FileNotFoundError):
    """Offline mode is on and the requested files are not in the local Hugging Face cache."""


@dataclass(frozen=True)
class Source:
    """One SAE's files: a local folder or Hub repo (location), its folder or .pt file there, a revision, a format."""

    location: str  # local root folder or Hub repo id
    subfolder: str  # the SAE's folder (or .pt file) inside it; "" for the root
    revision: str | None
    format: str
    local: bool

    def describe(self) -> str:
        where = f"{self.location}/{self.subfolder}" if self.subfolder else self.location
        return where if self.local or not self.revision else f"{where} at revision {self.revision}"


# ---- a repo or folder and the SAEs in it -------------------------------------------------------------


@dataclass
class SAERepo:
    """A local folder or a Hub repo at a revision, with the list of its files ('/'-separated paths)."""

    location: str
    revision: str | None
    local: bool
    files: list[str]
    token: str | bool | None = None

    @classmethod
    def open(cls, location: str, *, revision: str | None = None, token: str | bool | None = None) -> "SAERepo":
        if Path(location).expanduser().is_dir():
            root = Path(location).expanduser()
            files = [
                path.relative_to(root).as_posix()
                for path in root.rglob("*")
                if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
            ]
            return cls(str(root), None, True, files)
        return cls(location, revision, False, list_hub_files(location, revision, token), token)

    def describe(self, subfolder: str = "") -> str:
        return Source(self.location, subfolder, self.revision, "", self.local).describe()

    def fetch(self, paths: list[str]) -> Path:
        """The local folder holding `paths` (downloaded through the cache for a Hub repo): its root."""
        if self.local:
            return Path(self.location)
        root = None
        for path in paths:
            downloaded = download(Source(self.location, "", self.revision, "", False), path, token=self.token)
            root = Path(str(downloaded)[: -len(path)])
        return root

    def json(self, path: str) -> dict[str, Any]:
        return read_json(self.fetch([path]) / path)

    def index(self) -> dict[str, Any] | None:
        return read_index(self.fetch([INDEX_FILE]) / INDEX_FILE) if INDEX_FILE in self.files else None


def list_hub_files(repo_id: str, revision: str | None, token: str | bool | None) -> list[str]:
    """The files of a Hub repo at `revision`; offline, those of its cached snapshot."""
    described = Source(repo_id, "", revision, "", False).describe()
    if constants.HF_HUB_OFFLINE:
        try:
            snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError) as err:
            raise not_in_cache(described, "The file list") from err
        return [path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file()]
    try:
        return HfApi(token=token).list_repo_files(repo_id, revision=revision)
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {repo_id!r} does not exist (or you lack access to it).") from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {repo_id!r} has no revision {revision!r}.") from err
    except (OSError, HFValidationError) as err:  # requests' connection errors are OSErrors
        raise FileNotFoundError(f"Could not list the files of {described} on the Hub: {err}") from err


def folder_format(names: set[str]) -> str | None:
    """The format of the SAE whose folder directly holds the files `names`, or None."""
    for name, marks in FORMATS.items():
        if all(mark in names for mark in marks):
            return name
    if CONFIG_FILE in names and SHARDED_WEIGHTS_INDEX in names:
        return "hfsae"
    return None


def sae_folders(repo: SAERepo) -> dict[str, str]:
    """{folder or .pt path: format} of every SAE in the repo, in natural order ('' is an SAE at the root).

    A repo with index.json lists its SAEs there (checked by hfsae.folder.read_index). Otherwise each
    folder whose files mark a format is one SAE; folders inside an SAE's folder (its checkpoints) are not.
    """
    by_folder: dict[str, set[str]] = {}
    for path in repo.files:
        parent, _, name = path.rpartition("/")
        by_folder.setdefault(parent, set()).add(name)
    index = repo.index()
    if index is not None:
        found = {}
        for entry in index["saes"]:
            found[entry["folder"]] = folder_format(by_folder.get(entry["folder"], set())) or "hfsae"
        return found
    found = {}
    for folder in sorted(by_folder, key=lambda name: (name.count("/"), natural_key(name))):
        if any(folder == other or folder.startswith(f"{other}/") for other in found if other) or "" in found:
            continue  # inside an SAE's folder
        fmt = folder_format(by_folder[folder])
        if fmt:
            found[folder] = fmt
        elif not folder.startswith(".") and "checkpoints" not in folder.split("/"):
            for name in by_folder[folder]:
                if name.endswith(".pt") and name != dictionary_learning.WEIGHTS_FILE:
                    found[f"{folder}/{name}" if folder else name] = "openai"
    return dict(sorted(found.items(), key=lambda item: natural_key(item[0])))


def incomplete_folders(repo: SAERepo, found: dict[str, str], subfolder: str = "") -> dict[str, str]:
    """{folder: message} of folders with an SAE config but without its weights, outside the SAEs `found`."""
    # dictionary_learning's config.json is also hfsae's: a lone config.json is taken as an hfsae SAE missing its weights.
    weights_of = {CONFIG_FILE: WEIGHTS_FILE, saelens.CONFIG_FILE: f"{saelens.WEIGHTS_FILE} or {sparsify.WEIGHTS_FILE}"}
    prefix = f"{subfolder}/" if subfolder else ""
    incomplete = {}
    for path in sorted(repo.files, key=natural_key):
        folder, _, name = path.rpartition("/")
        inside_an_sae = any(folder == sae or folder.startswith(f"{sae}/") or sae == "" for sae in found)
        if name in weights_of and path.startswith(prefix) and not inside_an_sae and "checkpoints" not in folder.split("/"):
            incomplete[folder] = f"{repo.describe(folder)} has a {name} but no {weights_of[name]}"
    return incomplete


def nothing_found(repo: SAERepo, subfolder: str = "") -> OSError | SAEFileError:
    """The error for a repo or folder without any complete SAE: the missing weights by name where a config is there."""
    incomplete = incomplete_folders(repo, {}, subfolder)
    if incomplete:
        return FileNotFoundError(f"{next(iter(incomplete.values()))}: the SAE's weights are missing. "
                                 "Re-save or re-download the folder.")
    return SAEFileError(f"{repo.describe(subfolder)} holds no SAE hfsae can read: expected {EXPECTED}.")


def hook_point_of(repo: SAERepo, folder: str, fmt: str, index: dict[str, Any] | None) -> str | None:
    """The hook point of one SAE of the repo, from its folder name or its (small) config file."""
    prefix = f"{folder}/" if folder else ""
    if fmt == "hfsae":
        if index is not None:
            return next((entry.get("hook_point") for entry in index["saes"] if entry["folder"] == folder), None)
        return repo.json(prefix + CONFIG_FILE).get("hook_point")
    if fmt == "sparsify":
        return sparsify.hook_point_from_folder(folder)
    if fmt == "openai":
        return openai.hook_point_from_filename(folder)
    if fmt == "saelens":
        path = prefix + saelens.CONFIG_FILE
        return saelens.hook_point_from_transformer_lens(saelens.hook_name_of(repo.json(path), Path(path)))
    path = prefix + dictionary_learning.CONFIG_FILE
    return dictionary_learning.hook_point_of(dictionary_learning.trainer_config(repo.json(path), Path(path)))


def pick(repo: SAERepo, *, hookpoint: str | None, subfolder: str) -> tuple[str, str]:
    """(folder, format) of the one SAE that `subfolder` / `hookpoint` name, or an error listing the choices."""
    found = sae_folders(repo)
    if subfolder:
        check_folder_name(subfolder, where=f"subfolder of {repo.describe()}")
        found = {name: fmt for name, fmt in found.items() if name == subfolder or name.startswith(f"{subfolder}/")}
    where = repo.describe(subfolder)
    if not found:
        raise nothing_found(repo, subfolder)
    if hookpoint is None:
        if subfolder in found:
            return subfolder, found[subfolder]
        if len(found) == 1:
            return next(iter(found.items()))
        raise SAEFileError(
            f"{where} holds several SAEs ({', '.join(found)}); pick one with hookpoint= (a folder name or a hook "
            "point) or load them all with hfsae.load_many()."
        )
    if hookpoint in found:
        return hookpoint, found[hookpoint]
    wanted = saelens.hook_point_from_transformer_lens(sparsify.hook_point_from_folder(hookpoint))
    index = repo.index()
    entries = [{"folder": name, "hook_point": hook_point_of(repo, name, fmt, index)} for name, fmt in found.items()]
    folder = folder_for_hook_point({"saes": entries}, wanted, where=where)
    return folder, found[folder]


# ---- resolving a name --------------------------------------------------------------------------------


def is_repo_id(name: str) -> bool:
    return bool(REPO_ID.fullmatch(name)) and not name.startswith((".", "/")) and ".." not in name


def locate(
    name: str, *, hookpoint: str | None, subfolder: str, revision: str | None, token: str | bool | None
) -> tuple[SAERepo, str, str]:
    """(repo, folder, format) of the SAE that `name` (+ hookpoint / subfolder) names."""
    if name in registry():
        entry = lookup(name)
        repo = SAERepo.open(entry.repo, revision=revision or entry.revision, token=token)
        return repo, entry.folder, entry.format
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".pt":
            raise SAEFileError(f"{path} is a file but not an OpenAI .pt SAE; hfsae reads {EXPECTED}.")
        return SAERepo(str(path.parent), None, True, [path.name]), path.name, "openai"
    if not path.exists() and not is_repo_id(name):
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise FileNotFoundError(f"No SAE at {name}: that path does not exist.")
        raise unknown_name_error(name)
    repo = SAERepo.open(name, revision=revision, token=token)
    return (repo, *pick(repo, hookpoint=hookpoint, subfolder=subfolder))


def resolve(
    name_or_path: str | os.PathLike,
    *,
    hookpoint: str | None = None,
    subfolder: str = "",
    revision: str | None = None,
    token: str | bool | None = None,
) -> Source:
    """Where the SAE that `name_or_path` (+ hookpoint / subfolder) names is: a registry name, a path or a repo id."""
    repo, folder, fmt = locate(os.fspath(name_or_path), hookpoint=hookpoint, subfolder=subfolder, revision=revision,
                               token=token)
    return Source(repo.location, folder, repo.revision, fmt, repo.local)


def files_of(repo: SAERepo, folder: str, fmt: str) -> list[str]:
    """The files of one SAE to download: its weights and config only (no card, no analysis, no checkpoints)."""
    if fmt == "openai":
        return [folder]
    prefix = f"{folder}/" if folder else ""
    if fmt == "hfsae":
        names = {CONFIG_FILE, WEIGHTS_FILE, SHARDED_WEIGHTS_INDEX}
        shards = re.compile(r"model-\d+-of-\d+\.safetensors")
        return [
            path for path in repo.files
            if path.startswith(prefix) and "/" not in path[len(prefix):]
            and (path[len(prefix):] in names or shards.fullmatch(path[len(prefix):]))
        ]
    return [prefix + name for name in FORMATS[fmt]]


# ---- loading -----------------------------------------------------------------------------------------


def download(source: Source, filename: str, *, token: str | bool | None = None) -> Path:
    """One file of a Hub source, through the cache; errors name the repo, the file and the revision."""
    path_in_repo = f"{source.subfolder}/{filename}" if source.subfolder else filename
    try:
        return Path(hf_hub_download(source.location, path_in_repo, revision=source.revision, token=token))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if constants.HF_HUB_OFFLINE:
            raise not_in_cache(source.describe(), path_in_repo) from err
        raise FileNotFoundError(
            f"Could not reach the Hub to download {path_in_repo} from {source.describe()} and it is not cached: {err}"
        ) from err
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {source.location!r} does not exist (or you lack access to it).") from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {source.location!r} has no revision {source.revision!r}.") from err
    except EntryNotFoundError as err:
        raise FileNotFoundError(
            f"Hub repo {source.location!r} has no file {path_in_repo} (revision {source.revision or 'main'})."
        ) from err


def not_in_cache(described: str, what: str) -> NotInCacheError:
    return NotInCacheError(
        f"{what} of {described} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}), and "
        "HF_HUB_OFFLINE=1 forbids downloading it. Load it once with network access, or unset HF_HUB_OFFLINE."
    )


def load_sae(
    cls: type,
    base_from_pretrained: Callable[..., Any],
    name_or_path: str | os.PathLike,
    *args: Any,
    hookpoint: str | None = None,
    subfolder: str = "",
    revision: str | None = None,
    **kwargs: Any,
):
    """HubMixin.from_pretrained: find the SAE, download its folder, then convert it or call transformers' loader."""
    token = kwargs.get("token")
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    name = os.fspath(name_or_path)
    repo, folder, fmt = locate(name, hookpoint=hookpoint, subfolder=subfolder, revision=revision, token=token)
    paths = files_of(repo, folder, fmt)
    if fmt == "hfsae" and not any(path.endswith((WEIGHTS_FILE, SHARDED_WEIGHTS_INDEX)) for path in paths):
        raise FileNotFoundError(
            f"{repo.describe(folder)} has a config.json but no {WEIGHTS_FILE}; re-save or re-upload the SAE."
        )
    root = repo.fetch(paths)
    local = root / folder if folder else root
    if fmt == "hfsae":
        options = {"dtype": dtype} if dtype is not None else {}
        try:
            sae = base_from_pretrained(str(local), *args, **options, **without_hub_options(kwargs))
        except SafetensorError as err:
            raise SAEFileError(
                f"{local / WEIGHTS_FILE} is not a readable safetensors file ({err}); it may be truncated. "
                f"Re-download or re-save {repo.describe(folder)}."
            ) from err
    else:
        sae = CONVERTERS[fmt](local)
        if dtype not in (None, "auto"):
            sae = sae.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    # What the explorer and cards resolve again: the registry name or repo, with the folder picked in it.
    sae.name_or_path = str(local) if repo.local else f"{name}/{folder}" if folder and name not in registry() else name
    return sae


def without_hub_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """from_pretrained options that concern downloading, which `SAERepo.fetch` has already done."""
    hub_only = ("token", "cache_dir", "force_download", "local_files_only", "proxies", "resume_download")
    return {name: value for name, value in kwargs.items() if name not in hub_only}


def load(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype: Any = None,
    hookpoint: str | None = None,
    subfolder: str = "",
):
    """Load an SAE by friendly name, Hub repo id or local folder/file, in eval mode on `device`.

    Example:
        >>> sae = hfsae.load("gpt2-small-v5-32k-resid-post-layer-8")
        >>> sae = hfsae.load("EleutherAI/sae-pythia-70m-32k", hookpoint="layers.3", dtype=torch.bfloat16)
    """
    options = {"dtype": dtype} if dtype is not None else {}
    sae = sae_class().from_pretrained(name_or_path, revision=revision, hookpoint=hookpoint, subfolder=subfolder, **options)
    return sae.to(device).eval()


def load_many(
    repo_or_path: str | os.PathLike, *, revision: str | None = None, device: str = "cpu", dtype: Any = None
) -> dict:
    """Every SAE of a repo or folder, by folder name in natural order (layers.2 before layers.10).

    Example:
        >>> saes = load_many("EleutherAI/sae-pythia-70m-32k")      # {"layers.0": TopKSAE, ...}
    """
    name = os.fspath(repo_or_path)
    if not Path(name).expanduser().exists() and not is_repo_id(name):
        raise UnknownSAEError(f"{name!r} is neither a local folder nor a Hub repo id ('org/name').")
    repo = SAERepo.open(name, revision=revision)
    found = sae_folders(repo)
    if not found:
        raise nothing_found(repo)
    incomplete = incomplete_folders(repo, found) if repo.index() is None else {}
    if incomplete:  # loading "all" of them must not quietly leave one out
        raise FileNotFoundError(f"{'; '.join(incomplete.values())}: the weights are missing, so not every SAE of "
                                f"{repo.describe()} can be loaded. Re-save or re-download those folders.")
    return {
        folder: load(name, revision=revision, device=device, dtype=dtype, subfolder=folder) if folder else
        load(name, revision=revision, device=device, dtype=dtype)
        for folder in found
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

