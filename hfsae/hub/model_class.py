"""The model class that hub loaders and converters build: the first class built on `HubMixin` (TopKSAE).

`HubMixin.__init_subclass__` records it here. It lives apart from the mixin so that neither side imports
the other's module: the mixin reaches the loaders inside its methods, and the loaders and converters
reach the class through `sae_class()`, never through `hfsae.modeling` (modeling → hub is the one direction).
"""

from __future__ import annotations

_SAE_CLASS: type | None = None


def record_sae_class(cls: type) -> None:
    """Record `cls` unless a class is recorded already (subclasses of TopKSAE do not replace it)."""
    global _SAE_CLASS
    if _SAE_CLASS is None:
        _SAE_CLASS = cls


def sae_class() -> type:
    """The model class built on HubMixin (TopKSAE): what loaders and converters return."""
    # `import hfsae` defines TopKSAE before any loader runs, so this is set whenever it is called.
    assert _SAE_CLASS is not None, "hfsae.modeling defines the SAE class; import hfsae first"
    return _SAE_CLASS
