"""Kept until training/ switches to hfsae.modeling.fvu, the one FVU (this module then goes away)."""

from ..modeling import fvu as normalized_mse

__all__ = ["normalized_mse"]
