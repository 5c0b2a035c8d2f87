"""hfsae: TopK sparse autoencoders as first-class Hugging Face models."""

from .configuration import TopKSAEConfig
from .modeling import SparseCode, TopKSAE, TopKSAEOutput

__all__ = ["SparseCode", "TopKSAE", "TopKSAEConfig", "TopKSAEOutput"]
