"""Named places in a causal LM where activations are read (capture) or replaced (splice).

One naming scheme for every architecture, resolved from the model's own decoder-layer list:

    layers.{i}.resid_pre    input of decoder layer i (the residual stream before it)
    layers.{i}.resid_post   output of decoder layer i (first element when the layer returns a tuple)
    layers.{i}.attn_out     output of layer i's attention block (self_attn / attn / attention)
    layers.{i}.mlp_out      output of layer i's MLP block (mlp / feed_forward)
    embed_tokens            output of the token embedding (model.get_input_embeddings()), as sparsify names it
    <module path>[:input|:output]   any module, e.g. "model.layers.8.mlp" (default: output)

Example:

    acts = capture(model, input_ids, ["layers.8.resid_post"])   # {"layers.8.resid_post": [batch, seq, d]}
    with splice(model, "layers.8.resid_post", lambda x: sae(x).x_hat):
        logits = model(input_ids).logits
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import HfsaeError

__all__ = [
    "HookPoint",
    "HookPointError",
    "capture",
    "decoder_layers",
    "resolve",
    "splice",
    "valid_hook_points",
]

LAYER_SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")
EMBEDDING = "embed_tokens"
# Submodule names of the attention and MLP blocks across GPT-2, Llama, GPT-NeoX, Qwen2, Gemma and
# most other transformers decoders; the first one a layer has wins.
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")

_LAYER_NAME = re.compile(r"^layers\.(-?\d+)\.(\w+)$")


class HookPointError(HfsaeError, LookupError):
    """The model has no activation at the requested hook point."""


@dataclass(frozen=True)
class HookPoint:
    """A resolved hook point: the module whose input or output is the activation."""

    name: str
    module: nn.Module
    kind: Literal["input", "output"]
    layer: int | None  # index of the decoder layer that holds the module, None outside the layers


def _model_name(model: nn.Module) -> str:
    return getattr(model, "name_or_path", None) or type(model).__name__


def _num_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for attribute in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attribute, None)
        if isinstance(value, int):
            return value
    return None


def _decoder_layers_with_path(model: nn.Module) -> tuple[str, nn.ModuleList]:
    n_layers = _num_layers(model)
    candidates = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
    ]
    # The decoder layers are the ModuleList as long as the config's layer count. Without a count,
    # or if none matches, fall back to the longest list of identical blocks.
    for path, module in candidates:
        if n_layers is not None and len(module) == n_layers:
            return path, module
    uniform = [(path, m) for path, m in candidates if len({type(block) for block in m}) == 1]
    if n_layers is None and uniform:
        return max(uniform, key=lambda item: len(item[1]))
    raise HookPointError(
        f"{_model_name(model)}: found no list of decoder layers (an nn.ModuleList of length "
        f"num_hidden_layers={n_layers}). Name the module directly with its path, e.g. "
        f"'<path>:output'; its module paths are listed by model.named_modules()."
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers: the nn.ModuleList whose length is config.num_hidden_layers."""
    return _decoder_layers_with_path(model)[1]


