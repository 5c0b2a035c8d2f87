"""Per-latent statistics for the explorer: one streaming pass of an SAE over a corpus, saved as a dataset.

`analyze(sae, ...)` runs the language model and the SAE over `n_tokens` tokens once and writes a
`datasets` Dataset with one row per latent to `<model_dir>/analysis/latents.parquet` (pushable as a
dataset repo with `Dataset.push_to_hub`). A row holds:

- `density` (fraction of tokens where the latent fires), `mean_activation` (over those tokens),
  `max_activation`;
- an activation histogram: `histogram_counts` over linear bins `histogram_edges` from 0 to just
  above the latent's maximum;
- `top_*`: the contexts with the largest activations (one per context), each a window of tokens
  around the peak token with the latent's activation at every token;
- `random_*`: a uniform random sample of the latent's firings (a reservoir), sorted by
  activation, each with its quantile in the latent's activation distribution;
- logit effects: the decoder row read through the LM's unembedding, the most promoted and
  suppressed tokens.

Memory is O(n_latents × examples kept × window) whatever the corpus size, and no dense
[tokens, n_latents] tensor is ever built, so the same pass scales to 1M latents.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet
import torch
from tqdm.auto import tqdm

from .errors import HfsaeError
from .activations import FIRST_POSITION_USED, SKIP_FIRST_POSITION, load_language_model
from .folder import ANALYSIS_DIR, check_output_folder, read_json, staged_folder, write_json_atomic
from .modeling import FIRING_THRESHOLD, SparseCode, TopKSAE

DATASET_CARD_TEMPLATE = "dataset.md"
LATENTS_FILE = "latents.parquet"
SUMMARY_FILE = "analysis.json"
ANALYSIS_FILES = (LATENTS_FILE, SUMMARY_FILE)  # all that an analysis folder holds: what overwriting may replace
HOW_TO_OVERWRITE = "overwrite=True (--overwrite-output-dir) to replace the analysis in it"


HISTOGRAM_HEADROOM = 1 + 2**-10


class AnalysisError(HfsaeError, ValueError):
    """The analysis cannot run with the given SAE, model or options."""


# ---- streaming accumulators ------------------------------------------------------------------------


class TopExamples:
    """For every latent, the `n_examples` firings with the largest key, at most one per context.

    With key = activation these are the top-activating examples; with key = a uniform random
    number they are a uniform random sample of the firings (reservoir sampling by random keys),
    kept by the same merge. Each example keeps a window of tokens around its peak token and the
    latent's activation at every token of the window: tokens [n_latents, n_examples, window].
    """

    def __init__(self, n_latents: int, n_examples: int, *, before: int, after: int):
        self.before, self.after = before, after
        window = before + 1 + after
        self.keys = torch.full((n_latents, n_examples), -math.inf)
        self.values = torch.zeros(n_latents, n_examples)  # the activation at the peak token
        self.token_ids = torch.full((n_latents, n_examples, window), -1, dtype=torch.int32)  # -1: outside the context
        self.activations = torch.zeros(n_latents, n_examples, window, dtype=torch.float16)

    def update_(
        self,
        code: SparseCode,
        token_ids: torch.Tensor,
        keys: torch.Tensor,
        firing: torch.Tensor,
    ) -> None:
        """Merge one batch: code [contexts, seq, k], token_ids [contexts, seq], keys and firing [contexts, seq, k]."""
        n_examples = self.keys.shape[1]
        latents = code.indices
        # Only entries that beat the latent's current n-th best can enter: after the first batches
        # this discards almost everything before any sorting.
        candidates = firing & (keys > self.keys[:, -1][latents])
        where = candidates.nonzero()  # [candidates, 3]: context, position, slot
        if not len(where):
            return
        context, position, slot = where.unbind(1)
        latent = latents[context, position, slot]
        keep = _best_per_group(latent, context, keys[context, position, slot], n_examples)
        context, position, slot, latent = (
            context[keep],
            position[keep],
            slot[keep],
            latent[keep],
        )
        key = keys[context, position, slot]

        # Each touched latent's candidates, ranked, laid out as a [touched, n_examples] block beside
        # the examples it keeps; one topk over both blocks is the merge.
        touched, row = torch.unique(latent, return_inverse=True)
        rank = _rank_within_groups(row, key)
        candidate_keys = key.new_full((len(touched), n_examples), -math.inf)
        candidate_keys[row, rank] = key
        candidate_at = torch.full((len(touched), n_examples), -1)
        candidate_at[row, rank] = torch.arange(len(key))
        merged = torch.cat([self.keys[touched], candidate_keys], dim=1)
        best = merged.topk(n_examples, dim=1).indices  # [touched, n_examples]; ≥ n_examples: a candidate
        self.keys[touched] = merged.gather(1, best)

        # Kept examples move within their rows; only entering candidates get their windows built.
        entering_at = best >= n_examples
        entering_rows, entering_slots = entering_at.nonzero(as_tuple=True)
        entering = candidate_at[entering_rows, best[entering_rows, entering_slots] - n_examples]
        context, position, slot, latent = (
            context[entering],
            position[entering],
            slot[entering],
            latent[entering],
        )
        window_tokens, window_activations = self._windows(code, token_ids, context, position, latent)
        kept = best.clamp(max=n_examples - 1)
        for store, new in (
            (self.values, code.values[context, position, slot]),
            (self.token_ids, window_tokens),
            (self.activations, window_activations),
        ):
            index = kept.view(*kept.shape, *[1] * (store.dim() - 2)).expand(-1, -1, *store.shape[2:])
            rows = store[touched].gather(1, index)
            rows[entering_at] = new.to(store.dtype)
            store[touched] = rows

    def _windows(self, code, token_ids, context, position, latent):
        """Token ids [examples, window] around each peak and the latent's activation at each of them."""
        seq = token_ids.shape[1]
        positions = position[:, None] + torch.arange(-self.before, self.after + 1)  # [examples, window]
        inside = (positions >= 0) & (positions < seq)
        positions = positions.clamp(0, seq - 1)
        tokens = torch.where(inside, token_ids[context[:, None], positions], -1)
        activations = _code_lookup(
            code,
            context[:, None] * seq + positions,
            latent[:, None],
            self.keys.shape[0],
        )
        return tokens, activations * inside


