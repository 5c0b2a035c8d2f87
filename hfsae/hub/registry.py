"""The registry of friendly SAE names (registry.json shipped in the package): name → repo, folder, format."""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, fields
from importlib import resources

from ..errors import HfsaeError


@dataclass(frozen=True)
class RegistryEntry:
    """Where one named SAE lives on the Hub and in which format."""

    name: str
    repo: str  # Hub repo id
    folder: str  # subfolder of the repo ("" for the root)
    format: str  # hfsae | saelens | sparsify | openai
    revision: str  # branch or commit sha
    provenance: str  # who trained it, from which paper or release
    hook_point: str | None = None
    base_model: str | None = None
    n_latents: int | None = None
    k: int | None = None


class UnknownSAEError(HfsaeError, LookupError):
    """A name that is neither in the registry, nor a Hub repo id, nor a local path."""


@functools.cache
def registry() -> dict[str, RegistryEntry]:
    """Every registry entry by name."""
    text = resources.files("hfsae.hub").joinpath("registry.json").read_text(encoding="utf-8")
    known = {f.name for f in fields(RegistryEntry)}
    entries = [RegistryEntry(**{k: v for k, v in raw.items() if k in known}) for raw in json.loads(text)["saes"]]
    return {entry.name: entry for entry in entries}


def closest_names(name: str, count: int = 3) -> list[str]:
    """The registry names most similar to `name` (difflib), best first."""
    return difflib.get_close_matches(name, list(registry()), n=count, cutoff=0.5)


def unknown_name_error(name: str) -> UnknownSAEError:
    """The error for a name nothing matches, suggesting the closest registry names."""
    suggestions = closest_names(name)
    hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    return UnknownSAEError(
        f"Unknown SAE {name!r}: not a registry name, a Hub repo id ('org/name') or an existing local path.{hint} "
        "`hfsae list` shows every registered name."
    )


def lookup(name: str) -> RegistryEntry:
    """The registry entry called `name`, or an error suggesting the closest names."""
    entry = registry().get(name)
    if entry is None:
        raise unknown_name_error(name)
    return entry
