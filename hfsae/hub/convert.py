"""Convert SAEs between formats: every format hfsae reads (hub/formats) into hfsae, hfsae into SAELens.

Example:
    >>> convert("v5_32k/resid_post_mlp/8.pt", "gpt2-l8-32k", source_format="openai")
    >>> convert("gpt2-l8-32k", "gpt2-l8-32k-saelens", source_format="hfsae", target_format="saelens")
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import HfsaeError
from ..folder import INDEX_FILE, staged_folder
from ..modeling import TopKSAE
from .build import build
from .formats import BY_NAME, Context, layouts, saelens, sparsify
from .multi import save_many
from .source import SAERepo, fetch_sae, load_native, pt_format, sae_folders

SOURCE_FORMATS = tuple(BY_NAME)
TARGET_FORMATS = ("hfsae", "saelens", "sparsify")


class UnknownFormatError(HfsaeError, ValueError):
    """A format name that is not one of SOURCE_FORMATS / TARGET_FORMATS, or a path no format recognises."""


def check_format(name: str, valid: tuple[str, ...], role: str) -> None:
    if name not in valid:
        raise UnknownFormatError(f"Unknown {role} format {name!r}; choose one of: {', '.join(valid)}.")


def load_all_local(path: str | os.PathLike, source_format: str, cls: type = TopKSAE) -> dict:
    """Every SAE in `source_format` at the local `path`: {"": sae} for one SAE, or {folder: sae} for a collection.

    Folders come from the same discovery as loading (an index.json is checked by hfsae.folder, so a
    '../' or absolute entry is refused), and are saved under the same names in the destination. Only
    local files are read: a folder that index.json lists but that is missing is an error, never a download.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Nothing to convert at {path}: no such file or folder.")
    repo = SAERepo(str(path.parent), True, [path.name]) if path.is_file() else SAERepo.open(str(path))
    found = {name: item for name, item in sae_folders(repo).items() if item.format.name == source_format}
    if not found:
        raise UnknownFormatError(
            f"{path} holds no SAE in {source_format} format (nor a folder of them); hfsae reads {layouts()}."
        )
    saes = {}
    for name, item in found.items():
        if not item.view.files:
            raise FileNotFoundError(f"{path / INDEX_FILE} lists the folder {name!r}, which is not in {path}; "
                                    "restore it or remove its entry from index.json.")
        local = fetch_sae(repo, item)
        fmt = pt_format(local, item)
        if fmt.convert is None:
            sae = load_native(cls, local, repo, item, None)
        else:
            sae = build(cls, fmt.convert(local, Context(str(path), name)), where=local)
        # A .pt collection becomes one folder per file, named after it without the suffix.
        key = "" if path.is_file() else name.removesuffix(".sae.pt").removesuffix(".pt")
        saes[key] = sae
    return saes


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, *, source_format: str, target_format: str = "hfsae"
) -> Path:
    """Convert the SAE (or folder of SAEs) at `src` into a new folder `dst`; outputs stay the same.

    A collection becomes one subfolder per SAE plus index.json (hfsae) or one subfolder per SAE (SAELens, sparsify).
    `dst` appears only once everything is written, and nothing is written outside it.
    """
    check_format(source_format, SOURCE_FORMATS, "source")
    check_format(target_format, TARGET_FORMATS, "target")
    saes = load_all_local(src, source_format)
    with staged_folder(dst) as staging:
        if target_format == "saelens":
            for name, sae in saes.items():
                saelens.to_saelens(sae, staging / name if name else staging)
        elif target_format == "sparsify":
            for name, sae in saes.items():
                sparsify.to_sparsify(sae, staging / name if name else staging)
        elif list(saes) == [""]:
            saes[""].save_pretrained(staging)
        else:
            save_many(saes, staging)
    return Path(dst)
