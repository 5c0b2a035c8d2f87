"""Hub integration: friendly names, loading one or many SAEs in any supported format, pushing, converting."""

from ..folder import HookPointNotInRepoError
from .convert import convert
from .dictionary_learning import from_dictionary_learning
from .files import SAEFileError, UnsupportedArchitectureError
from .loading import NotInCacheError, list_saes, load, load_many
from .openai import from_openai
from .push import push_folder, push_many, push_to_hub
from .registry import UnknownSAEError
from .saelens import from_saelens, to_saelens
from .sparsify import from_sparsify

__all__ = [
    "HookPointNotInRepoError",
    "NotInCacheError",
    "SAEFileError",
    "UnknownSAEError",
    "UnsupportedArchitectureError",
    "convert",
    "from_dictionary_learning",
    "from_openai",
    "from_saelens",
    "from_sparsify",
    "list_saes",
    "load",
    "load_many",
    "push_folder",
    "push_many",
    "push_to_hub",
    "to_saelens",
]