def _code_lookup(code: SparseCode, token: torch.Tensor, latent: torch.Tensor, n_latents: int) -> torch.Tensor:
    """The code's value for (flat token index, latent) pairs, 0 where the latent is not selected.

    A binary search in the code's sorted (token, latent) keys: O(queries · log(tokens · k)),
    instead of comparing every query with all k entries of its token.
    """
    indices = code.indices.reshape(-1, code.indices.shape[-1])
    entry_keys = (torch.arange(len(indices))[:, None] * n_latents + indices).view(-1)
    sorted_keys, order = entry_keys.sort()
    query = (token * n_latents + latent).view(-1)
    found_at = torch.searchsorted(sorted_keys, query).clamp(max=len(sorted_keys) - 1)
    found = sorted_keys[found_at] == query
    values = code.values.reshape(-1)[order[found_at]] * found
    return values.view(torch.broadcast_shapes(token.shape, latent.shape))


def _best_per_group(latent: torch.Tensor, context: torch.Tensor, key: torch.Tensor, n_best: int) -> torch.Tensor:
    """Indices of the entries to keep: the largest key per (latent, context), then the n_best per latent."""
    order = _lexsort(latent, context, -key)
    latent_sorted, context_sorted = latent[order], context[order]
    first = torch.ones_like(latent_sorted, dtype=torch.bool)
    first[1:] = (latent_sorted[1:] != latent_sorted[:-1]) | (context_sorted[1:] != context_sorted[:-1])
    order = order[first]
    rank = _rank_within_groups(latent[order], key[order])
    return order[rank < n_best]


