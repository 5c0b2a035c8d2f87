"""Which hook point is this SAE for? Its FVU at the declared site and the sites next to it.

A converted SAE carries the hook point its publisher's naming implies; a wrong mapping (a TransformerLens
hook name read the wrong way, an off-by-one layer, an MLP output before rather than after a post-norm)
gives an SAE that loads but reconstructs badly. `locate` runs a few thousand tokens through the model,
reconstructs the activations of each candidate site with the SAE, and reports the FVU of each:

    result = hfsae.locate(sae, model, tokenizer)
    result.best, result.fits            # 'layers.10.resid_post', [(site, fvu), ...] best first
    result.warning                      # a sentence when another site fits clearly better, else None

Candidates: resid_pre / resid_post of the declared layer and of the layers before and after it, its
attention and MLP outputs, and the output of a post-MLP norm where the layer has one (Gemma-2/3's
post_feedforward_layernorm, which TransformerLens's hook_mlp_out follows). Sites of another width are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn

from .activations.hook_points import capture, decoder_layers, valid_hook_points
from .activations.positions import positions_used
from .activations.text import TextSource, token_contexts
from .errors import HfsaeError
from .evaluation.metrics import fvu_of

# Another site "fits clearly better" when its FVU is below this fraction of the declared site's: a margin above
# the sampling noise of FVU over a few thousand tokens, small enough to catch an off-by-one layer.
CLEARLY_BETTER = 0.9
POST_NORMS = ("post_feedforward_layernorm",)


class LocateError(HfsaeError, ValueError):
    """No candidate site of the model has the SAE's width, or the SAE declares no hook point to start from."""


@dataclass(frozen=True)
class LocateResult:
    declared: str
    fits: list[tuple[str, float]]  # (hook point, FVU), best first

    @property
    def best(self) -> str:
        return self.fits[0][0]

    @property
    def warning(self) -> str | None:
        fvus = dict(self.fits)
        best, declared = self.fits[0][1], fvus.get(self.declared)
        if self.best == self.declared or (declared is not None and best >= CLEARLY_BETTER * declared):
            return None
        at_declared = f"FVU {declared:.3f} at {self.declared}" if declared is not None else f"no FVU at {self.declared}"
        return (f"{self.best} fits clearly better (FVU {best:.3f}; {at_declared}): the SAE's hook point is probably "
                f"{self.best}; load it with that hook point or fix its config.")


def candidate_sites(model: nn.Module, declared: str) -> list[str]:
    """The declared hook point and its neighbours that this model has, declared first."""
    match = re.fullmatch(r"layers\.(\d+)\.\w+", declared)
    if match is None:
        return [declared]
    layer = int(match.group(1))
    valid = set(valid_hook_points(model))
    sites = [declared]
    for i in (layer, layer - 1, layer + 1):
        sites += [f"layers.{i}.{site}" for site in ("resid_pre", "resid_post", "mlp_out", "attn_out")]
    names = {id(module): name for name, module in model.named_modules()}
    layers = decoder_layers(model)
    if 0 <= layer < len(layers):
        sites += [f"{names[id(getattr(layers[layer], norm))]}:output" for norm in POST_NORMS
                  if isinstance(getattr(layers[layer], norm, None), nn.Module)]
    return list(dict.fromkeys(site for site in sites if site in valid or site.endswith(":output")))


@torch.no_grad()
def locate(sae, model: nn.Module, tokenizer=None, *, texts=None, tokens: int = 4096, context_size: int = 64,
           input_ids: torch.Tensor | None = None) -> LocateResult:
    """FVU of `sae` at its declared hook point and the sites next to it, on `tokens` tokens of `texts`.

    `texts`: documents (strings) or a TextSource, cut into contexts with `tokenizer`; default the
    built-in corpus's held-out split. `input_ids` [contexts, seq] replaces texts and tokenizer.
    """
    declared = sae.config.hook_point
    if not declared:
        raise LocateError("The SAE declares no hook_point, so there is no site to start from; set config.hook_point.")
    sites = candidate_sites(model, declared)
    if input_ids is None:
        n_contexts = max(1, -(-tokens // (context_size - 1)))
        texts = texts or TextSource(split="test")
        input_ids = torch.tensor([ids for _, ids in islice(token_contexts(texts, tokenizer, context_size), n_contexts)])
    acts = capture(model, input_ids.to(next(model.parameters()).device), sites)
    sae_device, dtype = sae.W_enc.device, sae.W_enc.dtype
    fits = []
    for site, activation in acts.items():
        if activation.shape[-1] != sae.config.d_in:
            continue
        x = positions_used(activation).to(sae_device, dtype)
        fits.append((site, fvu_of(sae(x).x_hat, x)))
    if not fits:
        raise LocateError(
            f"No site near {declared} has width {sae.config.d_in} in this model; is it the SAE's base model?"
        )
    return LocateResult(declared, sorted(fits, key=lambda item: item[1]))
