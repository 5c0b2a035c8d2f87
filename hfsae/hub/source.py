"""Find, fetch and build SAEs of any format from a registry name, a Hub repo id or a local path.

One path for `from_pretrained`, `hfsae.load` and `load_many`: list the repo's (or folder's) files,
let each format (hub/formats) recognise its SAEs folder by folder, pick one by folder name or hook
point, download only that SAE's files and convert them; the caller's class builds the model.
This module never imports the model class, so the model's module can reach it without a cycle.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError

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
    SAEFolderError,
)
from .build import build
from .files import UnsupportedArchitectureError, read_torch_state_dict
from .formats import BY_NAME, FORMATS, Context, FolderView, Format, for_tensor_keys, layouts
from .formats.native import is_ours
from .formats.saelens import hook_point_from_transformer_lens
from .formats.sparsify import hook_point_from_folder
from .registry import UnknownSAEError, lookup, registry, unknown_name_error

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
# transformers' from_pretrained options that say how to download; they reach huggingface_hub, not the model.
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "proxies", "token", "resume_download")
# Folders whose files never make an SAE of their own (training checkpoints, hidden folders).
SKIPPED_FOLDERS = ("checkpoints",)
# File names of SAE layouts hfsae does not run, named in the error for a folder that holds nothing else.
KNOWN_OTHERS = {"params.npz": "a Gemma Scope JumpReLU SAE (params.npz)"}


class NotInCacheError(HfsaeError, FileNotFoundError):
    """Offline (HF_HUB_OFFLINE=1 or local_files_only=True) and the requested files are not in the local cache."""


class SkippedSAEsWarning(HfsaeError, UserWarning):
    """load_many left out folders holding SAEs that are not TopK (named with their architecture)."""


@dataclass(frozen=True)
class HubOptions:
    """How to reach a Hub repo, as transformers' from_pretrained takes it."""

    revision: str | None = None
    token: str | bool | None = None
    cache_dir: str | os.PathLike | None = None
    force_download: bool = False
    local_files_only: bool = False
    proxies: dict[str, str] | None = None

    @classmethod
    def from_kwargs(cls, revision: str | None, kwargs: dict[str, Any]) -> "HubOptions":
        """The options among `kwargs` (removed from it), with `revision`."""
        taken = {name: kwargs.pop(name) for name in HUB_OPTIONS if name in kwargs}
        taken.pop("resume_download", None)  # always resumed since huggingface_hub 0.23; accepted, as transformers does
        return cls(revision=revision, **{name: value for name, value in taken.items() if value is not None})

    @property
    def offline(self) -> bool:
        return self.local_files_only or constants.HF_HUB_OFFLINE


@dataclass(frozen=True)
class Source:
    """One SAE's files: a local folder or Hub repo (location), its folder or file there, a revision, a format."""

    location: str  # local root folder or Hub repo id
    subfolder: str  # the SAE's folder (or .pt file) inside it; "" for the root
    revision: str | None
    format: str
    local: bool

    def describe(self) -> str:
        where = f"{self.location}/{self.subfolder}" if self.subfolder else self.location
        return where if self.local or not self.revision else f"{where} at revision {self.revision}"


# ---- a repo or folder and its files ------------------------------------------------------------------


@dataclass
class SAERepo:
    """A local folder or a Hub repo at a revision, with the list of its files ('/'-separated paths)."""

    location: str
    local: bool
    files: list[str]
    options: HubOptions = field(default_factory=HubOptions)

    @classmethod
    def open(cls, location: str, options: HubOptions = HubOptions()) -> "SAERepo":
        if Path(location).expanduser().is_dir():
            root = Path(location).expanduser()
            files = [
                path.relative_to(root).as_posix()
                for path in root.rglob("*")
                if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
            ]
            return cls(str(root), True, files)
        return cls(location, False, list_hub_files(location, options), options)

    @property
    def revision(self) -> str | None:
        return None if self.local else self.options.revision

    def describe(self, subfolder: str = "") -> str:
        return Source(self.location, subfolder, self.revision, "", self.local).describe()

    def fetch(self, paths: list[str]) -> Path:
        """The local folder holding `paths` (downloaded through the cache for a Hub repo): its root."""
        if self.local:
            return Path(self.location)
        root = None
        for path in paths:
            downloaded = download(self, path)
            root = Path(str(downloaded)[: -len(path)])
        return root

    def json(self, path: str) -> Any:
        return read_json(self.fetch([path]) / path)

    def index(self) -> dict[str, Any] | None:
        return read_index(self.fetch([INDEX_FILE]) / INDEX_FILE) if INDEX_FILE in self.files else None


