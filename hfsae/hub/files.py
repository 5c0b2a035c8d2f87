"""Reading SAE files safely (JSON, safetensors, weights-only pickles) with errors that name the file."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import HfsaeError
from ..folder import SAEFolderError


class UnsupportedArchitectureError(HfsaeError, ValueError):
    """A foreign SAE whose forward pass a TopKSAE cannot reproduce exactly."""


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, or an error naming the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a weights file at {path}, but there is none.")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEFolderError(
            f"{path} is not a readable safetensors file ({err}). It may be truncated: re-download or re-save it."
        ) from err


def read_torch_state_dict(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """A `.pt` state dict loaded with `weights_only=True`: tensors and plain values only, never code.

    `mmap=True` maps the tensors instead of reading them (enough to look at the keys of a large file);
    files in torch's legacy (non-zip) format cannot be mapped and are read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a .pt weights file at {path}, but there is none.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        # weights_only refuses anything but tensors and plain containers: a pickled module or class
        # would run code on load, which hfsae never allows.
        raise SAEFolderError(
            f"{path} holds more than tensors and plain values, so it cannot be loaded safely "
            f"(torch.load with weights_only=True refused it: {str(err).splitlines()[0]}). "
            "Ask for a plain state dict, or re-save one with torch.save(model.state_dict(), path)."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise SAEFolderError(f"{path} is not a readable PyTorch file ({err}). It may be truncated.") from err
    if not isinstance(state, dict):
        raise SAEFolderError(f"{path} should hold a state dict; it holds a {type(state).__name__}.")
    return state


def require_tensors(tensors: dict[str, Any], names: list[str], path: str | os.PathLike) -> None:
    """Raise naming the file when any of `names` is missing from `tensors`."""
    missing = [name for name in names if name not in tensors]
    if missing:
        raise SAEFolderError(
            f"{path} lacks the tensor(s) {', '.join(missing)}; it holds {', '.join(sorted(tensors)) or 'nothing'}."
        )


def positive_int(value: Any, name: str, where: str | os.PathLike) -> int:
    """`value` when it is a whole number ≥ 1 (an int, or a float like 32.0), else SAEFolderError naming the field."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())  # dictionary_learning keeps k as a buffer
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SAEFolderError(f"{where}: {name} must be a whole number ≥ 1; got {value!r}.")
    return value
