"""The one definition of an SAE folder: its file names, the multi-SAE index, and how its files are written.

A single SAE folder (what `TopKSAE.save_pretrained`, `hfsae train`, `hfsae eval` and `hfsae analyze` write):

    config.json                   TopKSAEConfig
    model.safetensors             W_enc, b_enc, W_dec, b_pre
    README.md                     the model card, written last (hfsae.hub.card.write_card)
    training_config.json          the TrainConfig it was trained with
    training_metrics.json         held-out FVU, dead fraction, tokens, … at the end of training
    eval_results.json             the metrics of `hfsae eval`
    n2g_explanations.json         token-pattern explanations of latents
    analysis/                     `hfsae analyze`: latents.parquet + analysis.json
    checkpoints/                  training checkpoints (hfsae.training.checkpoint), never published

A multi-SAE folder or Hub repo holds one such folder per SAE, listed in index.json:

    {"format": "hfsae-index", "version": 1, "saes": [{"folder": "layers.8.resid_post", "hook_point": ...}]}

This module imports nothing of hfsae: every other module may build on it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import HfsaeError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHARDED_WEIGHTS_INDEX = "model.safetensors.index.json"  # save_pretrained(max_shard_size=...) splits the weights
CARD_FILE = "README.md"
TRAINING_CONFIG_FILE = "training_config.json"
TRAINING_METRICS_FILE = "training_metrics.json"
EVAL_RESULTS_FILE = "eval_results.json"
N2G_FILE = "n2g_explanations.json"
INDEX_FILE = "index.json"
ANALYSIS_DIR = "analysis"
CHECKPOINTS_DIR = "checkpoints"  # hfsae.training.checkpoint writes them

INDEX_FORMAT = "hfsae-index"
INDEX_VERSION = 1

# What save_pretrained, the card, eval and analysis write: the only files `hfsae push` uploads.
# Checkpoints, staging folders and dotfiles (.env, .saving-*) are never published.
PUBLISHED_FILES = (
    CONFIG_FILE,
    WEIGHTS_FILE,
    SHARDED_WEIGHTS_INDEX,
    "model-*-of-*.safetensors",
    CARD_FILE,
    "*.png",  # the card's figures
    TRAINING_CONFIG_FILE,
    TRAINING_METRICS_FILE,
    EVAL_RESULTS_FILE,
    N2G_FILE,
    "latent_density.safetensors",
    "latent_density.json",
    f"{ANALYSIS_DIR}/*.parquet",
    f"{ANALYSIS_DIR}/*.json",
    f"{ANALYSIS_DIR}/{CARD_FILE}",
)


class SAEFolderError(HfsaeError, ValueError):
    """A file of an SAE folder is malformed: invalid JSON, the wrong kind of value, an unsafe folder name."""


class HookPointNotInRepoError(HfsaeError, LookupError):
    """The multi-SAE folder or repo holds no SAE (or several) for the requested hook point."""


# ---- reading and writing files -----------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (checkpoints and activation caches verify with it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object stored at `path`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a JSON file at {path}, but there is none.")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAEFolderError(f"{path} is not valid JSON ({err}). Re-create it, or re-download the folder.") from err
    if not isinstance(value, dict):
        raise SAEFolderError(f"{path} should hold a JSON object ({{...}}); it holds a {type(value).__name__}.")
    return value


def saved_tensor_shapes(folder: str | os.PathLike) -> dict[str, list[int]] | None:
    """{tensor name: shape} of an SAE folder's weights, read from the safetensors headers alone (no tensor data
    is read or allocated), or None when the folder has no safetensors weights."""
    from safetensors import safe_open

    folder = Path(folder)
    if (folder / f"{WEIGHTS_FILE}.index.json").is_file():  # save_pretrained(max_shard_size=...)
        files = sorted(set(read_json(folder / f"{WEIGHTS_FILE}.index.json").get("weight_map", {}).values()))
    elif (folder / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        return None
    shapes = {}
    for file in files:
        try:
            with safe_open(folder / check_folder_name(file), framework="pt") as handle:
                shapes.update({name: handle.get_slice(name).get_shape() for name in handle.keys()})  # noqa: SIM118
        except (OSError, SAEFolderError):
            raise
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise SAEFolderError(f"{folder / file} is not a readable safetensors file ({err}); re-save or re-download "
                                 "the SAE.") from err  # fmt: skip
    return shapes


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never half of one.

    The bytes go to a temporary file in the same folder, are flushed to disk, and replace `path` in
    one rename (os.replace is atomic within a file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; SAE folders are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """`write_bytes_atomic` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """`obj` as indented JSON, written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


class OutputDirError(HfsaeError, FileExistsError):
    """Writing an output folder would lose files already there (or the folder cannot be written at all)."""


class NonFiniteWeightsError(HfsaeError, ValueError):
    """Weights hold NaN or infinite values: they are never saved, and refused on load."""


def non_finite_tensors(tensors: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors (torch) of `tensors` that hold a NaN or an infinity."""
    return [name for name, tensor in tensors.items() if tensor.is_floating_point() and not bool(tensor.isfinite().all())]


