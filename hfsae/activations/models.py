"""The one loader of causal language models: 'builtin', a local model folder, or a Hub id.

    model, tokenizer = load_language_model("builtin")                       # SmolLM2-135M, CPU
    model, tokenizer = load_language_model("gpt2", device="cuda")           # bf16 on a GPU
    model, tokenizer = load_language_model("big/model", device_map="auto", max_memory={0: "20GiB"})

The model comes back in eval mode. Whatever its dtype, ActivationSource hands the SAE float32 rows
(the SAE keeps float32 master weights, docs/method.md §6).
"""

from __future__ import annotations

from typing import Any

import torch

from hfsae.activations.builtin import BUILTIN_MODEL, builtin_model_folder, is_builtin, quiet_transformers

from ..errors import HfsaeError

__all__ = [
    "MODEL_DTYPES",
    "DeviceError",
    "LanguageModelError",
    "check_device",
    "cpu_default_dtype",
    "load_builtin_model",
    "load_language_model",
    "resolve_dtype",
]

MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_default_dtype() -> torch.dtype:
    """dtype "auto" on the CPU: bfloat16 where the CPU computes it natively (AVX512-BF16), else float32.

    On the built-in model bfloat16 runs the forward pass several times faster than float32, and its
    activations differ from float32's by FVU 1.7e-4 (cosine 0.99996), a thousandth of a trained SAE's
    held-out FVU (0.19); benchmarks/bench_train.py measures both (docs/performance.md). A CPU without native bf16 arithmetic converts every
    operand, so it keeps float32 there (not measured here).
    """
    return torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else torch.float32


class LanguageModelError(HfsaeError, FileNotFoundError):
    """The language model (or the asked revision of it) cannot be loaded."""


class DeviceError(HfsaeError, ValueError):
    """The device (or device_map) asked for is not a device, or not one this machine has."""


# device_map values that name a placement strategy of Accelerate rather than one device.
PLACEMENTS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device(value: str | int | torch.device, *, option: str = "device") -> None:
    """DeviceError unless `value` names a device this machine has ('cpu', 'cuda', 'cuda:1', 0, ...)."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"{option}={value!r} is not a device; give 'cpu', 'cuda', 'cuda:0', 'mps', ...") from err
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if device.type in ("cpu", "meta") or not hasattr(backend, "is_available"):
        return  # a device type torch knows no module for (a plugin's): its own loader reports on it
    if not backend.is_available():
        raise DeviceError(
            f"{option}={value!r} asks for a {device.type} device, but torch here has none "
            f"(torch {torch.__version__}); use 'cpu', or install a torch build for that device."
        )
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise DeviceError(f"{option}={value!r}: this machine has {count} {device.type} device(s), 0–{count - 1}.")


def _check_device_map(device_map: str | dict) -> None:
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    for value in values:
        if not (isinstance(value, str) and value in (*PLACEMENTS, "disk")):
            check_device(value, option="device_map")


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype:
    """The torch dtype for `dtype` ("auto"/None: bfloat16 on an accelerator, cpu_default_dtype() on the CPU)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in MODEL_DTYPES.values():
            raise ValueError(f"Model dtype {dtype} is not supported; use one of {sorted(MODEL_DTYPES)}.")
        return dtype
    if dtype is None or dtype == "auto":
        on_cpu = device is None or torch.device(device).type == "cpu"
        return cpu_default_dtype() if on_cpu else torch.bfloat16
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"Model dtype {dtype!r} is not one of 'auto', {', '.join(map(repr, MODEL_DTYPES))}.")
    return MODEL_DTYPES[dtype]


def load_language_model(
    name: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    trust_remote_code: bool = False,
    quiet: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode for 'builtin', a local model folder or a Hub id.

    Args:
        device: where the model goes (ignored with device_map).
        dtype: "float32", "bfloat16", "float16", or None/"auto" (bfloat16 on an accelerator; on the
            CPU the measured faster choice, cpu_default_dtype()).
        revision: a Hub branch, tag or commit.
        device_map: Accelerate's big-model placement ("auto", "balanced", or {module: device}) for a
            model larger than one device; max_memory caps each device ({0: "20GiB", "cpu": "64GiB"}).
        trust_remote_code: run model code from the Hub repo; off unless asked.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device_map is None:
        check_device(device)
    else:
        _check_device_map(device_map)
    torch_dtype = resolve_dtype(dtype, device if device_map is None else "cuda")
    if is_builtin(name):
        if revision is not None:
            raise ValueError(f"The built-in model {BUILTIN_MODEL} has no revisions; got revision={revision!r}.")
        source = builtin_model_folder(quiet=quiet)
    else:
        source = name
    options = {"revision": revision, "trust_remote_code": trust_remote_code, "dtype": torch_dtype}
    if device_map is not None:
        options.update(device_map=device_map, max_memory=max_memory)
    elif max_memory is not None:
        raise ValueError("max_memory applies only with device_map (e.g. device_map='auto').")
    with quiet_transformers(quiet):
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code
            )
            model = AutoModelForCausalLM.from_pretrained(source, **options)
        except OSError as err:
            where = f" at revision {revision!r}" if revision else ""
            raise LanguageModelError(
                f"Cannot load language model {name!r}{where}: {_first_line(err)} Give 'builtin', a local model "
                "folder, or a Hub id (with network access, or already in the Hugging Face cache)."
            ) from err
    if device_map is None:
        model = model.to(device)
    if is_builtin(name):
        model.name_or_path = BUILTIN_MODEL
    return model.eval(), tokenizer


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if line.endswith(".") else line + "."


def load_builtin_model(*, device: str = "cpu", quiet: bool = True):
    """The built-in model and tokenizer (LlamaForCausalLM, 30 layers, d 576), float32, in eval mode
    (`load_language_model("builtin", dtype="float32")`)."""
    return load_language_model("builtin", device=device, dtype="float32", quiet=quiet)