def list_hub_files(repo_id: str, options: HubOptions) -> list[str]:
    """The files of a Hub repo at `options.revision`; offline, those of its cached snapshot."""
    described = Source(repo_id, "", options.revision, "", False).describe()
    if options.offline:
        try:
            snapshot = Path(snapshot_download(repo_id, revision=options.revision, cache_dir=options.cache_dir,
                                              local_files_only=True))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError) as err:
            raise not_in_cache(described, "The file list", options) from err
        return [path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file()]
    try:
        return HfApi(token=options.token).list_repo_files(repo_id, revision=options.revision)
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {repo_id!r} does not exist (or you lack access to it).") from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {repo_id!r} has no revision {options.revision!r}.") from err
    except (OSError, HFValidationError) as err:  # connection errors are OSErrors
        raise FileNotFoundError(f"Could not list the files of {described} on the Hub: {err}") from err


def download(repo: SAERepo, path_in_repo: str) -> Path:
    """One file of a Hub repo, through the cache; errors name the repo, the file and the revision."""
    options = repo.options
    # huggingface_hub ignores proxies (with a warning) and reads HTTPS_PROXY; passed on only when given, as
    # transformers does.
    proxies = {"proxies": options.proxies} if options.proxies else {}
    try:
        return Path(hf_hub_download(
            repo.location, path_in_repo, revision=options.revision, token=options.token, cache_dir=options.cache_dir,
            force_download=options.force_download, local_files_only=options.local_files_only, **proxies,
        ))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if options.offline:
            raise not_in_cache(repo.describe(), path_in_repo, options) from err
        raise FileNotFoundError(
            f"Could not reach the Hub to download {path_in_repo} from {repo.describe()} and it is not cached: {err}"
        ) from err
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {repo.location!r} does not exist (or you lack access to it).") from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {repo.location!r} has no revision {options.revision!r}.") from err
    except EntryNotFoundError as err:
        raise FileNotFoundError(
            f"Hub repo {repo.location!r} has no file {path_in_repo} (revision {options.revision or 'main'})."
        ) from err


def not_in_cache(described: str, what: str, options: HubOptions) -> NotInCacheError:
    why = "local_files_only=True forbids" if options.local_files_only else "HF_HUB_OFFLINE=1 forbids"
    fix = "drop local_files_only" if options.local_files_only else "unset HF_HUB_OFFLINE"
    return NotInCacheError(
        f"{what} of {described} is not in the local Hugging Face cache "
        f"({options.cache_dir or constants.HF_HUB_CACHE}), "
        f"and {why} downloading it. Load it once with network access, or {fix}."
    )


# ---- the SAEs in a repo ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One SAE of a repo: its format, the folder view that recognised it, and its name there."""

    format: Format
    view: FolderView
    sae: str  # "" for the folder itself, else a file of it

    @property
    def path(self) -> str:
        return self.view.sae_path(self.sae)

    def hook_point(self) -> str | None:
        return self.format.hook_point(self.view, self.sae)


def folder_views(repo: SAERepo) -> dict[str, FolderView]:
    """{folder: view} of every folder of the repo that holds files, shallow folders first, then natural order."""
    by_folder: dict[str, set[str]] = {}
    for path in repo.files:
        parts = path.split("/")
        for depth in range(len(parts)):
            by_folder.setdefault("/".join(parts[:depth]), set()).add("/".join(parts[depth:]))
    cache: dict[str, Any] = {}

    def reader(folder: str) -> Callable[[str], Any]:
        def read(name: str) -> Any:
            path = f"{folder}/{name}" if folder else name
            if path not in cache:
                cache[path] = repo.json(path)
            return cache[path]
        return read

    order = sorted(by_folder, key=lambda name: (name.count("/") + bool(name), natural_key(name)))
    return {folder: FolderView(folder, by_folder[folder], reader(folder)) for folder in order}


def skipped(folder: str) -> bool:
    return any(part.startswith(".") or part in SKIPPED_FOLDERS for part in folder.split("/") if part)