def check_finite(tensors: dict[str, Any], *, what: str) -> None:
    """NonFiniteWeightsError naming the tensors of `what` (a file, an SAE) that hold NaN or infinite values."""
    bad = non_finite_tensors(tensors)
    if bad:
        raise NonFiniteWeightsError(
            f"{what} holds NaN or infinite values in {', '.join(bad)}: the training diverged or the file is "
            "damaged. Train again with a lower learning rate, or re-download the SAE."
        )


# What `hfsae train` (and convert, sweep) may replace when told to overwrite: everything an SAE folder or a
# multi-SAE folder holds, at any depth. '**' stands for any number of folders; '*' never crosses a '/'.
SAE_OUTPUT = (
    *(f"**/{pattern}" for pattern in PUBLISHED_FILES),
    f"**/{INDEX_FILE}",
    f"**/{CHECKPOINTS_DIR}/**",
)
# What a writer that declares nothing may replace when told to overwrite: anything in the folder.
ANYTHING = ("**",)
# A write_bytes_atomic temporary left by a killed process: every writer may replace its own.
_TEMPORARY_FILES = ("**/.*.tmp",)
# Staging and retired folders beside a destination: `.NAME.staging-PID-xxxx`, `.NAME.old-PID-xxxx`.
_STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|old)-(?P<pid>\d+)-[^.]+$")


def _matches_parts(parts: list[str], pieces: list[str]) -> bool:
    if not pieces:
        return not parts
    if pieces[0] == "**":
        return any(_matches_parts(parts[start:], pieces[1:]) for start in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pieces[0]) and _matches_parts(parts[1:], pieces[1:])


def _files(folder: Path) -> Iterator[str]:
    """Every file (or link, or empty folder) under `folder`, as relative '/'-separated paths."""
    for root, directories, files in os.walk(folder):
        relative = Path(root).relative_to(folder)
        for name in files + [name for name in directories if os.path.islink(Path(root) / name)]:
            yield (relative / name).as_posix()
        if not directories and not files and Path(root) != folder:
            yield relative.as_posix() + "/"


def foreign_files(folder: str | os.PathLike, replaces: Iterable[str]) -> list[str]:
    """The files of `folder` that a writer of `replaces` (glob patterns, see SAE_OUTPUT) did not write."""
    folder = Path(folder)
    pieces = [pattern.split("/") for pattern in (*replaces, *_TEMPORARY_FILES)]
    return sorted(
        relative for relative in _files(folder)
        if not any(_matches_parts(relative.rstrip("/").split("/"), piece) for piece in pieces)
    )  # fmt: skip


