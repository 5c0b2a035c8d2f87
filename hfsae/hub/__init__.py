"""Hub integration: friendly names, the formats hfsae reads, loading one or many SAEs, pushing, converting.

    hfsae.load / hfsae.load_many / TopKSAE.from_pretrained    load (hub/loading.py, hub/source.py)
    hfsae.hub.formats.FORMATS                                  the formats, one module each
    hfsae.hub.convert.convert                                  convert local SAEs between formats
    hfsae.hub.push                                             push folders like transformers

This package's own namespace holds only names that need no model class, so that the model's module
can reach the loaders (hub/source.py) without an import cycle.
"""

from ..folder import HookPointNotInRepoError, SAEFolderError
from .files import UnsupportedArchitectureError
from .formats.saelens import to_saelens
from .push import push_folder, push_many, push_to_hub
from .registry import UnknownSAEError
from .source import NotInCacheError, SkippedSAEsWarning

__all__ = [
    "HookPointNotInRepoError",
    "NotInCacheError",
    "SAEFolderError",
    "SkippedSAEsWarning",
    "UnknownSAEError",
    "UnsupportedArchitectureError",
    "push_folder",
    "push_many",
    "push_to_hub",
    "to_saelens",
]