def _child(layer: nn.Module, names: Sequence[str]) -> nn.Module | None:
    for name in names:
        child = getattr(layer, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


def valid_hook_points(model: nn.Module) -> list[str]:
    """Every name `resolve` accepts for this model: the layer sites, then all module paths."""
    layers = decoder_layers(model)
    names = [EMBEDDING] if _embedding(model) is not None else []
    for i, layer in enumerate(layers):
        names += [f"layers.{i}.resid_pre", f"layers.{i}.resid_post"]
        if _child(layer, ATTENTION_NAMES) is not None:
            names.append(f"layers.{i}.attn_out")
        if _child(layer, MLP_NAMES) is not None:
            names.append(f"layers.{i}.mlp_out")
    names += [path for path, _ in model.named_modules() if path]
    return names


def _unknown(model: nn.Module, name: str, detail: str) -> HookPointError:
    valid = valid_hook_points(model)
    nearest = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    n = len(decoder_layers(model))
    hint = f" Nearest: {', '.join(nearest)}." if nearest else ""
    return HookPointError(
        f"{_model_name(model)} has no hook point {name!r} ({detail}). Valid: "
        f"layers.{{0–{n - 1}}}.{{{','.join(LAYER_SITES)}}}, or a module path from "
        f"model.named_modules() with an optional ':input' or ':output' suffix.{hint}"
    )


def _layer_of(model: nn.Module, module: nn.Module) -> int | None:
    for i, layer in enumerate(decoder_layers(model)):
        if any(sub is module for sub in layer.modules()):
            return i
    return None


def _embedding(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_input_embeddings", None)
    try:
        return get() if callable(get) else None
    except NotImplementedError:  # transformers' default for a model without token embeddings
        return None


def resolve(model: nn.Module, name: str) -> HookPoint:
    """The module and kind behind a hook point name; HookPointError names the valid ones."""
    if not isinstance(name, str):
        raise HookPointError(f"A hook point is a string such as 'layers.8.resid_post'; got {name!r}.")
    if name == EMBEDDING and (embedding := _embedding(model)) is not None:
        return HookPoint(name, embedding, "output", None)
    match = _LAYER_NAME.match(name)
    if match and match.group(2) in LAYER_SITES:
        layers = decoder_layers(model)
        i, site = int(match.group(1)), match.group(2)
        if not 0 <= i < len(layers):
            raise HookPointError(
                f"{_model_name(model)} has {len(layers)} layers (0–{len(layers) - 1}); got layer {i} "
                f"in hook point {name!r}. Choose a layer in that range."
            )
        layer = layers[i]
        if site == "resid_pre":
            return HookPoint(name, layer, "input", i)
        if site == "resid_post":
            return HookPoint(name, layer, "output", i)
        names = ATTENTION_NAMES if site == "attn_out" else MLP_NAMES
        block = _child(layer, names)
        if block is None:
            children = [child for child, _ in layer.named_children()]
            raise _unknown(model, name, f"layer {i} has no submodule named {'/'.join(names)}; it has {children}")
        return HookPoint(name, block, "output", i)

    path, _, suffix = name.partition(":")
    if suffix not in ("", "input", "output"):
        raise _unknown(model, name, f"the suffix must be ':input' or ':output', not ':{suffix}'")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise _unknown(model, name, "not a layer site nor a module path") from None
    return HookPoint(name, module, "input" if suffix == "input" else "output", _layer_of(model, module))


def _resolve_all(model: nn.Module, hook_points: str | HookPoint | Sequence[str | HookPoint]) -> list[HookPoint]:
    if isinstance(hook_points, (str, HookPoint)):
        hook_points = [hook_points]
    resolved = [point if isinstance(point, HookPoint) else resolve(model, point) for point in hook_points]
    if not resolved:
        raise HookPointError("No hook points given; name at least one, e.g. 'layers.8.resid_post'.")
    return resolved


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _hidden_input(args: tuple, kwargs: dict) -> torch.Tensor:
    # Decoder layers get the residual stream as their first argument; a few call sites pass it by
    # keyword instead.
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(iter(kwargs.values()))


class _StopForward(HfsaeError):
    """Raised from a hook once every requested activation is captured, to skip the rest of the model."""


@contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture(
    model: nn.Module,
    input_ids: torch.Tensor,
    hook_points: str | HookPoint | Sequence[str | HookPoint],
    *,
    attention_mask: torch.Tensor | None = None,
    stop_early: bool = True,
) -> dict[str, torch.Tensor]:
    """Activations at the hook points for input_ids [batch, seq]: {name: [batch, seq, d]}.

    With stop_early, the forward pass ends as soon as every hook point has been reached, so layers
    after the deepest hooked one never run. Gradients flow unless the caller disables them.
    """
    points = _resolve_all(model, hook_points)
    captured: dict[str, torch.Tensor] = {}

    def record(point: HookPoint, activation: torch.Tensor) -> None:
        # A module called twice (shared weights) keeps its first activation.
        captured.setdefault(point.name, activation)
        if stop_early and len(captured) == len(points):
            raise _StopForward

    handles = []
    for point in points:
        if point.kind == "input":
            hook = lambda module, args, kwargs, point=point: record(point, _hidden_input(args, kwargs))
            handles.append(point.module.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            hook = lambda module, args, output, point=point: record(point, _first(output))
            handles.append(point.module.register_forward_hook(hook))

    with _hooks(handles):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    missing = [point.name for point in points if point.name not in captured]
    if missing:
        raise HookPointError(
            f"{_model_name(model)} never ran the modules behind hook points {missing} in its forward "
            f"pass; choose modules that the forward calls (see valid_hook_points(model))."
        )
    return {point.name: captured[point.name] for point in points}


@contextmanager
def splice(
    model: nn.Module,
    hook_point: str | HookPoint,
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[HookPoint]:
    """While active, the activation at hook_point [batch, seq, d] is replaced by fn(activation)."""
    (point,) = _resolve_all(model, hook_point)
    if point.kind == "input":

        def replace_input(module, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
            return args, {**kwargs, key: fn(kwargs[key])}

        handle = point.module.register_forward_pre_hook(replace_input, with_kwargs=True)
    else:

        def replace_output(module, args, output):
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            if isinstance(output, list):
                return [fn(output[0]), *output[1:]]
            return fn(output)

        handle = point.module.register_forward_hook(replace_output)
    with _hooks([handle]):
        yield point
