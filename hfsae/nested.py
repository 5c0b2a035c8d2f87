"""Nested dictionaries as flat rows: one home for the dotted keys that configs, metrics and caches show."""

from __future__ import annotations


def flatten(data: dict, prefix: str = "") -> dict:
    """{"model": {"dtype": "float32"}} → {"model.dtype": "float32"}; an empty dict stays a value of its own."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