def _absolute(path: str | os.PathLike) -> Path:
    """`path` made absolute with its parent resolved: '.' and '../a' keep meaning the same folder after a chdir
    or once the folder they were relative to has been moved."""
    path = Path(path).absolute()
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_output_folder(
    destination: str | os.PathLike,
    *,
    overwrite: bool,
    replaces: Iterable[str] = ANYTHING,
    how_to_overwrite: str | None = None,
) -> Path:
    """The absolute path of `destination` if it may be written; OutputDirError otherwise, before any work.

    A folder that is absent or empty may be written. A non-empty one only with `overwrite`, and then only
    when every file in it is one the writer itself writes (`replaces`, see `foreign_files`): overwriting
    never deletes a file the user did not ask to lose, and never the folder the process works in.
    `how_to_overwrite` says how to allow overwriting ('--overwrite-output-dir to replace it'), when a caller can.
    """
    path = _absolute(destination)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{destination} is a file, not a folder; choose a folder to write to.")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    if not overwrite:
        if how_to_overwrite:
            raise OutputDirError(f"{destination} already exists and is not empty. Pass {how_to_overwrite}, or choose "
                                 "another folder.")  # fmt: skip
        raise OutputDirError(f"{destination} already exists and is not empty. Choose another folder, or empty it first.")
    if path.resolve() in Path.cwd().resolve().parents:
        raise OutputDirError(
            f"{destination} holds the current directory ({Path.cwd()}); replacing it would delete the folder you "
            "are working in. Run from outside it, or choose another folder."
        )
    foreign = foreign_files(path, replaces)
    if foreign:
        raise OutputDirError(
            f"{destination} holds files this command does not write ({_listing(foreign)}); overwriting replaces "
            "only its own output, so nothing else is lost. Move them away, or choose another folder."
        )
    return path


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(parent: str | os.PathLike) -> None:
    """Clean up after processes killed mid-`staged_folder` in `parent`: their staging folders are removed, and
    a folder they had retired comes back when its destination is missing (the kill fell between the swaps)."""
    parent = Path(parent)
    for child in parent.iterdir() if parent.is_dir() else []:
        match = _STAGING_NAME.match(child.name)
        if not match or not child.is_dir() or _is_running(int(match["pid"])):
            continue
        destination, retired = parent / match["name"], child / match["name"]
        if match["kind"] == "old" and retired.is_dir() and not destination.exists():
            os.replace(retired, destination)
        shutil.rmtree(child, ignore_errors=True)


def _swap(staging: Path, destination: Path, retired_parent: Path) -> None:
    """Move `destination` into `retired_parent` and `staging` into its place. The current directory's folder
    keeps its identity (its contents move, not the folder) so that the shell sitting in it still sees it."""
    retired = retired_parent / destination.name
    if not _is_cwd(destination):
        os.replace(destination, retired)
        os.replace(staging, destination)
        return
    retired.mkdir()
    for entry in list(destination.iterdir()):
        os.replace(entry, retired / entry.name)
    for entry in list(staging.iterdir()):
        os.replace(entry, destination / entry.name)
    staging.rmdir()


def _is_cwd(path: Path) -> bool:
    return path.is_dir() and path.resolve() == Path.cwd().resolve()