def sae_folders(repo: SAERepo) -> dict[str, Found]:
    """{SAE path: Found} of every SAE in the repo, in natural order ('' is an SAE at the root).

    A repo with index.json lists its SAEs there (checked by hfsae.folder.read_index). Otherwise each
    format recognises its SAEs folder by folder, by file names and content; folders inside an SAE's
    folder (its checkpoints) and folders named `checkpoints` hold none of their own.
    """
    views = folder_views(repo)
    index = repo.index()
    if index is not None:
        found = {}
        for entry in index["saes"]:
            # The index says these are SAE folders (hfsae's unless another format's files say otherwise): no need
            # to read each folder's config.json, which would download every config to load one SAE.
            view = views.get(entry["folder"], FolderView(entry["folder"], set(), lambda name: {}))
            fmt = next((fmt for fmt in FORMATS if fmt.convert and "" in fmt.recognise(view)), BY_NAME["hfsae"])
            found[entry["folder"]] = Found(fmt, view, "")
        return found
    found: dict[str, Found] = {}
    for folder, view in views.items():
        if skipped(folder) or any(folder == sae or sae == "" or folder.startswith(f"{sae}/")
                                  for sae, item in found.items() if item.sae == ""):
            continue
        for fmt in FORMATS:
            for sae in fmt.recognise(view):
                found.setdefault(view.sae_path(sae), Found(fmt, view, sae))
    return dict(sorted(found.items(), key=lambda item: natural_key(item[0])))


def incomplete_folders(repo: SAERepo, found: dict[str, Found], subfolder: str = "") -> dict[str, str]:
    """{folder: message} of folders with an SAE's config but without its weights, outside the SAEs `found`."""
    weights_of = {CONFIG_FILE: WEIGHTS_FILE, "cfg.json": "sae_weights.safetensors or sae.safetensors"}
    prefix = f"{subfolder}/" if subfolder else ""
    incomplete = {}
    for path in sorted(repo.files, key=natural_key):
        folder, _, name = path.rpartition("/")
        inside_an_sae = any(folder == sae or sae == "" or folder.startswith(f"{sae}/") for sae in found)
        if name not in weights_of or not path.startswith(prefix) or inside_an_sae or skipped(folder):
            continue
        # A config.json is hfsae's only with its model_type: sparsify's root training config or another
        # library's config is not an SAE missing its weights.
        if name == CONFIG_FILE and not is_ours(config_or_none(repo, path)):
            continue
        incomplete[folder] = f"{repo.describe(folder)} has a {name} but no {weights_of[name]}"
    return incomplete


def config_or_none(repo: SAERepo, path: str) -> dict | None:
    try:
        value = repo.json(path)
    except (SAEFolderError, OSError):
        return None
    return value if isinstance(value, dict) else None


def what_is_there(repo: SAERepo, subfolder: str = "") -> str:
    """The files (and the keys of JSON configs) of a folder that no format recognised, for the error."""
    prefix = f"{subfolder}/" if subfolder else ""
    names = sorted((path[len(prefix):] for path in repo.files if path.startswith(prefix) and not skipped(path)),
                   key=natural_key)
    described = []
    for name in names[:8]:
        note = next((other for file, other in KNOWN_OTHERS.items() if name.endswith(file)), None)
        if note is None and name.endswith(".json") and "/" not in name:
            config = config_or_none(repo, prefix + name)
            note = f"keys: {', '.join(sorted(config)[:8])}" if config else None
        described.append(f"{name} ({note})" if note else name)
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    return ", ".join(described) + more if described else "no files"


def nothing_found(repo: SAERepo, subfolder: str = "") -> OSError | SAEFolderError:
    """The error for a repo or folder without any SAE: the missing weights by name where a config is there."""
    incomplete = incomplete_folders(repo, {}, subfolder)
    if incomplete:
        return FileNotFoundError(f"{next(iter(incomplete.values()))}: the SAE's weights are missing. "
                                 "Re-save or re-download the folder.")
    return SAEFolderError(f"{repo.describe(subfolder)} holds no SAE hfsae reads: {foreign_config(repo, subfolder)}found "
                        f"{what_is_there(repo, subfolder)}. hfsae reads {layouts()}.")


