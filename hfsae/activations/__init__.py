"""Activations of causal LMs: hook points, the built-in model and corpus, text and activation sources."""

from hfsae.activations.builtin import BUILTIN_MODEL, builtin_texts
from hfsae.activations.hook_points import (
    HookPoint,
    HookPointError,
    capture,
    decoder_layers,
    resolve,
    splice,
    valid_hook_points,
)
from hfsae.activations.models import LanguageModelError, load_builtin_model, load_language_model
from hfsae.activations.positions import FIRST_POSITION_USED, SKIP_FIRST_POSITION, positions_used
from hfsae.activations.source import ActivationSource
from hfsae.activations.text import DatasetUnavailableError, TextColumnError, TextSource, token_contexts

__all__ = [
    "BUILTIN_MODEL",
    "FIRST_POSITION_USED",
    "SKIP_FIRST_POSITION",
    "LanguageModelError",
    "ActivationSource",
    "DatasetUnavailableError",
    "HookPoint",
    "HookPointError",
    "TextColumnError",
    "TextSource",
    "builtin_texts",
    "capture",
    "decoder_layers",
    "load_builtin_model",
    "load_language_model",
    "positions_used",
    "resolve",
    "splice",
    "token_contexts",
    "valid_hook_points",
]
