"""N2G explanations: token patterns that predict when a latent fires, and their precision and recall (docs/method.md §4).

For a latent, each of its top-activating examples (a context ending at the token where it fires)
becomes a pattern in two steps:

1. truncate the context to the shortest suffix whose activation at the last token is still
   ≥ keep_fraction (50%) of the example's activation (at most max_suffix tokens);
2. replace each token of that suffix by a pad token in turn; a token whose replacement changes
   the activation by less than 50% becomes a wildcard.

Patterns go into a trie read from the firing token backwards, so predicting on new text is one
walk back from each position. The explanation predicts "fires" wherever a pattern matches; on
held-out text, precision is the fraction of predicted tokens where the latent really fires
(value > 1e-3) and recall the fraction of its firing tokens that a pattern predicts.

The latent's activation is its value in the SAE's TopK code (0 when not among the k selected),
computed by any `activation_fn(input_ids [rows, seq], positions [rows]) -> [rows]`, so the method
runs without a model in tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from hfsae.modeling import FIRING_THRESHOLD

ActivationFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Pattern:
    """Token ids ending at the firing token; None is a wildcard. `activation`: the example's activation."""

    token_ids: tuple[int | None, ...]
    activation: float


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    wildcard: _Node | None = None
    activation: float | None = None  # set where a pattern ends


class PatternTrie:
    """Patterns keyed from their last token backwards; `predict` gives the best matching activation per position.

    Example:
        >>> trie = PatternTrie()
        >>> trie.insert(Pattern((5, None, 7), activation=2.0))   # "5, any token, 7" fires on the 7
        >>> trie.predict([1, 5, 3, 7])                           # tensor([0., 0., 0., 2.])
    """

    def __init__(self):
        self.root = _Node()

    def insert(self, pattern: Pattern) -> None:
        node = self.root
        for token in reversed(pattern.token_ids):
            if token is None:
                node.wildcard = node.wildcard or _Node()
                node = node.wildcard
            else:
                node = node.children.setdefault(token, _Node())
        node.activation = max(node.activation or 0.0, pattern.activation)

    def _match(self, token_ids: list[int], position: int) -> float:
        best, stack = 0.0, [(self.root, position)]
        while stack:
            node, i = stack.pop()
            if node.activation is not None:
                best = max(best, node.activation)
            if i < 0:
                continue
            child = node.children.get(token_ids[i])
            if child is not None:
                stack.append((child, i - 1))
            if node.wildcard is not None:
                stack.append((node.wildcard, i - 1))
        return best

    def predict(self, token_ids) -> torch.Tensor:
        """Predicted activation at each position of token_ids [seq]: the best pattern ending there, else 0."""
        token_ids = list(map(int, token_ids))
        predicted = torch.zeros(len(token_ids))
        for position, token in enumerate(token_ids):
            # Most positions end in a token no pattern ends in: skip the walk.
            if self.root.wildcard is not None or token in self.root.children:
                predicted[position] = self._match(token_ids, position)
        return predicted


@dataclass
class N2GExplanation:
    """A latent's patterns and how well they predict its firing on held-out text (None: undefined there)."""

    latent: int
    patterns: list[Pattern]
    precision: float | None = None
    recall: float | None = None

    def trie(self) -> PatternTrie:
        trie = PatternTrie()
        for pattern in self.patterns:
            trie.insert(pattern)
        return trie

    def to_dict(self, tokenizer=None) -> dict:
        """A JSON-able form; with a tokenizer, each pattern also lists its tokens as text ('*' for a wildcard)."""
        patterns = []
        for pattern in self.patterns:
            entry = {"token_ids": list(pattern.token_ids), "activation": pattern.activation}
            if tokenizer is not None:
                entry["tokens"] = ["*" if t is None else tokenizer.decode([t]) for t in pattern.token_ids]
            patterns.append(entry)
        return {"latent": self.latent, "precision": self.precision, "recall": self.recall, "patterns": patterns}


# ---- building patterns -------------------------------------------------------------------------------


def _right_padded(rows: list[list[int]], pad_token_id: int) -> torch.Tensor:
    # Right padding: a causal LM's activation at a row's last real token never sees the padding.
    width = max(len(row) for row in rows)
    return torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows], dtype=torch.long)


def _last_token_activations(activation_fn: ActivationFn, rows: list[list[int]], pad_token_id: int) -> torch.Tensor:
    positions = torch.tensor([len(row) - 1 for row in rows])
    return activation_fn(_right_padded(rows, pad_token_id), positions).float()


def explain(
    activation_fn: ActivationFn,
    examples: list[tuple[list[int], float]],
    *,
    pad_token_id: int,
    max_suffix: int = 12,
    keep_fraction: float = 0.5,
) -> list[Pattern]:
    """Patterns from examples (context token ids ending at the firing token, its activation there)."""
    examples = [(list(map(int, context)), activation) for context, activation in examples if context and activation > 0]
    if not examples:
        return []
    # 1. Every suffix of every example in one batch; keep the shortest that holds keep_fraction.
    suffix_rows, owners = [], []
    for e, (context, _) in enumerate(examples):
        for length in range(1, min(max_suffix, len(context)) + 1):
            suffix_rows.append(context[-length:])
            owners.append(e)
    suffix_acts = _last_token_activations(activation_fn, suffix_rows, pad_token_id)
    suffixes: list[tuple[list[int], float, float]] = []  # (suffix, its activation, the example's)
    for e, (context, activation) in enumerate(examples):
        candidates = [(row, act.item()) for row, act, owner in zip(suffix_rows, suffix_acts, owners) if owner == e]
        kept = [(row, act) for row, act in candidates if act >= keep_fraction * activation]
        suffix, suffix_act = kept[0] if kept else candidates[-1]
        if suffix_act > 0:
            suffixes.append((suffix, suffix_act, activation))
    if not suffixes:
        return []
    # 2. Each token replaced by the pad in turn, all suffixes in one batch.
    padded_rows = [
        suffix[:i] + [pad_token_id] + suffix[i + 1 :] for suffix, _, _ in suffixes for i in range(len(suffix))
    ]
    padded_acts = _last_token_activations(activation_fn, padded_rows, pad_token_id).tolist()
    patterns, offset = [], 0
    for suffix, suffix_act, activation in suffixes:
        changes = [abs(suffix_act - act) for act in padded_acts[offset : offset + len(suffix)]]
        offset += len(suffix)
        tokens = [None if change < 0.5 * suffix_act else token for token, change in zip(suffix, changes)]
        while tokens and tokens[0] is None:  # a leading wildcard constrains nothing
            tokens.pop(0)
        if tokens:
            patterns.append(Pattern(tuple(tokens), activation))
    return patterns