def foreign_config(repo: SAERepo, subfolder: str) -> str:
    """What is wrong with a config.json beside weights that is not hfsae's ("" when there is none), ending in '; '."""
    path = f"{subfolder}/{CONFIG_FILE}" if subfolder else CONFIG_FILE
    if path not in repo.files:
        return ""
    try:
        config = json.loads((repo.fetch([path]) / path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{CONFIG_FILE} is not valid JSON ({err}); "
    if not isinstance(config, dict):
        return f"{CONFIG_FILE} should hold a JSON object; it holds a {type(config).__name__}; "
    if "model_type" in config and not is_ours(config):
        return f"{CONFIG_FILE} describes a model of type {config['model_type']!r}, not a TopK SAE ('topk_sae'); "
    return ""


def normalized_hook_point(name: str) -> str:
    """A hook point as the user may write it (a sparsify folder name, a TransformerLens hook) in hfsae's naming."""
    return hook_point_from_transformer_lens(hook_point_from_folder(name))


def pick(repo: SAERepo, *, hookpoint: str | None, subfolder: str) -> Found:
    """The one SAE that `subfolder` / `hookpoint` name, or an error listing the choices."""
    found = sae_folders(repo)
    if subfolder:
        check_folder_name(subfolder, where=f"subfolder of {repo.describe()}")
        found = {name: item for name, item in found.items() if name == subfolder or name.startswith(f"{subfolder}/")}
    where = repo.describe(subfolder)
    if not found:
        raise nothing_found(repo, subfolder)
    if hookpoint is None:
        if subfolder in found:
            return found[subfolder]
        if len(found) == 1:
            return next(iter(found.values()))
        raise SAEFolderError(
            f"{where} holds several SAEs ({', '.join(found)}); pick one with hookpoint= (a folder name or a hook "
            "point) or load them all with hfsae.load_many()."
        )
    if hookpoint in found:
        return found[hookpoint]
    index = repo.index()
    by_index = {entry["folder"]: entry.get("hook_point") for entry in index["saes"]} if index is not None else {}
    entries = [{"folder": name, "hook_point": by_index[name] if name in by_index else item.hook_point()}
               for name, item in found.items()]
    return found[folder_for_hook_point({"saes": entries}, normalized_hook_point(hookpoint), where=where)]


# ---- resolving a name --------------------------------------------------------------------------------


def is_repo_id(name: str) -> bool:
    return bool(REPO_ID.fullmatch(name)) and not name.startswith((".", "/")) and ".." not in name


@dataclass(frozen=True)
class Located:
    repo: SAERepo
    found: Found
    defaults: dict[str, Any]  # config fields a registry entry supplies (base_model)


def locate(name: str, *, hookpoint: str | None, subfolder: str, options: HubOptions) -> Located:
    """The repo and SAE that `name` (+ hookpoint / subfolder) names: a registry name, a path or a repo id."""
    if name in registry():
        entry = lookup(name)
        repo = SAERepo.open(entry.repo, replace(options, revision=options.revision or entry.revision))
        return Located(repo, pick(repo, hookpoint=None, subfolder=entry.folder), {"base_model": entry.base_model})
    path = Path(name).expanduser()
    if path.is_file():
        repo = SAERepo(str(path.parent), True, [path.name])
        found = sae_folders(repo)
        if path.name not in found:
            raise SAEFolderError(f"{path} is a file but not an SAE hfsae reads ({layouts()}).")
        return Located(repo, found[path.name], {})
    if not path.exists() and not is_repo_id(name):
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise FileNotFoundError(f"No SAE at {name}: that path does not exist.")
        raise unknown_name_error(name)
    repo = SAERepo.open(name, options)
    return Located(repo, pick(repo, hookpoint=hookpoint, subfolder=subfolder), {})


def resolve(name_or_path: str | os.PathLike, *, hookpoint: str | None = None, subfolder: str = "",
            revision: str | None = None, token: str | bool | None = None) -> Source:
    """Where the SAE that `name_or_path` (+ hookpoint / subfolder) names is: a registry name, a path or a repo id."""
    located = locate(os.fspath(name_or_path), hookpoint=hookpoint, subfolder=subfolder,
                     options=HubOptions(revision=revision, token=token))
    repo, found = located.repo, located.found
    return Source(repo.location, found.path, repo.revision, found.format.name, repo.local)


# ---- loading -----------------------------------------------------------------------------------------


def fetch_sae(repo: SAERepo, found: Found) -> Path:
    """Download (or find locally) the files of one SAE; the local path of its folder or file."""
    folder = found.view.path
    paths = [f"{folder}/{name}" if folder else name for name in found.format.fetch(found.view, found.sae)]
    if found.format.convert is None and not any(path.endswith((WEIGHTS_FILE, SHARDED_WEIGHTS_INDEX)) for path in paths):
        raise FileNotFoundError(
            f"{repo.describe(folder)} has a config.json but no {WEIGHTS_FILE}; re-save or re-upload the SAE."
        )
    root = repo.fetch(paths)
    return root / found.path if found.path else root


def pt_format(path: Path, found: Found) -> Format:
    """For a lone .pt file, the format its tensor keys say (file names alone cannot tell OpenAI's from Qwen-Scope's)."""
    if not found.format.tensor_keys:
        return found.format
    keys = set(read_torch_state_dict(path, mmap=True))
    fmt = for_tensor_keys(keys)
    if fmt is None:
        expected = "; ".join(f"{f.name}: {', '.join(sorted(f.tensor_keys))}" for f in FORMATS if f.tensor_keys)
        held = ", ".join(sorted(keys))[:300]
        raise SAEFolderError(f"{path} is a .pt file of no SAE format hfsae reads: it holds {held}; "
                           f"expected the tensors of {expected}.")
    return fmt


def load_sae(cls: type, name_or_path: str | os.PathLike, *args: Any, hookpoint: str | None = None,
             subfolder: str = "", revision: str | None = None, **kwargs: Any):
    """`cls.from_pretrained`: find the SAE, download its files, then convert them or call transformers' loader.

    Format options (k=, norm_scaling_factor=) go to the converter; transformers' download options
    (cache_dir, force_download, local_files_only, proxies, token) to huggingface_hub.
    """
    options = HubOptions.from_kwargs(revision, kwargs)
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    format_options = {name: kwargs.pop(name) for name in ("k", "norm_scaling_factor") if name in kwargs}
    name = os.fspath(name_or_path)
    located = locate(name, hookpoint=hookpoint, subfolder=subfolder, options=options)
    repo, found = located.repo, located.found
    local = fetch_sae(repo, found)
    fmt = pt_format(local, found)
    if fmt.convert is None:
        sae = load_native(cls, local, repo, found, dtype, *args, **kwargs)
    else:
        converted = fmt.convert(local, Context(repo.location, found.path, format_options))
        sae = build(cls, converted, where=local, **{k: v for k, v in located.defaults.items() if v is not None})
        if dtype not in (None, "auto"):
            sae = sae.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    # What the explorer and cards resolve again: the registry name or repo, with the SAE picked in it.
    in_repo = f"{name}/{found.path}" if found.path and name not in registry() else name
    sae.name_or_path = str(local) if repo.local else in_repo
    return sae


def load_native(cls: type, local: Path, repo: SAERepo, found: Found, dtype: Any, *args: Any, **kwargs: Any):
    """An hfsae folder already on disk, through the class's transformers loader."""
    options = {"dtype": dtype} if dtype is not None else {}
    try:
        return cls.from_pretrained_folder(str(local), *args, **options, **kwargs)
    except SafetensorError as err:
        raise SAEFolderError(
            f"{local / WEIGHTS_FILE} is not a readable safetensors file ({err}); it may be truncated. "
            f"Re-download or re-save {repo.describe(found.path)}."
        ) from err


def load_all(cls: type, repo_or_path: str | os.PathLike, *, strict: bool = False, **kwargs: Any) -> dict:
    """Every TopK SAE of a repo or folder as `cls`, by SAE path in natural order (layers.2 before layers.10).

    Folders holding other architectures (JumpReLU, gated, ReLU, BatchTopK …) are left out and named in
    one SkippedSAEsWarning with their architecture; `strict=True` refuses the repo instead.
    """
    name = os.fspath(repo_or_path)
    if not Path(name).expanduser().exists() and not is_repo_id(name):
        raise UnknownSAEError(f"{name!r} is neither a local folder nor a Hub repo id ('org/name').")
    options = HubOptions.from_kwargs(kwargs.pop("revision", None), kwargs)
    repo = SAERepo.open(name, options)
    found = sae_folders(repo)
    if not found:
        raise nothing_found(repo)
    incomplete = incomplete_folders(repo, found) if repo.index() is None else {}
    if incomplete:  # loading "all" of them must not quietly leave one out
        raise FileNotFoundError(f"{'; '.join(incomplete.values())}: the weights are missing, so not every SAE of "
                                f"{repo.describe()} can be loaded. Re-save or re-download those folders.")
    others = {path: why for path, item in found.items() if (why := item.format.unsupported(item.view, item.sae))}
    if others and strict:
        raise UnsupportedArchitectureError(f"{repo.describe()} holds SAEs that are not TopK (strict=True): "
                                           + "; ".join(f"{path}: {why}" for path, why in others.items()))
    if others:
        warnings.warn(f"load_many left out {len(others)} SAE(s) of {repo.describe()} that are not TopK: "
                      + "; ".join(f"{path}: {why}" for path, why in others.items()), SkippedSAEsWarning, stacklevel=3)
    return {path: load_sae(cls, name, subfolder=path, revision=options.revision, **hub_kwargs(options), **kwargs)
            for path in found if path not in others}


def hub_kwargs(options: HubOptions) -> dict[str, Any]:
    """`options` back as from_pretrained keywords (revision apart)."""
    return {name: value for name, value in options.__dict__.items() if name != "revision"}
