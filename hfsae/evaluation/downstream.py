"""Downstream loss: the language model's cross-entropy with the SAE's reconstruction spliced in (docs/method.md §4).

Three forward passes per batch: clean, with the activation at the hook point replaced by
`sae.decode(sae.encode(x))` (which undoes the input normalisation), and with it replaced by zeros.
From them: clean CE, spliced CE, ΔCE = spliced − clean, KL(clean ‖ spliced) per token, zero-ablation
CE, and the CE loss recovered (CE_zero − CE_spliced) / (CE_zero − CE_clean): 1 is a perfect
reconstruction, 0 no better than deleting the activation.

Only the positions that count are replaced and scored (`hfsae.activations.FIRST_POSITION_USED`):
position 0 keeps its clean activation, as the SAE was never trained on it, and the predictions made
there are left out of every mean (they are the same in all three passes).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hfsae.activations import FIRST_POSITION_USED, splice


@dataclass
class DownstreamLoss:
    """Next-token losses in nats per token, averaged over every predicted token of the evaluation text."""

    ce_clean: float
    ce_spliced: float
    delta_ce: float
    kl: float
    """KL(clean ‖ spliced) of the next-token distributions, mean over the same predictions as the CEs."""
    ce_zero: float
    ce_loss_recovered: float
    n_tokens: int
    """Number of predicted tokens in the CE means (contexts · (seq − 1 − FIRST_POSITION_USED))."""


def replaced_after_first(replacement: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A splice function x [batch, seq, d] → x with the positions that count replaced by replacement(them)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        kept = x[:, FIRST_POSITION_USED:]
        return torch.cat([x[:, :FIRST_POSITION_USED], replacement(kept).to(x.dtype)], dim=1)

    return fn


def reconstruct(sae) -> Callable[[torch.Tensor], torch.Tensor]:
    """The splice function x [batch, seq, d_in] → the SAE's reconstruction at the positions that count."""
    return replaced_after_first(lambda x: sae.decode(sae.encode(x), x=x))


@contextmanager
def spliced(model, sae, hook_point: str):
    """While active, `model` runs with the SAE's output in place of its activation.

    An SAE replaces the activation at hook_point with its reconstruction. A transcoder reads hook_point and
    replaces the activation at its target_hook_point (e.g. the MLP's output) with its prediction, from the
    same forward pass: its input is recorded on the way.
    """
    target = sae.config.target_hook_point
    if target is None:
        with splice(model, hook_point, reconstruct(sae)):
            yield
        return
    read: list[torch.Tensor] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        read.append(x)
        return x

    def predict(y: torch.Tensor) -> torch.Tensor:
        x = read.pop()[:, FIRST_POSITION_USED:]
        return torch.cat([y[:, :FIRST_POSITION_USED], sae.decode(sae.encode(x), x=x).to(y.dtype)], dim=1)

    with splice(model, hook_point, record), splice(model, target, predict):
        yield


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token: logits [batch, seq, vocab], input_ids [batch, seq] → [batch, seq − 1]."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), input_ids[:, 1:], reduction="none")


def kl_per_token(clean_logits: torch.Tensor, spliced_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean ‖ spliced) of the next-token distributions at each position: [batch, seq, vocab] → [batch, seq]."""
    log_p = clean_logits.float().log_softmax(dim=-1)
    log_q = spliced_logits.float().log_softmax(dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


@torch.no_grad()
def downstream_loss(
    sae,
    model,
    input_ids: torch.Tensor,
    *,
    hook_point: str | None = None,
    batch_size: int = 8,
    quiet: bool = True,
) -> DownstreamLoss:
    """Clean, spliced and zero-ablated CE of `model` on input_ids [contexts, seq] with `sae` at hook_point.

    A transcoder's output replaces its target activation (`spliced`); zero ablation zeroes that target.

    Example:
        >>> loss = downstream_loss(sae, model, input_ids)     # hook point from sae.config
        >>> loss.delta_ce, loss.ce_loss_recovered
    """
    hook_point = hook_point or sae.config.hook_point
    if hook_point is None:
        raise ValueError("The SAE's config names no hook_point; pass hook_point= (e.g. 'layers.8.resid_post').")
    if input_ids.ndim != 2 or input_ids.shape[1] < 2 + FIRST_POSITION_USED:
        raise ValueError(
            f"input_ids must be [contexts, seq] with seq ≥ {2 + FIRST_POSITION_USED}; "
            f"got shape {tuple(input_ids.shape)}."
        )
    input_ids = input_ids.to(next(model.parameters()).device)
    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0}
    for ids in tqdm(input_ids.split(batch_size), desc="downstream loss", disable=quiet):
        clean = model(input_ids=ids, use_cache=False).logits
        with spliced(model, sae, hook_point):
            spliced_logits = model(input_ids=ids, use_cache=False).logits
        with splice(model, sae.config.target_hook_point or hook_point, replaced_after_first(torch.zeros_like)):
            zero = model(input_ids=ids, use_cache=False).logits
        # Predictions from the positions that count: the last position predicts nothing.
        sums["clean"] += next_token_ce(clean, ids)[:, FIRST_POSITION_USED:].sum().item()
        sums["spliced"] += next_token_ce(spliced_logits, ids)[:, FIRST_POSITION_USED:].sum().item()
        sums["zero"] += next_token_ce(zero, ids)[:, FIRST_POSITION_USED:].sum().item()
        sums["kl"] += kl_per_token(clean, spliced_logits)[:, FIRST_POSITION_USED:-1].sum().item()
    n_predicted = input_ids.shape[0] * (input_ids.shape[1] - 1 - FIRST_POSITION_USED)
    ce_clean, ce_spliced, ce_zero = (sums[name] / n_predicted for name in ("clean", "spliced", "zero"))
    # Undefined when deleting the activation changes nothing (e.g. a hook point the output ignores).
    recovered = (ce_zero - ce_spliced) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan")
    return DownstreamLoss(
        ce_clean=ce_clean,
        ce_spliced=ce_spliced,
        delta_ce=ce_spliced - ce_clean,
        kl=sums["kl"] / n_predicted,
        ce_zero=ce_zero,
        ce_loss_recovered=recovered,
        n_tokens=n_predicted,
    )
