"""hfsae: TopK sparse autoencoders as first-class Hugging Face models.

    >>> import hfsae
    >>> sae = hfsae.load("path/or/org/repo/or/registry-name")
    >>> code = sae.encode(activations)          # code.indices, code.values: [..., k]
    >>> x_hat = sae.decode(code)

`load`, `train`, `evaluate` and `analyze` import their heavier dependencies (accelerate, datasets) when called,
so `import hfsae` stays light and needs no network; the intervention API (`features`, `steer`, `ablate`,
`clamp`, `splice`, `steering_sweep`, from hfsae.interventions) is imported on first use.
"""

from .configuration import TopKSAEConfig
from .hub.loading import load, load_many
from .locate import locate
from .modeling import SparseCode, TopKSAE, TopKSAEOutput


def train(config=None, **options):
    """Train SAEs as `hfsae train` does: a `TrainConfig`, or its fields as keywords. Returns the results.

    Example: `hfsae.train(n_latents=[4096], k=[32], output_dir="my-sae")`.
    """
    from .training.config import TrainConfig
    from .training.run import train as run_training

    return run_training(config if config is not None else TrainConfig(**options))


def evaluate(sae, **options):
    """Measure an SAE with the paper's metrics (FVU, ΔCE/KL, probes, N2G, …); see `hfsae.evaluation.evaluate`."""
    from .evaluation.evaluate import evaluate as run_evaluation

    return run_evaluation(sae, **options)


def analyze(sae, **options):
    """Per-latent statistics for the explorer (density, top contexts, logit effects); see `hfsae.analysis.analyze`."""
    from .analysis import analyze as run_analysis

    return run_analysis(sae, **options)


_INTERVENTIONS = ("ablate", "clamp", "features", "splice", "steer", "steering_sweep")


def __getattr__(name):
    if name in _INTERVENTIONS:
        from . import interventions

        return getattr(interventions, name)
    raise AttributeError(f"module 'hfsae' has no attribute {name!r}")


__all__ = [
    "SparseCode", "TopKSAE", "TopKSAEConfig", "TopKSAEOutput", "analyze", "evaluate", "load", "load_many", "locate", "train",
    *_INTERVENTIONS,
]
