"""Activation source: text → token contexts → activations at hook points → shuffled batches.

    source = ActivationSource(model, tokenizer, ["layers.8.resid_post"], text=TextSource("builtin"))
    for batch in source:                        # {"layers.8.resid_post": [batch_tokens, d] float32}
        ...
        checkpoint["data"] = source.state_dict()   # later: source.load_state_dict(...) resumes

Rows are numbered in harvest order (context by context, position by position). The stream is cut
into shuffle blocks of `buffer_tokens` rows; each block is permuted by a generator seeded with
(seed, block index), so a resumed run needs only the current block's start in the text, not the
buffer's contents. Every forward pass holds the same contexts in a resumed run as in the original,
which keeps CPU results bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from hfsae.activations.cache import ActivationCache
from hfsae.activations.hook_points import HookPoint, capture, resolve
from hfsae.activations.text import TextPosition, TextSource, token_contexts

__all__ = ["ActivationSource", "TextSource"]


def _model_fingerprint(model: nn.Module) -> dict:
    """What identifies a model's weights for the activation cache, without hashing all of them."""
    config = getattr(model, "config", None)
    first = next(model.parameters())
    return {
        "name": getattr(model, "name_or_path", type(model).__name__),
        "config": config.to_json_string(use_diff=False) if config is not None else None,
        # Sums of a few tensors catch a fine-tuned model saved under the same name.
        "weights": [float(p.detach().double().sum()) for p in list(model.parameters())[:4]],
        "dtype": str(first.dtype),
    }