@contextmanager
def staged_folder(
    destination: str | os.PathLike,
    *,
    overwrite: bool = False,
    replaces: Iterable[str] = ANYTHING,
    how_to_overwrite: str | None = None,
    checked_before: bool = False,
) -> Iterator[Path]:
    """Yield an empty folder beside `destination`; on success it becomes `destination` in one swap.

    On an error the staged folder is removed and `destination` is left as it was: a crash mid-write
    never leaves a folder that loads but holds half an SAE. What may be replaced is `check_output_folder`'s
    rule (`overwrite`, `replaces`), checked before the block runs; a file that appeared in the
    destination meanwhile is not deleted: the old folder is then kept beside it, and named in a warning.
    `checked_before`: the caller checked the folder before a long job (training), so files that appeared
    since are kept that way rather than failing the job at its end. Staging folders of killed processes
    are cleaned up first (`remove_stale_staging`).
    """
    destination = check_output_folder(destination, overwrite=overwrite, replaces=ANYTHING if checked_before else replaces,
                                      how_to_overwrite=how_to_overwrite)  # fmt: skip
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    # A dot name with our pid: never published (PUBLISHED_FILES), skipped by anything listing SAE folders,
    # and removable by a later run once this process is gone.
    prefix = f".{destination.name}.{{}}-{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix.format("staging"), dir=parent))
    staging.chmod(0o755)  # mkdtemp makes it private; SAE folders are meant to be shared
    try:
        yield staging
        if not (destination.exists() and (overwrite or _is_cwd(destination))):
            try:
                os.replace(staging, destination)  # atomic; refused by the OS if the folder filled up meanwhile
            except OSError as err:
                if destination.is_dir() and any(destination.iterdir()):
                    raise OutputDirError(f"{destination} was filled by another process while this one wrote it; "
                                         "choose another folder.") from err  # fmt: skip
                raise
            return
        retired_parent = Path(tempfile.mkdtemp(prefix=prefix.format("old"), dir=parent))
        _swap(staging, destination, retired_parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = retired_parent / destination.name
    foreign = foreign_files(retired, replaces)
    if foreign:
        keeper = Path(tempfile.mkdtemp(prefix=f"{destination.name}.previous-", dir=parent))  # a visible, unique name
        keeper.chmod(0o755)
        kept = keeper / destination.name
        os.replace(retired, kept)
        warnings.warn(f"{destination} was replaced, but files this command does not write appeared in it while it "
                      f"ran ({_listing(foreign)}); the previous folder is kept at {kept}.", stacklevel=3)  # fmt: skip
    shutil.rmtree(retired_parent, ignore_errors=True)


# ---- the multi-SAE index -----------------------------------------------------------------------------


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: layers.2 < layers.10 (plain sorting puts 10 first)."""
    # re.split with a group alternates text and digit runs, so tuples compare str to str and int to int.
    return tuple(int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", name)))


def check_folder_name(name: Any, *, where: str | None = None) -> str:
    """`name` when it is a relative folder inside a repo ('layers.8' or 'layers.8/n64_k4'), else SAEFolderError.

    Refused: anything that could point outside the repo or differ between systems — absolute paths,
    '..' or '.' parts, backslashes, empty parts — and hidden parts ('.git'), which are never published.
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = "it must be a non-empty string"
    elif "\\" in name:
        problem = "it contains a backslash; use '/' between folders"
    elif name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        problem = "it is an absolute path"
    elif ".." in name.split("/"):
        problem = "a '..' part leads out of the repo"
    elif "." in name.split("/") or "" in name.split("/"):
        problem = "it has an empty or '.' part"
    elif any(part.startswith(".") for part in name.split("/")):
        problem = "a part starting with '.' is hidden, and hidden files are never published"
    if problem:
        location = f"{where}: " if where else ""
        raise SAEFolderError(
            f"{location}SAE folder name {name!r} is not allowed ({problem}). A folder name must be a "
            "relative path inside the repo, like 'layers.8.resid_post'."
        )
    return name


def index_entry(folder: str, config: Any, **extra: Any) -> dict[str, Any]:
    """The index.json entry for the SAE with this config (a TopKSAEConfig) stored in `folder`."""
    return {
        "folder": check_folder_name(folder),
        "hook_point": config.hook_point,
        "base_model": config.base_model,
        "d_in": config.d_in,
        "n_latents": config.n_latents,
        "k": config.k,
        **extra,
    }


def _checked_entries(entries: Iterable[Any], where: str) -> list[dict[str, Any]]:
    checked, seen = [], set()
    for entry in entries:
        if not isinstance(entry, dict) or "folder" not in entry:
            raise SAEFolderError(f"{where}: every entry of 'saes' must be an object with a 'folder'; got {entry!r}.")
        folder = check_folder_name(entry["folder"], where=where)
        if folder in seen:
            raise SAEFolderError(f"{where}: the folder {folder!r} is listed twice; each SAE needs its own folder.")
        seen.add(folder)
        checked.append(entry)
    return sorted(checked, key=lambda entry: natural_key(entry["folder"]))


def write_index(folder_path: str | os.PathLike, entries: Iterable[dict[str, Any]]) -> Path:
    """Write `folder_path/index.json` listing `entries` (from `index_entry`) in natural order; returns its path."""
    path = Path(folder_path) / INDEX_FILE
    saes = _checked_entries(entries, str(path))
    return write_json_atomic(path, {"format": INDEX_FORMAT, "version": INDEX_VERSION, "saes": saes})


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an index.json: its entries' folders are safe relative names, in natural order."""
    index = read_json(path)
    if index.get("format") != INDEX_FORMAT or not isinstance(index.get("saes"), list):
        raise SAEFolderError(
            f"{path} is not an hfsae index: expected {{\"format\": {INDEX_FORMAT!r}, \"saes\": [...]}}, "
            f"got keys {sorted(index)}."
        )
    return index | {"saes": _checked_entries(index["saes"], str(path))}


def folder_for_hook_point(index: dict[str, Any], hook_point: str, *, where: str) -> str:
    """The one folder of `index` holding the SAE for `hook_point` (a hook point or a folder name)."""
    entries = index["saes"]
    matches = [entry["folder"] for entry in entries if entry["folder"] == hook_point]
    matches = matches or [entry["folder"] for entry in entries if entry.get("hook_point") == hook_point]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        folders = ", ".join(entry["folder"] for entry in entries) or "none"
        raise HookPointNotInRepoError(f"{where} holds no SAE for hook point {hook_point!r}; it holds: {folders}.")
    raise HookPointNotInRepoError(
        f"{where} holds several SAEs for hook point {hook_point!r} ({', '.join(matches)}); "
        "pass one of those folder names as hookpoint= instead."
    )


# ---- what is published -------------------------------------------------------------------------------


def _matches(relative: str, patterns: Iterable[str]) -> bool:
    """Whether `relative` ('a/b.png') matches one of `patterns` part by part ('*' never crosses a '/')."""
    parts = relative.split("/")
    if any(part.startswith(".") for part in parts):
        return False
    return any(
        len(pattern.split("/")) == len(parts)
        and all(fnmatch.fnmatchcase(part, piece) for part, piece in zip(parts, pattern.split("/")))
        for pattern in patterns
    )


def _is_published(relative: str, sae_folders: list[str] | None) -> bool:
    if sae_folders is None:
        return _matches(relative, PUBLISHED_FILES)
    if _matches(relative, (INDEX_FILE, CARD_FILE, "*.png")):  # a multi-SAE repo's own card and index
        return True
    return any(
        relative.startswith(f"{folder}/") and _matches(relative[len(folder) + 1 :], PUBLISHED_FILES)
        for folder in sae_folders
    )


def publishable_files(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """What of `folder` may be published: (kept, left_out), relative '/'-separated paths.

    A single SAE folder keeps the files of PUBLISHED_FILES; a multi-SAE folder keeps its index.json
    and card and those files of every folder its index lists. Everything else (checkpoints/, .env,
    staging folders, links) is left out; a left-out folder is reported once, as 'name/'.
    """
    root = Path(folder)
    sae_folders = None
    if (root / INDEX_FILE).is_file():
        sae_folders = [entry["folder"] for entry in read_index(root / INDEX_FILE)["saes"]]

    def scan(directory: Path, prefix: str) -> tuple[list[str], list[str]]:
        kept, left_out = [], []
        for child in sorted(directory.iterdir(), key=lambda path: natural_key(path.name)):
            relative = f"{prefix}{child.name}"
            if child.name.startswith(".") or child.is_symlink():
                left_out.append(f"{relative}/" if child.is_dir() else relative)
            elif child.is_dir():
                child_kept, child_left_out = scan(child, f"{relative}/")
                kept += child_kept
                left_out += child_left_out if child_kept else [f"{relative}/"]
            elif child.is_file() and _is_published(relative, sae_folders):
                kept.append(relative)
            else:
                left_out.append(relative)
        return kept, left_out

    return scan(root, "")
