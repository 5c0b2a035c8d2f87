"""Training TopK SAEs: dead-latent statistics, EMA, checkpoints and the trainer.

`TrainConfig`, `Trainer` and `train` load lazily, so that `import hfsae` does not import accelerate.
"""

from importlib import import_module

_LAZY = {"TrainConfig": ".config", "Trainer": ".trainer", "TrainResult": ".trainer", "train": ".run"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
