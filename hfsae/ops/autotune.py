"""Paths chosen by measurement on the machine that runs them, cached on disk (like cuDNN's benchmark mode).

Where two exact implementations trade places from one machine to another (the AuxK path, the CUDA
encoder), `choose` times each once per (machine, dtype, shape class) on the spot, keeps the faster,
logs the choice once and remembers it in `~/.cache/hfsae/autotune.json` ($HFSAE_CACHE moves it).
What decides, first to last:

    set_path(op, name)            an option set in code (None clears it)
    $HFSAE_<OP>_PATH              e.g. HFSAE_AUXK_PATH=dense, HFSAE_ENCODER_PATH=fused
    the cache                     this process's, then the file's
    a measurement                 unless HFSAE_AUTOTUNE=0, or the work is too small to be worth timing
    the caller's fallback         a fixed rule: what runs when measuring is off
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..user_cache import user_cache_dir

logger = logging.getLogger(__name__)

AUTOTUNE_ENV = "HFSAE_AUTOTUNE"
CACHE_FILE = "autotune.json"
# Timed runs per candidate after one warm-up, interleaved so that machine noise hits each alike. Each
# candidate keeps its fastest run: noise (other processes, a busy core) only ever adds time, so the minimum
# is the steadiest estimate of what a path costs (a median once cached a clearly slower CPU encoder
# block, and a cached choice is never measured again).
REPEATS = 5

_overrides: dict[str, str] = {}
_cache: dict[str, str] | None = None  # key → choice; loaded from disk on first use


def set_path(op: str, name: str | None) -> None:
    """Force `op` (e.g. "auxk", "encoder") to take path `name` in this process; None goes back to choosing."""
    if name is None:
        _overrides.pop(op, None)
    else:
        _overrides[op] = name


def env_var(op: str) -> str:
    """The environment variable that forces a path for `op`: HFSAE_AUXK_PATH for "auxk"."""
    return f"HFSAE_{op.upper()}_PATH"


def autotune_enabled() -> bool:
    """Whether unknown choices are measured (HFSAE_AUTOTUNE=1, the default) or take the fallback (=0)."""
    value = os.environ.get(AUTOTUNE_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{AUTOTUNE_ENV} must be 0 (fixed rules) or 1 (measure once per shape class); got {value!r}.")
    return value == "1"


def cache_path() -> Path:
    """The file that keeps measured choices across processes."""
    return user_cache_dir() / CACHE_FILE


def machine_key(device: torch.device | str) -> str:
    """What a measurement is valid for: the processor (or GPU), its thread count and torch's version."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        name = f"{platform.processor() or platform.machine()}/{capability}/{torch.get_num_threads()}threads"
    return f"{device.type}:{name}:torch{torch.__version__}"


def size_class(value: int) -> int:
    """`value` rounded to a power of two: shapes within a factor √2 share one measurement."""
    return 1 << max(0, round(value).bit_length() - 1) if value >= 1 else 0


def _load_cache() -> dict[str, str]:
    global _cache
    if _cache is None:
        _cache = {}
        path = cache_path()
        if path.exists():
            from ..folder import read_json

            try:
                _cache = {str(k): str(v) for k, v in read_json(path).items()}
            except ValueError as err:  # a damaged cache is re-measured, never fatal
                logger.warning("Ignoring %s (%s); paths will be measured again.", path, err)
    return _cache


def _store(key: str, choice: str) -> None:
    from ..folder import write_json_atomic

    cache = _load_cache()
    cache[key] = choice
    try:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, dict(sorted(cache.items())))
    except OSError as err:  # a read-only home still runs, measuring once per process
        logger.warning("Could not save the autotune cache (%s); choices hold for this process only.", err)


def measure(candidates: dict[str, Callable[[], object]], *, device: torch.device | str = "cpu", repeats: int = REPEATS) -> dict[str, float]:
    """Fastest seconds of each candidate: one warm-up each, then `repeats` interleaved rounds."""
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for run in candidates.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def choose(
    op: str,
    key: str,
    paths: Sequence[str],
    candidates: Callable[[], dict[str, Callable[[], object]]],
    *,
    fallback: str,
    device: torch.device | str = "cpu",
    worth_measuring: bool = True,
) -> str:
    """The path of `op` to take for `key` (machine, dtype and shape class): see the module docstring.

    `candidates()` builds, only when a measurement is due, a callable per path that runs it once on
    inputs of the key's shape class. `worth_measuring=False` (work too small for the choice to
    matter) takes the fallback without timing or caching anything.
    """
    names = list(paths)
    forced = _overrides.get(op) or os.environ.get(env_var(op))
    if forced:
        if forced not in names:
            raise ValueError(
                f"Unknown {op} path {forced!r} (from set_path or ${env_var(op)}); choose one of {', '.join(names)}."
            )
        return forced
    full_key = f"{op}|{key}"
    cache = _load_cache()
    if cache.get(full_key) in names:
        return cache[full_key]
    if not worth_measuring or not autotune_enabled():
        return fallback
    seconds = measure(candidates(), device=device)
    choice = min(seconds, key=seconds.get)
    logger.info(
        "hfsae %s path for %s: %s (%s; set $%s to force one).",
        op, key, choice, ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in seconds.items()), env_var(op),
    )  # fmt: skip
    _store(full_key, choice)
    return choice


def forget() -> None:
    """Drop this process's cached choices and overrides (the file stays); the next `choose` reads it again."""
    global _cache
    _cache = None
    _overrides.clear()
