"""Measuring SAEs the way the paper does (docs/method.md §4–5): metrics, downstream loss, N2G, probes, ablation, scaling.

    from hfsae.evaluation import evaluate, write_eval_results
    results = evaluate(sae)                       # EvalResults; options are EvalConfig fields
    write_eval_results("my-sae", results)         # eval_results.json, n2g_explanations.json

One file per metric: metrics.py (FVU, L0, dead fraction, cosine, progressive recovery),
downstream.py (spliced CE, KL, CE recovered), ablation.py, n2g.py, probes.py; evaluate.py runs
them all; scaling.py fits scaling laws to sweep results.
"""

from .evaluate import EvalConfig, EvalResults, evaluate, write_eval_results

__all__ = ["EvalConfig", "EvalResults", "evaluate", "write_eval_results"]