class ActivationSource:
    """Shuffled batches {hook_point: [tokens, d]} (float32) of a causal LM's activations.

    The forward pass stops after the deepest hook point and runs under torch.inference_mode. The
    last batch may be smaller than batch_tokens; iteration ends after n_tokens rows or at the end
    of the text.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        hook_points: str | Sequence[str],
        *,
        text: TextSource | None = None,
        context_size: int = 64,
        exclude_first_position: bool = True,
        contexts_per_forward: int = 32,
        batch_tokens: int = 4096,
        buffer_tokens: int = 65536,
        n_tokens: int | None = None,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool = False,
    ):
        """
        Args:
            hook_points: one or more names, e.g. "layers.8.resid_post" (see hook_points.py).
            text: where the documents come from; default: the built-in corpus, "train" split.
            context_size: tokens per context (the paper uses 64).
            exclude_first_position: leave out position 0 of every context. Its activations are
                unlike the rest: on the built-in model (layer 8 residual, 64-token contexts) its
                norm is 4.6× the others' and it holds 28% of the variance from 1/64 of the rows
                (layer 22: 75×, 98%), which an SAE would spend its capacity on.
            contexts_per_forward: contexts in one forward pass.
            batch_tokens: rows per yielded batch.
            buffer_tokens: rows shuffled together; rounded up to a multiple of batch_tokens.
            n_tokens: stop after this many rows (required with cache_dir).
            cache_dir: keep harvested rows on disk here and reuse them when every input matches.
            device: where batches go; default: the model's device.
        """
        names = [hook_points] if isinstance(hook_points, str) else list(hook_points)
        self.hook_points: list[HookPoint] = [resolve(model, name) for name in names]
        if len({point.name for point in self.hook_points}) != len(self.hook_points):
            raise ValueError(f"Hook points repeat: {names}. Name each once.")
        for name, value in [
            ("context_size", context_size),
            ("contexts_per_forward", contexts_per_forward),
            ("batch_tokens", batch_tokens),
            ("buffer_tokens", buffer_tokens),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value}.")
        if exclude_first_position and context_size < 2:
            raise ValueError(f"exclude_first_position needs context_size ≥ 2; got {context_size}.")
        if n_tokens is not None and n_tokens < 1:
            raise ValueError(f"n_tokens must be positive or None; got {n_tokens}.")
        if cache_dir is not None and n_tokens is None:
            raise ValueError("An activation cache needs n_tokens (how many rows to store); got None.")
        self.model = model
        self.tokenizer = tokenizer
        self.text = text if text is not None else TextSource()
        self.context_size = context_size
        self.exclude_first_position = exclude_first_position
        self.contexts_per_forward = contexts_per_forward
        self.batch_tokens = batch_tokens
        self.buffer_tokens = math.ceil(buffer_tokens / batch_tokens) * batch_tokens
        self.n_tokens = n_tokens
        self.seed = seed
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.progress = progress
        self.cache = ActivationCache(cache_dir, self._description()) if cache_dir is not None else None
        # Resume state: rows yielded so far, and where the current shuffle block starts in the text
        # (the forward pass that holds its first row, and that forward pass's first context).
        self._tokens_yielded = 0
        self._block_anchor = (0, TextPosition())

    @property
    def positions_per_context(self) -> int:
        return self.context_size - int(self.exclude_first_position)

    @property
    def rows_per_forward(self) -> int:
        return self.contexts_per_forward * self.positions_per_context

    @property
    def tokens_yielded(self) -> int:
        """Rows yielded so far (the data position a checkpoint records)."""
        return self._tokens_yielded

    def _description(self) -> dict:
        return {
            "model": _model_fingerprint(self.model),
            "tokenizer": [getattr(self.tokenizer, "name_or_path", None), len(self.tokenizer)],
            "hook_points": [point.name for point in self.hook_points],
            "context_size": self.context_size,
            "exclude_first_position": self.exclude_first_position,
            "text": self.text.describe(),
            "n_tokens": self.n_tokens,
        }

    def state_dict(self) -> dict:
        """The data position: enough to resume iteration with exactly the remaining batches."""
        forward_index, position = self._block_anchor
        return {
            "tokens_yielded": self._tokens_yielded,
            "block_forward_index": forward_index,
            "block_text_position": [position.document, position.token],
            "seed": self.seed,
            "buffer_tokens": self.buffer_tokens,
            "batch_tokens": self.batch_tokens,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; the shuffle and batch sizes must be the ones it was taken with."""
        for name in ("seed", "buffer_tokens", "batch_tokens"):
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"Cannot resume: the saved data position used {name}={state[name]}, this source "
                    f"has {name}={getattr(self, name)}. Build the source with the saved value."
                )
        self._tokens_yielded = int(state["tokens_yielded"])
        self._block_anchor = (int(state["block_forward_index"]), TextPosition(*state["block_text_position"]))

    # ---- harvesting: text position → forward passes → rows

    def _forward_batches(self, start: TextPosition) -> Iterator[tuple[TextPosition, torch.Tensor]]:
        """(text position of the first context, input_ids [contexts_per_forward, context_size])."""
        contexts, first = [], start
        for position, ids in token_contexts(self.text, self.tokenizer, self.context_size, start=start):
            if not contexts:
                first = position
            contexts.append(ids)
            if len(contexts) == self.contexts_per_forward:
                yield first, torch.tensor(contexts, dtype=torch.long)
                contexts = []
        if contexts:
            yield first, torch.tensor(contexts, dtype=torch.long)

    @torch.inference_mode()
    def _harvest(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows {hook_point: [contexts * positions_per_context, d]} float32 of one forward pass."""
        device = next(self.model.parameters()).device
        activations = capture(self.model, input_ids.to(device), self.hook_points)
        first = int(self.exclude_first_position)
        return {name: act[:, first:, :].reshape(-1, act.shape[-1]).float() for name, act in activations.items()}

    def _rows(self, forward_index: int, start: TextPosition) -> Iterator[tuple[int, TextPosition, dict]]:
        """(forward index, its text position, its rows) from a forward pass onward."""
        for offset, (position, input_ids) in enumerate(self._forward_batches(start)):
            yield forward_index + offset, position, self._harvest(input_ids)

    def _harvested_blocks(self, on_rows=lambda n: None) -> Iterator[tuple[int, dict, tuple | None]]:
        """(block index, rows of the block, anchor of the next block or None) from the current block
        on, harvested from the model; on_rows(n) is called with each forward pass's row count.

        The anchor of block j + 1 names the forward pass that holds its first row. When that pass
        is not harvested yet (the block ends on a forward boundary), it is recorded as soon as it is.
        """
        block = self._tokens_yielded // self.buffer_tokens
        anchor_index, anchor_position = self._block_anchor
        limit = self.n_tokens if self.n_tokens is not None else math.inf
        pending: list[dict] = []  # rows of consecutive forward passes, the first at pending_first_row
        pending_first_row = anchor_index * self.rows_per_forward
        anchors: dict[int, TextPosition] = {}
        awaited = None  # forward pass that will hold the next block's first row, not harvested yet
        for forward_index, position, rows in self._rows(anchor_index, anchor_position):
            anchors[forward_index] = position
            if forward_index == awaited:
                self._block_anchor, awaited = (forward_index, position), None
            pending.append(rows)
            on_rows(_n_rows(rows))
            while True:
                block_start = block * self.buffer_tokens
                block_stop = min(block_start + self.buffer_tokens, limit)
                if pending_first_row + sum(map(_n_rows, pending)) < block_stop:
                    break
                next_forward = block_stop // self.rows_per_forward
                next_anchor = (next_forward, anchors[next_forward]) if next_forward in anchors else None
                joined = {name: torch.cat([r[name] for r in pending]) for name in pending[0]}
                lo, hi = block_start - pending_first_row, block_stop - pending_first_row
                yield block, {name: tensor[lo:hi] for name, tensor in joined.items()}, next_anchor
                if block_stop >= limit:
                    return
                block += 1
                if next_anchor is None:
                    awaited = next_forward
                pending = pending[next_forward - forward_index + len(pending) - 1 :]
                pending_first_row = next_forward * self.rows_per_forward
                anchors = {i: p for i, p in anchors.items() if i >= next_forward}
        if pending:  # the text ended inside this block
            joined = {name: torch.cat([r[name] for r in pending]) for name in pending[0]}
            lo = block * self.buffer_tokens - pending_first_row
            if lo < _n_rows(joined):
                yield block, {name: tensor[lo:] for name, tensor in joined.items()}, None

    def _cached_blocks(self) -> Iterator[tuple[int, dict, None]]:
        n_rows = self.cache.n_rows
        block = self._tokens_yielded // self.buffer_tokens
        while block * self.buffer_tokens < n_rows:
            start = block * self.buffer_tokens
            yield block, self.cache.read(start, min(start + self.buffer_tokens, n_rows)), None
            block += 1

    def _build_cache(self) -> None:
        saved = self._tokens_yielded, self._block_anchor
        self._tokens_yielded, self._block_anchor = 0, (0, TextPosition())
        with tqdm(total=self.n_tokens, desc="caching activations", unit="tok", disable=not self.progress) as bar:
            self.cache.build(rows for _, rows, _ in self._harvested_blocks(bar.update))
        self._tokens_yielded, self._block_anchor = saved

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from the current data position on: a second loop continues where one stopped."""
        if self.n_tokens is not None and self._tokens_yielded >= self.n_tokens:
            return
        if self.cache is not None and not self.cache.complete:
            self._build_cache()
        blocks = self._cached_blocks() if self.cache is not None else self._harvested_blocks()
        with tqdm(
            total=self.n_tokens, initial=self._tokens_yielded, desc="harvesting", unit="tok", disable=not self.progress
        ) as bar:
            for block, rows, next_anchor in blocks:
                for batch in self._shuffled_batches(block, rows, next_anchor):
                    bar.update(_n_rows(batch))
                    yield batch

    def _shuffled_batches(self, block: int, rows: dict, next_anchor: tuple | None) -> Iterator[dict]:
        """The block's rows in a seeded random order, batch_tokens at a time, from the resume point."""
        n_rows = _n_rows(rows)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + block)
        permutation = torch.randperm(n_rows, generator=generator)
        offset = self._tokens_yielded - block * self.buffer_tokens
        while offset < n_rows:
            chosen = permutation[offset : offset + self.batch_tokens]
            batch = {name: tensor[chosen].to(self.device) for name, tensor in rows.items()}
            offset += len(chosen)
            self._tokens_yielded += len(chosen)
            # Once the block is used up, a checkpoint must point at the next block's start.
            if offset >= n_rows and next_anchor is not None:
                self._block_anchor = next_anchor
            yield batch


def _n_rows(rows: dict[str, torch.Tensor]) -> int:
    return len(next(iter(rows.values())))
