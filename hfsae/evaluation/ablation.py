"""Ablation sparsity: how few logits change when one latent is removed from the spliced reconstruction (docs/method.md §4).

At a sampled token, the SAE's reconstruction is spliced in at the hook point; then each active
latent in turn has its decoder contribution removed at that token (its value set to 0 before
decoding, so the input normalisation is undone correctly), and the change of the logits at that
token and the following ones, `horizon` positions in all, forms a vector of V·T entries (V the
vocabulary, T = horizon). Its sparsity is (‖Δ‖₁ / ‖Δ‖₂)² / (V·T): 1 when every logit moves by the
same amount, 1/(V·T) when a single logit moves. Lower is sparser; we report the mean over the
sampled (token, latent) pairs. Tokens are sampled among the positions that count, and position 0
keeps its clean activation (`hfsae.activations.FIRST_POSITION_USED`), as in the downstream loss.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hfsae.activations import FIRST_POSITION_USED, capture, splice
from hfsae.modeling import FIRING_THRESHOLD

from .downstream import replaced_after_first


@dataclass
class AblationSparsity:
    """Mean ablation sparsity over sampled (token, latent) pairs, and each pair's value."""

    mean: float
    values: list[float]
    horizon: int
    n_positions: int


def sparsity(delta: torch.Tensor) -> torch.Tensor:
    """(L1/L2)² / numel over the last two dimensions of logit changes delta: [..., T, V] → [...].

    A delta that is zero everywhere has no direction; it gets NaN.
    """
    flat = delta.flatten(start_dim=-2).double()
    l1, l2 = flat.abs().sum(dim=-1), flat.norm(dim=-1)
    return ((l1 / l2).pow(2) / flat.shape[-1]).float()


def _ablated_logits(
    sae, model, ids: torch.Tensor, hook_point: str, position: int, latents: torch.Tensor
) -> torch.Tensor:
    """Logits [1 + len(latents), seq − position, vocab] for ids [seq] from `position` on: row 0 the
    plain splice, row r without latents[r−1] at position."""
    rows, keep = 1 + len(latents), ids.shape[0] - position

    def ablate(x: torch.Tensor) -> torch.Tensor:  # x: the positions that count, [rows, seq − FIRST_POSITION_USED, d]
        code = sae.encode(x)
        ablated = torch.zeros_like(code.values, dtype=torch.bool)
        at = position - FIRST_POSITION_USED
        ablated[1:, at] = code.indices[1:, at] == latents[:, None]
        return sae.decode(dataclasses.replace(code, values=code.values.masked_fill(ablated, 0)))

    with splice(model, hook_point, replaced_after_first(ablate)):
        try:
            # Only the last positions' logits are needed: at V = 49k the rest would be most of the memory.
            logits = model(input_ids=ids.expand(rows, -1), use_cache=False, logits_to_keep=keep).logits
        except TypeError:  # a model class without logits_to_keep
            logits = model(input_ids=ids.expand(rows, -1), use_cache=False).logits
    return logits[:, -keep:]


@torch.no_grad()
def ablation_sparsity(
    sae,
    model,
    input_ids: torch.Tensor,
    *,
    hook_point: str | None = None,
    n_positions: int = 4,
    horizon: int = 4,
    seed: int = 0,
    quiet: bool = True,
) -> AblationSparsity:
    """Ablation sparsity of `sae` at hook_point, at n_positions random tokens of input_ids [contexts, seq].

    Every latent active (value > 1e-3) at a sampled token is ablated in turn, in one batched forward
    over the context truncated to the last logit needed.
    """
    hook_point = hook_point or sae.config.hook_point
    if hook_point is None:
        raise ValueError("The SAE's config names no hook_point; pass hook_point= (e.g. 'layers.8.resid_post').")
    input_ids = input_ids.to(next(model.parameters()).device)
    contexts, seq = input_ids.shape
    if not 1 <= horizon <= seq - FIRST_POSITION_USED:
        raise ValueError(
            f"horizon must be in 1..{seq - FIRST_POSITION_USED} (the positions that count in a context of {seq}); "
            f"got horizon={horizon}."
        )
    rng = random.Random(seed)
    values = []
    for _ in tqdm(range(n_positions), desc="ablation sparsity", disable=quiet):
        context, position = rng.randrange(contexts), rng.randrange(FIRST_POSITION_USED, seq - horizon + 1)
        ids = input_ids[context, : position + horizon]
        x = capture(model, ids[None], [hook_point])[hook_point][0, position]
        code = sae.encode(x)
        latents = code.indices[code.values > FIRING_THRESHOLD]
        if len(latents) == 0:
            continue
        logits = _ablated_logits(sae, model, ids, hook_point, position, latents)
        values.extend(sparsity(logits[1:] - logits[:1]).tolist())
    finite = [value for value in values if not math.isnan(value)]
    mean = sum(finite) / len(finite) if finite else float("nan")
    return AblationSparsity(mean=mean, values=values, horizon=horizon, n_positions=n_positions)
