"""Convert SAEs between formats: OpenAI .pt, SAELens and sparsify folders into hfsae, and hfsae into SAELens.

Example:
    >>> convert("v5_32k/resid_post_mlp/8.pt", "gpt2-l8-32k", source_format="openai")
    >>> convert("gpt2-l8-32k", "gpt2-l8-32k-saelens", source_format="hfsae", target_format="saelens")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..folder import staged_folder
from ..modeling import TopKSAE
from . import openai, saelens, sparsify
from .multi import INDEX_FILE, read_index, save_many

SOURCE_FORMATS = ("openai", "saelens", "sparsify", "hfsae")
TARGET_FORMATS = ("hfsae", "saelens")


class UnknownFormatError(ValueError):
    """A format name that is not one of SOURCE_FORMATS / TARGET_FORMATS, or a path no format recognises."""


def detect_format(path: str | os.PathLike) -> str | None:
    """The format of one SAE stored at `path` (a file or folder), or None when it is not one SAE."""
    path = Path(path)
    if path.is_file():
        return "openai" if path.suffix == ".pt" else None
    if (path / "config.json").is_file():
        return "hfsae"
    if (path / saelens.CONFIG_FILE).is_file() and (path / saelens.WEIGHTS_FILE).is_file():
        return "saelens"
    if (path / sparsify.CONFIG_FILE).is_file() and (path / sparsify.WEIGHTS_FILE).is_file():
        return "sparsify"
    return None


def load_local(path: str | os.PathLike, source_format: str) -> TopKSAE:
    """One SAE at `path` in `source_format`, as a TopKSAE."""
    loaders: dict[str, Callable[[Path], TopKSAE]] = {
        "openai": openai.from_openai,
        "saelens": saelens.from_saelens,
        "sparsify": sparsify.from_sparsify,
        "hfsae": TopKSAE.from_pretrained,
    }
    check_format(source_format, SOURCE_FORMATS, "source")
    return loaders[source_format](Path(path))


def load_all_local(path: str | os.PathLike, source_format: str) -> dict[str, TopKSAE]:
    """Every SAE at `path`: {"": sae} for one SAE, or {subfolder or file stem: sae} for a collection."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Nothing to convert at {path}: no such file or folder.")
    if detect_format(path) == source_format:
        return {"": load_local(path, source_format)}
    if source_format == "hfsae" and (path / INDEX_FILE).is_file():
        entries = read_index(path / INDEX_FILE)["saes"]
        return {entry["folder"]: load_local(path / entry["folder"], "hfsae") for entry in entries}
    if path.is_dir():
        members = sorted(p for p in path.iterdir() if detect_format(p) == source_format)
        if members:
            return {member.stem if member.is_file() else member.name: load_local(member, source_format) for member in members}
    raise UnknownFormatError(
        f"{path} holds no SAE in {source_format} format (nor a folder of them). Expected "
        + {
            "openai": "a .pt state dict",
            "saelens": f"{saelens.CONFIG_FILE} + {saelens.WEIGHTS_FILE}",
            "sparsify": f"{sparsify.CONFIG_FILE} + {sparsify.WEIGHTS_FILE}",
            "hfsae": f"config.json + model.safetensors, or {INDEX_FILE}",
        }.get(source_format, "a known format")
        + "."
    )


def check_format(name: str, valid: tuple[str, ...], role: str) -> None:
    if name not in valid:
        raise UnknownFormatError(f"Unknown {role} format {name!r}; choose one of: {', '.join(valid)}.")


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, *, source_format: str, target_format: str = "hfsae"
) -> Path:
    """Convert the SAE (or folder of SAEs) at `src` into a new folder `dst`; outputs stay the same.

    A collection becomes one subfolder per SAE plus index.json (hfsae) or one subfolder per SAE (SAELens).
    `dst` appears only once everything is written.
    """
    check_format(source_format, SOURCE_FORMATS, "source")
    check_format(target_format, TARGET_FORMATS, "target")
    saes = load_all_local(src, source_format)
    with staged_folder(dst) as staging:
        if target_format == "saelens":
            for name, sae in saes.items():
                saelens.to_saelens(sae, staging / name if name else staging)
        elif list(saes) == [""]:
            saes[""].save_pretrained(staging)
        else:
            save_many(saes, staging)
    return Path(dst)
