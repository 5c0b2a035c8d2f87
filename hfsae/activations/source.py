"""Activation source: text → token contexts → activations at hook points → a shuffle buffer → batches.

    source = ActivationSource(model, tokenizer, ["layers.8.resid_post"], text=TextSource("builtin"))
    for batch in source:                        # {"layers.8.resid_post": [batch_tokens, d] float32}
        ...
        checkpoint["data"] = source.state_dict()   # later: source.load_state_dict(...) resumes

The shuffle buffer. Rows arrive in harvest order (context by context) and are cut into blocks of
`block_rows`. Each block is split at random (seeded by the block index) into SPREAD equal parts; part i
of block j leaves the buffer in stage j + i. Stage r therefore mixes rows of blocks r - SPREAD + 1 … r
(about 1.6 × buffer_tokens consecutive rows, from many documents), permuted again (seeded by r), and
the buffer is refilled one block per stage: old and new rows mix, and memory stays below
`buffer_tokens` rows per hook point for a stream of any length. A resumed source rebuilds the buffer
by harvesting blocks r - SPREAD + 1 … r again from the text position recorded for the first of them:
the same forward passes hold the same contexts, so the batches are bit-identical (CPU).

With `cache_dir`, the rows come from an activation cache (built on the first run: cache.py) instead of
the model: each epoch reads its shards in a new seeded order through the same buffer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from hfsae.activations.cache import ActivationCache, model_fingerprint, tokenizer_fingerprint
from hfsae.activations.hook_points import HookPoint, capture, resolve
from hfsae.activations.positions import FIRST_POSITION_USED, positions_used
from hfsae.activations.text import TextPosition, TextSource, token_contexts

__all__ = ["SPREAD", "ActivationSource", "TextSource"]

# A block's rows leave the buffer over this many stages (see the module docstring).
SPREAD = 4


def _n_rows(rows: dict[str, torch.Tensor]) -> int:
    return len(next(iter(rows.values())))


def _cat(pieces: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if len(pieces) == 1:
        return pieces[0]
    return {name: torch.cat([piece[name] for piece in pieces]) for name in pieces[0]}


def _take(rows: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {name: tensor[index] for name, tensor in rows.items()}


def _check_sizes(context_size, contexts_per_forward, batch_tokens, buffer_tokens, epochs, n_tokens) -> None:
    if not isinstance(context_size, int) or context_size <= FIRST_POSITION_USED:
        raise ValueError(f"context_size must be an integer above {FIRST_POSITION_USED}; got {context_size}.")
    for name, value in [
        ("contexts_per_forward", contexts_per_forward),
        ("batch_tokens", batch_tokens),
        ("buffer_tokens", buffer_tokens),
        ("epochs", epochs),
    ]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value}.")
    if n_tokens is not None and n_tokens < 1:
        raise ValueError(f"n_tokens must be positive or None; got {n_tokens}.")
    if buffer_tokens < batch_tokens:
        raise ValueError(
            f"buffer_tokens={buffer_tokens} is smaller than batch_tokens={batch_tokens}; give a buffer of at "
            "least a batch (a few batches shuffle better)."
        )


def _block_rows(buffer_tokens: int, batch_tokens: int, rows_per_forward: int) -> int:
    """Rows per buffer block, a multiple of SPREAD, so that the buffer stays within buffer_tokens rows.

    Peak buffer: the block being filled (block_rows + a forward pass), the older blocks' parts not yet
    used ((SPREAD - 1) / 2 blocks) and a batch carried over a stage's end.
    """
    spare = buffer_tokens - rows_per_forward - batch_tokens
    block_rows = max(0, int(spare * 2 / (SPREAD + 1))) // SPREAD * SPREAD
    if block_rows < SPREAD:
        raise ValueError(
            f"buffer_tokens={buffer_tokens} leaves no room to shuffle beside batch_tokens={batch_tokens} and a "
            f"forward pass of {rows_per_forward} rows; give buffer_tokens ≥ "
            f"{rows_per_forward + batch_tokens + 2 * SPREAD} (or fewer contexts_per_forward: --device-batch-tokens)."
        )
    return block_rows


class ActivationSource:
    """Shuffled batches {hook_point: [batch_tokens, d]} (float32) of a causal LM's activations.

    The forward pass stops after the deepest hook point and runs under torch.inference_mode; position
    0 of every context is left out (positions.py). An epoch is the first `n_tokens` rows of the text
    (all of it when None); iteration ends after `epochs` of them; the last batch may be smaller.

    Args:
        hook_points: one or more names, e.g. "layers.8.resid_post" (see hook_points.py).
        text: where the documents come from; default: the built-in corpus, "train" split.
        context_size: tokens per context (the paper uses 64).
        contexts_per_forward: contexts in one forward pass.
        batch_tokens: rows per yielded batch.
        buffer_tokens: most rows per hook point the shuffle buffer holds (with the forward pass
            being filled in); at least batch_tokens + one forward pass's rows + a few.
        n_tokens: rows per epoch; None: the whole text.
        epochs: passes over those rows (each shuffled anew).
        cache_dir: an activation cache folder: built from the model on the first run, read by
            every later run with the same model, hook points, text, context and dtypes.
        cache_dtype: how the cache stores rows: "float32", "bfloat16" or "float16".
        device: where batches go; default: the model's device.

    Size: one stream with one resume state (stage, offset, anchor) that the harvest, the shuffle buffer
    and the batches it emits all advance; split into classes, each part would reach into the others'.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        hook_points: str | Sequence[str],
        *,
        text: TextSource | None = None,
        context_size: int = 64,
        contexts_per_forward: int = 32,
        batch_tokens: int = 4096,
        buffer_tokens: int = 65536,
        n_tokens: int | None = None,
        epochs: int = 1,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        cache_dtype: str = "float32",
        device: str | torch.device | None = None,
        progress: bool = False,
    ):
        names = [hook_points] if isinstance(hook_points, str) else list(hook_points)
        self.hook_points: list[HookPoint] = [resolve(model, name) for name in names]
        if len({point.name for point in self.hook_points}) != len(self.hook_points):
            raise ValueError(f"Hook points repeat: {names}. Name each once.")
        _check_sizes(context_size, contexts_per_forward, batch_tokens, buffer_tokens, epochs, n_tokens)
        self.model = model
        self.tokenizer = tokenizer
        self.text = text if text is not None else TextSource()
        self.context_size = context_size
        self.contexts_per_forward = contexts_per_forward
        self.batch_tokens = batch_tokens
        self.buffer_tokens = buffer_tokens
        self.n_tokens = n_tokens
        self.epochs = epochs
        self.seed = seed
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.progress = progress
        self.block_rows = _block_rows(buffer_tokens, batch_tokens, self.rows_per_forward)
        self.cache = (
            ActivationCache(cache_dir, self._description(), dtype=cache_dtype) if cache_dir is not None else None
        )
        # Resume state: the next row to yield is row `offset` of stage `stage`; blocks from
        # `first_block` on start at the forward pass `anchor` = (epoch, pass in epoch, document, token).
        self._stage, self._offset, self._tokens_yielded = 0, 0, 0
        self._anchor: list[int] = [0, 0, 0, 0]
        self._epoch_rows: int | None = None  # rows of one epoch, once the text has been read through
        self._done = False
        # Throughput and memory counters (read by the trainer and the tests).
        self.forward_seconds = 0.0
        self.forward_tokens = 0
        self.buffered_rows = 0
        self.peak_buffered_rows = 0
        self._buffer_parts = {"pending": 0, "live": 0, "stage": 0}
        self._running: Iterator | None = None  # the stream a second iter() continues

    @property
    def rows_per_forward(self) -> int:
        return self.contexts_per_forward * (self.context_size - FIRST_POSITION_USED)

    @property
    def tokens_yielded(self) -> int:
        """Rows yielded so far (the data position a checkpoint records)."""
        return self._tokens_yielded

    def _description(self) -> dict:
        return {
            "model": model_fingerprint(self.model, self.hook_points),
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "hook_points": [point.name for point in self.hook_points],
            "context_size": self.context_size,
            "first_position_used": FIRST_POSITION_USED,
            "text": self.text.describe(),
            "n_tokens": self.n_tokens,
        }

    def state_dict(self) -> dict:
        """The data position: enough to resume iteration with exactly the remaining batches."""
        return {
            "tokens_yielded": self._tokens_yielded,
            "stage": self._stage,
            "offset": self._offset,
            "anchor": list(self._anchor),
            "epoch_rows": self._epoch_rows,
            "done": self._done,
            "seed": self.seed,
            "buffer_tokens": self.buffer_tokens,
            "batch_tokens": self.batch_tokens,
            "contexts_per_forward": self.contexts_per_forward,
            "n_tokens": self.n_tokens,
            "epochs": self.epochs,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; the shuffle, sizes and token budget must be the ones it was taken with."""
        for name in ("seed", "buffer_tokens", "batch_tokens", "contexts_per_forward", "n_tokens", "epochs"):
            if state.get(name) != getattr(self, name):
                raise ValueError(
                    f"Cannot resume: the saved data position used {name}={state.get(name)}, this source "
                    f"has {name}={getattr(self, name)}. Build the source with the saved value."
                )
        self._tokens_yielded = int(state["tokens_yielded"])
        self._stage, self._offset = int(state["stage"]), int(state["offset"])
        self._anchor = [int(value) for value in state["anchor"]]
        self._epoch_rows = state["epoch_rows"]
        self._done = bool(state["done"])
        self._running = None

    # ---- rows in harvest order, from the model or from the cache

    @torch.inference_mode()
    def _harvest(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows {hook_point: [contexts * (context_size - 1), d]} float32 of one forward pass."""
        device = next(self.model.parameters()).device
        started = time.perf_counter()
        activations = capture(self.model, input_ids.to(device), self.hook_points)
        rows = {name: positions_used(act).float() for name, act in activations.items()}
        self.forward_seconds += time.perf_counter() - started
        self.forward_tokens += input_ids.numel()
        return rows

    def _passes(self, epoch: int, forward: int, start: TextPosition) -> Iterator[tuple[list[int], dict]]:
        """(anchor, rows) of each forward pass from the given one on, epoch after epoch; an epoch stops
        after n_tokens rows or at the end of the text."""
        limit = self.n_tokens if self.n_tokens is not None else math.inf
        for epoch in range(epoch, self.epochs):
            keep = lambda rows, epoch_row: rows if limit == math.inf else _take(rows, slice(0, limit - epoch_row))  # noqa: E731
            contexts, first, epoch_row = [], start, forward * self.rows_per_forward
            for position, ids in token_contexts(self.text, self.tokenizer, self.context_size, start=start):
                if not contexts:
                    first = position
                contexts.append(ids)
                if len(contexts) == self.contexts_per_forward:
                    rows = self._harvest(torch.tensor(contexts, dtype=torch.long))
                    yield [epoch, forward, first.document, first.token], keep(rows, epoch_row)
                    contexts, forward, epoch_row = [], forward + 1, epoch_row + self.rows_per_forward
                    if epoch_row >= limit:
                        break
            if contexts and epoch_row < limit:
                rows = self._harvest(torch.tensor(contexts, dtype=torch.long))
                yield [epoch, forward, first.document, first.token], keep(rows, epoch_row)
                epoch_row += _n_rows(rows)
            epoch_rows = min(epoch_row, limit)
            if not epoch_rows:
                raise ValueError(
                    f"Dataset {self.text.dataset!r} ({self.text.split!r} split) gives no context of "
                    f"{self.context_size} tokens; use more text or a smaller context_size."
                )
            self._epoch_rows = epoch_rows
            forward, start = 0, TextPosition()

    def _model_blocks(self, first_block: int) -> Iterator[tuple[int, dict, list[int]]]:
        """(block index, its rows, its anchor) from `first_block` (whose anchor is self._anchor) on."""
        size = self.block_rows
        epoch, forward, document, token = self._anchor
        pending: list[dict] = []
        pending_rows = 0
        block, block_anchor = first_block, list(self._anchor)
        skip = None  # rows of the first pass that precede first_block
        for anchor, rows in self._passes(epoch, forward, TextPosition(document, token)):
            if skip is None:
                epoch_start = anchor[0] * self._epoch_rows if anchor[0] else 0
                skip = first_block * size - epoch_start - anchor[1] * self.rows_per_forward
                rows = _take(rows, slice(skip, None))
            if block_anchor is None:  # the previous block ended where this pass starts
                block_anchor = anchor
            pending.append(rows)
            pending_rows += _n_rows(rows)
            self._note_buffer(pending=pending_rows)
            while pending_rows >= size:
                joined = _cat(pending)
                next_anchor = anchor if pending_rows > size else None  # this pass holds the next block's start
                rest = _take(joined, slice(size, None))
                pending, pending_rows = ([rest] if _n_rows(rest) else []), pending_rows - size
                self._note_buffer(pending=pending_rows)
                yield block, _take(joined, slice(0, size)), block_anchor
                block, block_anchor = block + 1, next_anchor
        if pending_rows:
            self._note_buffer(pending=0)
            yield block, _cat(pending), block_anchor

    def _cache_blocks(self, first_block: int) -> Iterator[tuple[int, dict, list[int]]]:
        """Blocks of the cached rows: each epoch reads the shards in an order seeded by (seed, epoch)."""
        shards = self.cache.shards
        n_rows = self.cache.n_rows
        self._epoch_rows = n_rows
        orders = [
            torch.randperm(len(shards), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()
            for epoch in range(self.epochs)
        ]
        sequence = [shard for order in orders for shard in order]  # shards in reading order, epoch by epoch
        starts = [0]
        for shard in sequence:
            starts.append(starts[-1] + shards[shard]["rows"])
        total = n_rows * self.epochs
        block = first_block
        while block * self.block_rows < total:
            lo, hi = block * self.block_rows, min((block + 1) * self.block_rows, total)
            pieces = []
            for i, shard in enumerate(sequence):
                if starts[i + 1] > lo and starts[i] < hi:
                    pieces.append(self.cache.read(shard, max(lo, starts[i]) - starts[i], min(hi, starts[i + 1]) - starts[i]))
            yield block, _cat(pieces), [0, 0, 0, 0]
            block += 1

    def _build_cache(self) -> None:
        saved = self._anchor, self._epoch_rows, self.epochs
        self._anchor, self.epochs = [0, 0, 0, 0], 1
        with tqdm(total=self.n_tokens, desc="caching activations", unit="tok", disable=not self.progress) as bar:

            def passes():
                for _, rows in self._passes(0, 0, TextPosition()):
                    bar.update(_n_rows(rows))
                    yield rows

            self.cache.build(passes())
        self._anchor, self._epoch_rows, self.epochs = saved

    # ---- the shuffle buffer

    def _note_buffer(self, **parts: int) -> None:
        self._buffer_parts.update(parts)
        self.buffered_rows = sum(self._buffer_parts.values())
        self.peak_buffered_rows = max(self.peak_buffered_rows, self.buffered_rows)

    def _parts(self, block: int, rows: dict) -> list[dict | None]:
        """The block's rows split at random into SPREAD parts (part i leaves in stage block + i)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 2 * block)
        chunks = torch.randperm(_n_rows(rows), generator=generator).tensor_split(SPREAD)
        return [_take(rows, chunk) for chunk in chunks]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from the current data position on: a second loop continues where one stopped."""
        if self._running is None:
            self._running = self._stream()
        return self._running

    def _stream(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._done:
            self._running = None
            return
        if self.cache is not None and not self.cache.complete:
            self._build_cache()
        first_block = max(0, self._stage - SPREAD + 1)
        blocks = self._cache_blocks(first_block) if self.cache is not None else self._model_blocks(first_block)
        live: dict[int, list[dict | None]] = {}  # block → its parts not used yet
        anchors: dict[int, list[int]] = {}
        last_block = math.inf  # known once the blocks run out
        carry: list[dict] = []  # rows of the batch being gathered across a stage's end
        carried = 0
        stage, offset = self._stage, self._offset
        resume_stage = stage
        total = None if self.n_tokens is None else self.n_tokens * self.epochs
        with tqdm(total=total, initial=self._tokens_yielded, desc="activations", unit="tok", disable=not self.progress) as bar:
            while stage <= last_block + SPREAD - 1:
                while last_block == math.inf and max(live, default=first_block - 1) < stage:
                    item = next(blocks, None)
                    if item is None:
                        last_block = max(live, default=first_block - 1)
                        break
                    block, rows, anchors[block] = item
                    parts = self._parts(block, rows)
                    for used in range(min(SPREAD, resume_stage - block)):  # left before the resume point
                        parts[used] = None
                    live[block] = parts
                self._note_buffer(live=sum(_n_rows(part) for parts in live.values() for part in parts if part is not None))
                if stage > last_block + SPREAD - 1:
                    break
                pieces = [live[block][stage - block] for block in range(stage - SPREAD + 1, stage + 1) if block in live]
                pieces = [piece for piece in pieces if piece is not None]
                for block in list(live):
                    if block <= stage - SPREAD + 1:
                        del live[block]
                    elif block <= stage:
                        live[block][stage - block] = None
                rows = _cat(pieces) if pieces else None
                n_stage = _n_rows(rows) if rows is not None else 0
                if n_stage:
                    generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 2 * stage + 1)
                    rows = _take(rows, torch.randperm(n_stage, generator=generator))
                self._note_buffer(live=sum(_n_rows(p) for parts in live.values() for p in parts if p is not None))
                while offset < n_stage:
                    chosen = _take(rows, slice(offset, offset + self.batch_tokens - carried))
                    offset += _n_rows(chosen)
                    carry.append(chosen)
                    carried += _n_rows(chosen)
                    self._note_buffer(stage=n_stage - offset + carried)
                    if carried < self.batch_tokens:
                        break
                    yield self._emit(carry, bar, stage, offset, n_stage, anchors)
                    carry, carried = [], 0
                stage, offset = stage + 1, 0
            if carried:
                self._stage, self._offset = stage, 0
                yield self._emit(carry, bar, stage, 0, 0, anchors)
        self._done = True
        self._stage, self._offset, self._running = stage, 0, None
        self._note_buffer(pending=0, live=0, stage=0)

    def _emit(self, carry, bar, stage, offset, n_stage, anchors) -> dict[str, torch.Tensor]:
        """A batch on the batch device; records the data position right after it first."""
        batch = {name: tensor.to(self.device) for name, tensor in _cat(carry).items()}
        n = _n_rows(batch)
        self._tokens_yielded += n
        self._note_buffer(stage=max(0, n_stage - offset))
        if offset >= n_stage:  # the stage is used up: the next row is the next stage's first
            stage, offset = stage + 1, 0
        self._stage, self._offset = stage, offset
        first = max(0, stage - SPREAD + 1)
        for block in [block for block in anchors if block < first]:
            del anchors[block]
        if first in anchors:
            self._anchor = anchors[first]
        else:  # every block has left the buffer (a block up to `stage` was asked for): nothing remains
            self._done = True
        bar.update(n)
        return batch