def precision_recall(predicted: torch.Tensor, actual: torch.Tensor) -> tuple[float | None, float | None]:
    """Precision and recall of predicted firing against actual firing, both bool [...]; None when undefined."""
    true_positives = (predicted & actual).sum().item()
    n_predicted, n_actual = predicted.sum().item(), actual.sum().item()
    return (
        true_positives / n_predicted if n_predicted else None,
        true_positives / n_actual if n_actual else None,
    )


def score(explanation: N2GExplanation, input_ids: torch.Tensor, activations: torch.Tensor) -> N2GExplanation:
    """Set precision and recall on held-out input_ids [contexts, seq]; activations: the latent's at the last
    positions of each context, [contexts, seq'] (seq' ≤ seq; the patterns still read the positions before)."""
    trie = explanation.trie()
    skipped = input_ids.shape[1] - activations.shape[1]
    predicted = torch.stack([trie.predict(row) for row in input_ids])[:, skipped:] > 0
    explanation.precision, explanation.recall = precision_recall(predicted, activations > FIRING_THRESHOLD)
    return explanation


# ---- on an SAE ----------------------------------------------------------------------------------------


@dataclass
class N2GResult:
    """Mean precision and recall over the explained latents (each mean skips latents where it is undefined)."""

    precision: float
    recall: float
    explanations: list[N2GExplanation]


def sae_activation_fn(sae, model, hook_point: str, latent: int) -> ActivationFn:
    """activation_fn for one latent of `sae` reading `model` at hook_point."""
    from hfsae.activations.hook_points import capture

    def activation_fn(input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        x = capture(model, input_ids.to(device), [hook_point])[hook_point]
        code = sae.encode(x[torch.arange(len(positions), device=device), positions.to(device)])
        return (code.values * (code.indices == latent)).sum(dim=-1).cpu()

    return activation_fn


def latent_activations(indices: torch.Tensor, values: torch.Tensor, latent: int) -> torch.Tensor:
    """One latent's activation at every token of a code: indices, values [..., k] → [...]."""
    return (values * (indices == latent)).sum(dim=-1)


def _mean(numbers: list[float | None]) -> float:
    defined = [number for number in numbers if number is not None]
    return sum(defined) / len(defined) if defined else float("nan")


@torch.no_grad()
def n2g_evaluate(
    sae,
    model,
    input_ids: torch.Tensor,
    code,
    *,
    hook_point: str | None = None,
    pad_token_id: int,
    n_latents_explained: int = 24,
    n_examples: int = 4,
    max_suffix: int = 12,
    keep_fraction: float = 0.5,
    seed: int = 0,
    quiet: bool = True,
) -> N2GResult:
    """Explain random latents from the first half of input_ids [contexts, seq]; score them on the second half.

    `code` is the SAE's code of the positions that count, the last seq' of each context (indices,
    values [contexts, seq', k]; evaluate passes seq' = seq − FIRST_POSITION_USED). Latents are drawn
    among those that fire in the first half; their n_examples top-activating tokens are explained.
    """
    hook_point = hook_point or sae.config.hook_point
    if input_ids.shape[0] < 2:
        raise ValueError(
            f"N2G needs at least 2 contexts (half to explain from, half to score on); got {input_ids.shape[0]}."
        )
    half = input_ids.shape[0] // 2
    skipped = input_ids.shape[1] - code.indices.shape[1]  # leading positions the code leaves out
    harvest_indices, harvest_values = code.indices[:half], code.values[:half]
    fired = harvest_indices[harvest_values > FIRING_THRESHOLD].unique().tolist()
    latents = sorted(random.Random(seed).sample(fired, min(n_latents_explained, len(fired))))
    explanations = []
    for latent in tqdm(latents, desc="N2G explanations", disable=quiet):
        activations = latent_activations(harvest_indices, harvest_values, latent)  # [half, seq]
        top = activations.flatten().topk(min(n_examples, activations.numel()))
        examples = []
        for value, flat in zip(top.values.tolist(), top.indices.tolist()):
            context, position = divmod(flat, code.indices.shape[1])
            position += skipped
            if value > FIRING_THRESHOLD:
                examples.append((input_ids[context, max(0, position + 1 - max_suffix) : position + 1].tolist(), value))
        patterns = explain(
            sae_activation_fn(sae, model, hook_point, latent),
            examples,
            pad_token_id=pad_token_id,
            max_suffix=max_suffix,
            keep_fraction=keep_fraction,
        )
        heldout = latent_activations(code.indices[half:], code.values[half:], latent)
        explanations.append(score(N2GExplanation(latent, patterns), input_ids[half:], heldout))
    return N2GResult(
        precision=_mean([e.precision for e in explanations]),
        recall=_mean([e.recall for e in explanations]),
        explanations=explanations,
    )