def _lexsort(*keys: torch.Tensor) -> torch.Tensor:
    """The permutation sorting by keys[0], then keys[1], ... (ascending, stable)."""
    order = torch.arange(len(keys[0]))
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def _rank_within_groups(group: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """For each entry, its rank (0 = largest key) among the entries of its group."""
    order = _lexsort(group, -key)
    sorted_group = group[order]
    starts = torch.ones_like(sorted_group, dtype=torch.bool)
    starts[1:] = sorted_group[1:] != sorted_group[:-1]
    start_index = torch.cummax(torch.where(starts, torch.arange(len(order)), 0), dim=0).values
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order)) - start_index
    return rank


class ActivationHistograms:
    """Per-latent histograms of firing activations over linear bins [0, upper), upper adapting as it streams.

    A latent's range starts at its first maximum and doubles (merging bins pairwise) whenever a
    larger activation arrives, so every histogram spans [0, upper) with max ≤ upper < 2·max
    without knowing the maximum in advance: [n_latents, n_bins] counts, exact up to bin width.
    """

    def __init__(self, n_latents: int, n_bins: int):
        if n_bins < 2 or n_bins % 2:
            raise AnalysisError(f"n_histogram_bins must be an even number ≥ 2; got {n_bins}.")
        self.counts = torch.zeros(n_latents, n_bins, dtype=torch.int64)
        self.upper = torch.zeros(n_latents)

    def update_(self, latents: torch.Tensor, values: torch.Tensor) -> None:
        """Count firing activations: latents, values [entries]."""
        n_latents, n_bins = self.counts.shape
        batch_max = torch.zeros(n_latents).scatter_reduce_(0, latents, values, reduce="amax")
        fresh = (self.upper == 0) & (batch_max > 0)
        # Just above the maximum, so that the maximum falls inside the last bin rather than on its edge.
        self.upper[fresh] = batch_max[fresh] * HISTOGRAM_HEADROOM
        grow = batch_max > self.upper
        if grow.any():
            doublings = torch.ceil(torch.log2(batch_max[grow] / self.upper[grow])).long().clamp_min(1)
            rows = grow.nonzero().squeeze(1)
            for step in range(1, int(doublings.max()) + 1):
                merging = rows[doublings >= step]
                merged = self.counts[merging].view(len(merging), n_bins // 2, 2).sum(-1)
                self.counts[merging] = torch.cat([merged, torch.zeros_like(merged)], dim=1)
            self.upper[rows] *= torch.pow(2.0, doublings.float())
        bins = (values / self.upper[latents] * n_bins).long().clamp(0, n_bins - 1)
        self.counts.view(-1).index_add_(0, latents * n_bins + bins, torch.ones_like(bins))

    def quantiles(self, latents: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Fraction of each latent's firings below each value (interpolated within a bin): [latents, m] → same."""
        n_bins = self.counts.shape[1]
        counts = self.counts[latents].double()  # [latents, n_bins]
        cumulative = torch.cat([counts.new_zeros(len(latents), 1), counts.cumsum(1)], dim=1)
        total = cumulative[:, -1:].clamp_min(1)
        position = (values.double() / self.upper[latents, None].clamp_min(1e-30) * n_bins).clamp(0, n_bins - 1e-9)
        bin_index = position.floor().long()
        below = cumulative.gather(1, bin_index) + counts.gather(1, bin_index) * (position - bin_index)
        return (below / total).float()


class LatentStatistics:
    """Everything `analyze` accumulates over the stream of codes, O(n_latents × examples) memory."""

    def __init__(
        self,
        n_latents: int,
        *,
        n_top: int,
        n_random: int,
        before: int,
        after: int,
        n_bins: int,
        seed: int,
    ):
        self.n_tokens = 0
        self.fire_count = torch.zeros(n_latents, dtype=torch.int64)
        self.activation_sum = torch.zeros(n_latents, dtype=torch.float64)
        self.histograms = ActivationHistograms(n_latents, n_bins)
        self.top = TopExamples(n_latents, n_top, before=before, after=after)
        self.random = TopExamples(n_latents, n_random, before=before, after=after)
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update_(self, code: SparseCode, token_ids: torch.Tensor, counted: torch.Tensor) -> None:
        """One batch: code [contexts, seq, k], token_ids [contexts, seq]; counted [contexts, seq] marks
        the tokens that enter the statistics (the others still show in context windows)."""
        code = SparseCode(code.indices, code.values.float())
        firing = (code.values > FIRING_THRESHOLD) & counted[..., None]
        latents, values = code.indices[firing], code.values[firing]
        self.n_tokens += int(counted.sum())
        self.fire_count.index_add_(0, latents, torch.ones_like(latents))
        self.activation_sum.index_add_(0, latents, values.double())
        self.histograms.update_(latents, values)
        self.top.update_(code, token_ids, code.values, firing)
        random_keys = torch.rand(code.values.shape, generator=self.generator)
        self.random.update_(code, token_ids, random_keys, firing)


# ---- logit effects -----------------------------------------------------------------------------------


@torch.no_grad()
def logit_effects(
    W_dec: torch.Tensor,
    W_U: torch.Tensor,
    *,
    n_tokens: int = 10,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each decoder row read through the unembedding: W_dec [n_latents, d] @ W_U [vocab, d]ᵀ, in chunks of latents.

    Returns (promoted ids, promoted logits, suppressed ids, suppressed logits), each [n_latents, n_tokens];
    suppressed logits are the most negative first. The [n_latents, vocab] product is never held whole.
    """
    n_tokens = min(n_tokens, W_U.shape[0])
    W_U = W_U.float()
    promoted, promoted_logits, suppressed, suppressed_logits = [], [], [], []
    for start in range(0, W_dec.shape[0], chunk_size):
        logits = W_dec[start : start + chunk_size].float() @ W_U.T  # [chunk, vocab]
        top = logits.topk(n_tokens, dim=1)
        bottom = logits.topk(n_tokens, dim=1, largest=False)
        promoted.append(top.indices)
        promoted_logits.append(top.values)
        suppressed.append(bottom.indices)
        suppressed_logits.append(bottom.values)
    return (
        torch.cat(promoted),
        torch.cat(promoted_logits),
        torch.cat(suppressed),
        torch.cat(suppressed_logits),
    )


# ---- the pass over a corpus --------------------------------------------------------------------------


@dataclass
class AnalysisSettings:
    """How an analysis was made; saved beside the dataset as analysis.json."""

    n_tokens: int
    context_size: int
    hook_point: str
    base_model: str | None
    sae: str | None
    n_latents: int
    k: int
    skip_first_token: bool
    context_before: int
    context_after: int
    text: str
    n_top_examples: int
    n_random_examples: int


def _context_batches(texts, tokenizer, context_size: int, batch_size: int, n_contexts: int) -> Iterator[torch.Tensor]:
    from .activations.text import token_contexts

    # The one packer (a TextSource or in-memory documents), as training and evaluation pack text.
    contexts = (ids for _, ids in token_contexts(texts, tokenizer, context_size))
    batch: list[list[int]] = []
    for produced, context in enumerate(itertools.islice(contexts, n_contexts), start=1):
        batch.append(context)
        if len(batch) == batch_size or produced == n_contexts:
            yield torch.tensor(batch)
            batch = []
    if batch:
        yield torch.tensor(batch)


def _capture(model, input_ids: torch.Tensor, hook_point: str) -> torch.Tensor:
    from .activations.hook_points import capture

    return capture(model, input_ids, [hook_point], stop_early=True)[hook_point]


def _load_base_model(sae: TopKSAE):
    base = sae.config.base_model
    if base is None:
        raise AnalysisError(
            "The SAE's config names no base_model; pass model= and tokenizer= for the language model it reads."
        )
    return load_language_model(base, quiet=True)


def _sae_name(sae: TopKSAE) -> str | None:
    """The SAE as the analysis records it: its repo id or registry name, or a local folder's own name (no path)."""
    name = str(sae.name_or_path or "")
    return (Path(name).resolve().name if Path(name).exists() else name) or None


def _describe_text(texts) -> str:
    from .activations.text import TextSource

    if isinstance(texts, TextSource):
        return texts.dataset
    return "texts passed to analyze()"


def _default_texts(sae: TopKSAE):
    """The SAE's training text (the built-in corpus when it names none), all of it, documents shuffled:
    read in stored order, the first tokens of the built-in corpus would all be pydoc topics."""
    from .activations.text import TextSource

    return TextSource(dataset=sae.config.dataset or "builtin", split="all")


def default_output_dir(sae: TopKSAE) -> Path:
    """`<model_dir>/analysis` for an SAE loaded from a local folder."""
    model_dir = Path(str(sae.name_or_path or ""))
    if not sae.name_or_path or not model_dir.is_dir():
        raise AnalysisError(
            f"The SAE was not loaded from a local folder (name_or_path={sae.name_or_path!r}), so there is no "
            "model folder to write the analysis next to; pass output_dir=."
        )
    return model_dir / ANALYSIS_DIR


@torch.no_grad()
def analyze(
    sae: TopKSAE,
    *,
    model=None,
    tokenizer=None,
    texts=None,
    n_tokens: int = 65_536,
    context_size: int | None = None,
    batch_size: int = 16,
    n_top_examples: int = 12,
    n_random_examples: int = 6,
    context_before: int = 19,
    context_after: int = 4,
    n_histogram_bins: int = 32,
    n_logit_tokens: int = 10,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    seed: int = 0,
    quiet: bool = False,
):
    """Run `sae` over `n_tokens` tokens of text once; write and return its per-latent dataset.

    `model`/`tokenizer` default to the SAE's `config.base_model` (the built-in SmolLM2 for
    "builtin"); `texts` (strings, or a `TextSource`) to its training text (the built-in corpus for
    "builtin"). The result is saved to `output_dir` (default `<model_dir>/analysis`) as `latents.parquet` and `analysis.json`; a
    non-empty `output_dir` is refused before any work unless `overwrite`, and even then unless it holds only a
    previous analysis.
    Each context's first position is left out of the statistics as everywhere else
    (`hfsae.activations.positions_used`); it still shows in the context windows.

    Example:
        >>> dataset = analyze(hfsae.load("path/to/sae"), n_tokens=65_536)
        >>> dataset[123]["top_tokens"][0]        # the tokens around latent 123's strongest firing
    """
    config = sae.config
    if config.hook_point is None:
        raise AnalysisError("The SAE's config names no hook_point, so it is unknown where to read activations.")
    context_size = context_size or config.context_size or 64
    _check_sizes(context_size=context_size, n_tokens=n_tokens, batch_size=batch_size, n_top_examples=n_top_examples,
                 n_random_examples=n_random_examples, n_logit_tokens=n_logit_tokens, context_before=context_before,
                 context_after=context_after)  # fmt: skip
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(sae)
    check_output_folder(output_dir, overwrite=overwrite, replaces=ANALYSIS_FILES, how_to_overwrite=HOW_TO_OVERWRITE)
    if model is None or tokenizer is None:
        model, tokenizer = _load_base_model(sae)
    texts = _default_texts(sae) if texts is None else texts

    statistics = LatentStatistics(config.n_latents, n_top=n_top_examples, n_random=n_random_examples,
                                  before=context_before, after=context_after, n_bins=n_histogram_bins, seed=seed)  # fmt: skip
    _gather_statistics(statistics, sae, model, tokenizer, texts, context_size=context_size, n_tokens=n_tokens,
                       batch_size=batch_size, quiet=quiet)  # fmt: skip
    if statistics.n_tokens == 0:
        raise AnalysisError(f"The text gave no complete context of {context_size} tokens; pass more text.")

    effects = None
    W_U = _unembedding(model)
    if W_U is not None and W_U.shape[1] == config.output_size:  # decoder rows live in the output space
        effects = logit_effects(sae.W_dec.detach().cpu(), W_U.detach().cpu(), n_tokens=n_logit_tokens)
    settings = AnalysisSettings(
        n_tokens=statistics.n_tokens,
        context_size=context_size,
        hook_point=config.hook_point,
        base_model=config.base_model,
        sae=_sae_name(sae),
        n_latents=config.n_latents,
        k=config.k,
        skip_first_token=SKIP_FIRST_POSITION,
        context_before=context_before,
        context_after=context_after,
        text=_describe_text(texts),
        n_top_examples=n_top_examples,
        n_random_examples=n_random_examples,
    )
    dataset = latent_dataset(statistics, tokenizer, effects)
    save_analysis(dataset, settings, output_dir, overwrite=overwrite)
    return dataset


def _check_sizes(*, context_size: int, context_before: int, context_after: int, **at_least_one: int) -> None:
    """One-line AnalysisErrors for sizes a user can get wrong, before any model is loaded."""
    if context_size < 2:
        raise AnalysisError(f"context_size must be at least 2; got {context_size}.")
    for name, value in at_least_one.items():
        if value < 1:
            raise AnalysisError(f"{name} must be at least 1; got {value}.")
    if context_before < 0 or context_after < 0:
        raise AnalysisError(f"context_before and context_after must be 0 or more; got {context_before}, {context_after}.")


def _gather_statistics(statistics, sae, model, tokenizer, texts, *, context_size, n_tokens, batch_size, quiet) -> None:
    """Run the model and the SAE over n_tokens counted tokens of `texts` once, feeding `statistics`."""
    sae.eval()
    model.eval()
    counted_per_context = context_size - FIRST_POSITION_USED
    n_contexts = math.ceil(n_tokens / counted_per_context)
    counted = torch.ones(context_size, dtype=torch.bool)
    counted[:FIRST_POSITION_USED] = False
    progress = tqdm(total=n_contexts * counted_per_context, desc="analysing latents", unit="tok", disable=quiet)
    for input_ids in _context_batches(texts, tokenizer, context_size, batch_size, n_contexts):
        activations = _capture(model, input_ids, sae.config.hook_point).to(sae.W_enc.device)
        code = sae.encode(activations)
        code = SparseCode(code.indices.cpu(), code.values.cpu())
        statistics.update_(code, input_ids, counted.expand_as(input_ids))
        progress.update(len(input_ids) * counted_per_context)
    progress.close()


def _unembedding(model) -> torch.Tensor | None:
    """The LM head's weight [vocab, d_model], or None for a model without one."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return None if head is None else head.weight


# ---- from accumulators to rows -----------------------------------------------------------------------


def _vocabulary(tokenizer, size: int) -> list[str]:
    """Each token id as the text it decodes to, so that a window's strings concatenate back to its text.

    Ids past the tokenizer's vocabulary (an embedding padded to a round size) read as `<id N>`.
    """
    known = min(size, len(tokenizer))
    return tokenizer.batch_decode([[i] for i in range(known)]) + [f"<id {i}>" for i in range(known, size)]


def _lists(values: np.ndarray, kept: np.ndarray) -> pa.ListArray:
    """One list per row of values [rows, n, ...] holding the entries where kept [rows, n] (in order)."""
    offsets = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(offsets, _flat(values[kept]))


def _flat(values: np.ndarray) -> pa.Array:
    if values.ndim == 1:
        return pa.array(values)
    return _lists(values, np.ones(values.shape[:2], dtype=bool))


def _example_columns(examples: TopExamples, vocabulary: pa.Array, prefix: str) -> dict[str, pa.Array]:
    """Per latent, its kept examples (strongest first): peak activation, window tokens, token ids,
    per-token activations and the peak's index in the window, windows trimmed to the context."""
    order = examples.values.argsort(dim=1, descending=True)
    values = examples.values.gather(1, order).numpy()
    token_ids = examples.token_ids.gather(1, order[:, :, None].expand_as(examples.token_ids)).numpy()
    activations = examples.activations.gather(1, order[:, :, None].expand_as(examples.activations)).float().numpy()
    kept = (examples.keys.gather(1, order) > -math.inf).numpy()  # [n_latents, n_examples]
    inside = token_ids >= 0  # [n_latents, n_examples, window]: the window positions within the context
    example_offsets = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype(np.int32)
    token_offsets = np.concatenate([[0], np.cumsum(inside[kept].sum(axis=1))]).astype(np.int32)

    def windows(flat: pa.Array) -> pa.ListArray:
        """Per latent a list of examples, each the list of its in-context window entries."""
        return pa.ListArray.from_arrays(example_offsets, pa.ListArray.from_arrays(token_offsets, flat))

    ids = token_ids[kept][inside[kept]]
    peaks = examples.before - inside.argmax(axis=2)  # the trimmed window starts at the first inside position
    return {
        f"{prefix}_activations": _lists(values, kept),
        f"{prefix}_tokens": windows(vocabulary.take(pa.array(ids.astype(np.int64)))),
        f"{prefix}_token_ids": windows(pa.array(ids)),
        f"{prefix}_token_activations": windows(pa.array(activations[kept][inside[kept]])),
        f"{prefix}_peak": _lists(peaks.astype(np.int32), kept),
    }


def latent_dataset(statistics: LatentStatistics, tokenizer, effects=None):
    """The accumulated statistics as a `datasets.Dataset`, one row per latent (see the module docstring).

    Columns are built as Arrow arrays from whole tensors: at 8192 latents this takes about a
    second, where building nested Python lists took half a minute.
    """
    from datasets import Dataset

    n_latents = len(statistics.fire_count)
    vocab_size = max(
        len(tokenizer),
        int(statistics.top.token_ids.max()) + 1,
        int(statistics.random.token_ids.max()) + 1,
    )
    if effects is not None:
        vocab_size = max(vocab_size, int(effects[0].max()) + 1, int(effects[2].max()) + 1)
    vocabulary = pa.array(_vocabulary(tokenizer, vocab_size))
    histograms = statistics.histograms
    n_bins = histograms.counts.shape[1]
    top_kept = statistics.top.keys[:, 0] > -math.inf
    columns = {
        "latent": pa.array(np.arange(n_latents)),
        "density": pa.array((statistics.fire_count / max(statistics.n_tokens, 1)).numpy()),
        "mean_activation": pa.array((statistics.activation_sum / statistics.fire_count.clamp_min(1)).numpy()),
        "max_activation": pa.array(torch.where(top_kept, statistics.top.values.max(dim=1).values, 0.0).numpy()),
        "histogram_counts": _flat(histograms.counts.numpy()),
        "histogram_edges": _flat((histograms.upper[:, None] * torch.linspace(0, 1, n_bins + 1)).numpy()),
    }
    columns.update(_example_columns(statistics.top, vocabulary, "top"))
    columns.update(_example_columns(statistics.random, vocabulary, "random"))
    ordered = statistics.random.values.sort(dim=1, descending=True).values
    quantiles = histograms.quantiles(torch.arange(n_latents), ordered).numpy()
    columns["random_quantiles"] = _lists(quantiles, (statistics.random.keys > -math.inf).numpy())
    if effects is not None:
        promoted, promoted_logits, suppressed, suppressed_logits = (tensor.numpy() for tensor in effects)
        every = np.ones(promoted.shape, dtype=bool)
        columns["promoted_tokens"] = pa.ListArray.from_arrays(
            np.arange(0, promoted.size + 1, promoted.shape[1], dtype=np.int32),
            vocabulary.take(pa.array(promoted.ravel())),
        )
        columns["promoted_logits"] = _lists(promoted_logits, every)
        columns["suppressed_tokens"] = pa.ListArray.from_arrays(
            np.arange(0, suppressed.size + 1, suppressed.shape[1], dtype=np.int32),
            vocabulary.take(pa.array(suppressed.ravel())),
        )
        columns["suppressed_logits"] = _lists(suppressed_logits, every)
    return Dataset(pa.table(columns))


# ---- saving and loading ------------------------------------------------------------------------------


def save_analysis(dataset, settings: AnalysisSettings, output_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write latents.parquet and analysis.json into output_dir; with `overwrite`, replace a previous analysis whole
    (never a folder holding anything else, such as the SAE itself)."""
    # Staged and swapped in whole: a crash mid-write never leaves a parquet file beside the
    # analysis.json of another analysis.
    with staged_folder(output_dir, overwrite=overwrite, replaces=ANALYSIS_FILES, how_to_overwrite=HOW_TO_OVERWRITE) as staging:
        pyarrow.parquet.write_table(dataset.data.table, staging / LATENTS_FILE)
        write_json_atomic(staging / SUMMARY_FILE, asdict(settings))
    return Path(output_dir)


def load_analysis(path: str | os.PathLike):
    """Read an analysis folder (or a latents.parquet file) back as (Dataset, settings dict)."""
    from datasets import Dataset

    path = Path(path)
    parquet = path / LATENTS_FILE if path.is_dir() else path
    if not parquet.is_file():
        raise FileNotFoundError(f"No analysis at {path}: expected {parquet}. Run `hfsae analyze` for this SAE first.")
    summary_file = parquet.parent / SUMMARY_FILE
    settings = read_json(summary_file) if summary_file.is_file() else {}
    return Dataset(pyarrow.parquet.read_table(parquet)), settings


def push_analysis(
    path: str | os.PathLike, repo_id: str, *, private: bool | None = None, token: str | None = None
) -> str:
    """Push an analysis folder to the Hub dataset repo repo_id: the rows as parquet (`Dataset.push_to_hub`),
    analysis.json, and a dataset card (model_cards/dataset.md) carrying the settings. Returns the card's commit URL.

    Example:
        >>> push_analysis("my-sae/analysis", "org/my-sae-analysis")
    """
    from huggingface_hub import DatasetCard, HfApi, constants

    from .hub.card import template_path
    from .hub.source import is_repo_id

    dataset, settings = load_analysis(path)
    dataset.push_to_hub(repo_id, private=private, token=token, commit_message="Latent analysis by hfsae analyze")
    api = HfApi(token=token)
    summary = Path(path) / SUMMARY_FILE if Path(path).is_dir() else Path(path).parent / SUMMARY_FILE
    if summary.is_file():
        api.upload_file(path_or_fileobj=str(summary), path_in_repo=SUMMARY_FILE, repo_id=repo_id, repo_type="dataset")
    # Keep the metadata push_to_hub wrote (dataset_info, configs): load_dataset reads it.
    card_data = DatasetCard.load(repo_id, repo_type="dataset", token=token).data
    # DatasetCardData has no tags attribute until one is set.
    card_data.tags = sorted({*(card_data.get("tags") or []), "hfsae", "sparse-autoencoder", "interpretability"})
    sae = settings.get("sae")
    card = DatasetCard.from_template(
        card_data,
        template_path=str(template_path(DATASET_CARD_TEMPLATE)),
        repo_id=repo_id,
        sae_url=f"{constants.ENDPOINT}/{sae}" if sae and is_repo_id(sae) else None,
        **{key: settings.get(key, "–") for key in AnalysisSettings.__dataclass_fields__},
    )
    return card.push_to_hub(repo_id, repo_type="dataset", token=token, commit_message="Dataset card by hfsae analyze")
