"""The evaluation metrics, one record each: what `evaluate` writes, the model card shows and the explorer lists.

Each `Metric` names its eval_results.json key, the group that computes it (a group can be skipped
as a whole), how the card and the explorer label it, what it means, which way is better, and how its
value is read from its group's result. Adding a metric is one entry here plus its computation.
It sits below every other module so that the card (`hub`) and `evaluation` can both read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable

# The metric groups, in the order evaluate runs them; all but the first can be skipped.
GROUPS = ("reconstruction", "downstream", "ablation", "n2g", "probes")
SKIPPABLE_GROUPS = GROUPS[1:]


def _mean_of(attribute: str) -> Callable[[list], float | None]:
    """The mean of one attribute over a list of results (the probe tasks); None for no tasks."""

    def read(results: list) -> float | None:
        numbers = [getattr(result, attribute) for result in results]
        return sum(numbers) / len(numbers) if numbers else None

    return read


@dataclass(frozen=True)
class Metric:
    key: str
    """Its eval_results.json key, and the `EvalResults` attribute."""
    group: str
    """The entry of GROUPS whose computation gives it."""
    label: str
    meaning: str
    better: str | None
    """"higher", "lower", or None where neither is (a reference value, a count set by k)."""
    read: Callable[[Any], Any]
    """Its value from the result its group's computation returns."""
    per_k: str | None = None
    """For a value {k': number} (progressive recovery): what each number is ("FVU"); one point per k'."""

    @property
    def description(self) -> str:
        """The meaning with the direction: the card's third column."""
        return f"{self.meaning}; {self.better} is better" if self.better else self.meaning

    def points(self, eval_results: dict) -> list[tuple[str, str, Any]]:
        """(model-index type, label, value) of this metric in eval_results.json: one per k' for a per_k metric,
        none when it is absent. JSON keys k' are strings; points come in increasing k'."""
        if self.key not in eval_results:
            return []
        if self.per_k is None:
            return [(self.key, self.label, eval_results[self.key])]
        values = sorted((eval_results[self.key] or {}).items(), key=lambda point: int(point[0]))
        return [(f"{self.per_k.lower()}_k{k}", f"{self.per_k} at k'={k}", value) for k, value in values]


def _metric(key: str, group: str, label: str, meaning: str, better: str | None, read=None, per_k=None) -> Metric:
    return Metric(key, group, label, meaning, better, read or attrgetter(key), per_k)


METRICS = (
    _metric("fvu", "reconstruction", "FVU", "fraction of variance unexplained (normalised MSE)", "lower"),
    _metric("explained_variance", "reconstruction", "Explained variance", "1 − FVU", "higher"),
    _metric("cosine", "reconstruction", "Reconstruction cosine", "mean cosine similarity of x and x_hat", "higher"),
    _metric("l0", "reconstruction", "L0", "active latents per token", None),
    _metric("dead_fraction", "reconstruction", "Dead fraction", "latents that never fired in the evaluation window", "lower"),
    _metric("progressive", "reconstruction", "Progressive recovery", "FVU with k' latents kept at inference", "lower", per_k="FVU"),
    _metric("ce_clean", "downstream", "CE clean", "next-token cross-entropy of the unmodified model (nats)", None),
    _metric("ce_spliced", "downstream", "CE spliced", "cross-entropy with the reconstruction spliced in at the hook point", "lower"),
    _metric("delta_ce", "downstream", "ΔCE", "CE spliced − CE clean", "lower"),
    _metric("kl", "downstream", "KL(clean ‖ spliced)", "divergence of next-token distributions", "lower"),
    _metric("ce_zero", "downstream", "CE zero-ablated", "cross-entropy with the activation replaced by zeros", None),
    _metric("ce_loss_recovered", "downstream", "CE loss recovered", "(CE zero − CE spliced) / (CE zero − CE clean); 1 is perfect", "higher"),
    _metric("ablation_sparsity", "ablation", "Ablation sparsity", "(L1/L2)² / (V·T) of one latent's logit effects", "lower", attrgetter("mean")),
    _metric("n2g_precision", "n2g", "N2G precision", "of token-pattern explanations on held-out text", "higher", attrgetter("precision")),
    _metric("n2g_recall", "n2g", "N2G recall", "of token-pattern explanations on held-out text", "higher", attrgetter("recall")),
    _metric("probe_loss", "probes", "Probe loss", "best single-latent logistic probe, mean over tasks", "lower", _mean_of("loss")),
    _metric("probe_loss_baseline", "probes", "Probe loss (raw channels)", "the same with raw activation channels, the baseline", None, _mean_of("baseline_loss")),
)  # fmt: skip

METRIC_BY_KEY = {metric.key: metric for metric in METRICS}


def metric_values(group_results: dict[str, Any]) -> dict[str, Any]:
    """{key: value} of every metric, read from {group: its result}; None for a group that did not run."""
    return {
        metric.key: None if group_results.get(metric.group) is None else metric.read(group_results[metric.group])
        for metric in METRICS
    }
