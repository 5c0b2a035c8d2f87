"""The weights a run keeps: raw or EMA, chosen on some held-out rows and measured on the others.

The paper keeps the better of the two. Choosing on the rows one then reports would flatter the reported FVU by
the choice, so `split_heldout` cuts the held-out rows in two, and `choose_weights` chooses on the first part and
measures on the second with the evaluation's own metrics (`hfsae.evaluation.metrics`).
"""

from __future__ import annotations

import torch

from ..evaluation.metrics import dead_fraction, fvu_of, l0, reconstruct
from ..modeling import TopKSAE

# Share of the held-out rows that only chooses between raw and EMA weights. A minority share: the choice only
# ranks two models, while the reported numbers want the precision.
SELECTION_SHARE = 0.25


def split_heldout(heldout: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(selection, reported) rows of every hook point: the first SELECTION_SHARE choose raw or EMA weights,
    the rest measure the reported metrics.

    Disjoint by rows, not by documents: the tables carry no document ids, and the harvest shuffles rows within
    a window of consecutive contexts, so only the documents near the cut give rows to both parts. The choice is
    one bit, and no reported metric is measured on a row that made it.
    """
    rows = next(iter(heldout.values())).shape[0]
    if rows < 2:
        raise ValueError(
            f"Got {rows} held-out rows; at least 2 are needed (some choose raw or EMA weights, the rest measure "
            "the kept ones): use eval_tokens of at least 2."
        )
    cut = max(1, int(rows * SELECTION_SHARE))
    return {name: x[:cut] for name, x in heldout.items()}, {name: x[cut:] for name, x in heldout.items()}


@torch.no_grad()
def heldout_measures(sae: TopKSAE, part: dict[str, torch.Tensor], hook_point: str) -> tuple[float, float, float]:
    """(FVU, fraction of latents that never fire, L0) of `sae` on held-out rows {hook point: [tokens, d]}.

    It reads `hook_point` and reconstructs its own target (a transcoder's) or its input. FVU is in the
    activation's own scale (x_hat is what would be spliced back); L0 is measured (BatchTopK's varies), with the
    selection of inference (eval mode: a BatchTopK threshold).
    """
    sae.eval()
    device = sae.W_dec.device
    target = sae.config.target_hook_point or hook_point
    code, x_hat = reconstruct(sae, part[hook_point].to(device))
    error = fvu_of(x_hat, part[target].to(device))
    return error, dead_fraction(code.indices, code.values, sae.config.n_latents), l0(code.values).item()


def choose_weights(raw: TopKSAE, ema: TopKSAE, hook_point: str, selection: dict[str, torch.Tensor],
                   reported: dict[str, torch.Tensor]) -> tuple[TopKSAE, dict]:  # fmt: skip
    """(the kept model, its metrics): EMA or raw weights, whichever has the lower FVU on the selection rows; both
    are measured on the reported rows, and the kept one's measures are reported."""
    candidates = {"raw": raw, "ema": ema}
    chosen_on = {name: heldout_measures(sae, selection, hook_point)[0] for name, sae in candidates.items()}
    weights = "ema" if chosen_on["ema"] <= chosen_on["raw"] else "raw"
    measured = {name: heldout_measures(sae, reported, hook_point) for name, sae in candidates.items()}
    fvu_value, unfired, measured_l0 = measured[weights]
    metrics = {
        "fvu": fvu_value,
        "fvu_raw": measured["raw"][0],
        "fvu_ema": measured["ema"][0],
        "weights": weights,
        "selection_fvu_raw": chosen_on["raw"],
        "selection_fvu_ema": chosen_on["ema"],
        "heldout_unfired_fraction": unfired,
        "l0": measured_l0,
        "selection_tokens": selection[hook_point].shape[0],
        "heldout_tokens": reported[hook_point].shape[0],
    }
    return candidates[weights], metrics
