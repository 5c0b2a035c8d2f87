"""The batches of a run, one per optimiser step, each with the data position after it.

Two kinds, chosen by TrainConfig.streaming:

- `StreamBatches`: fresh activations from an `ActivationSource` (the language model runs as training
  goes, through a shuffle buffer); the position is the source's state_dict.
- `EpochBatches`: activations harvested once, held in memory and served as shuffled epochs (the
  default on a CPU, where the forward pass is the slow part). The batch of a step is a pure function
  of (seed, step): the permutation of epoch e comes from a generator seeded with (seed, e), so the
  position is the step count.

Iterating yields (batch {hook_point: [batch_size, d]}, position after it): a checkpoint stores the
position of the last batch trained on, whatever was read ahead.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class EpochBatches:
    """Batches of `batch_size` rows from activation tables {hook_point: [tokens, d]} in seeded epochs.

    Each epoch uses the first (tokens // batch_size) · batch_size rows of a fresh permutation, so a
    batch never straddles two epochs.
    """

    def __init__(self, tables: dict[str, torch.Tensor], *, batch_size: int, seed: int):
        sizes = {name: table.shape[0] for name, table in tables.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Every hook point needs the same number of tokens; got {sizes}.")
        self.tables = tables
        self.tokens = next(iter(sizes.values()))
        if self.tokens < batch_size:
            raise ValueError(
                f"A batch of {batch_size} tokens needs at least that many harvested tokens; got {self.tokens}. "
                "Harvest more tokens or use a smaller batch."
            )
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = self.tokens // batch_size
        self.position = 0
        self._epoch: int | None = None
        self._permutation: torch.Tensor | None = None

    def state_dict(self) -> dict:
        """The data position: batches served so far."""
        return {"step": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue after the batch recorded by `state_dict`."""
        self.position = int(state["step"])

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], dict]]:
        while True:
            batch = self.batch(self.position)
            self.position += 1
            yield batch, self.state_dict()

    def _permutation_of(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutation = torch.randperm(self.tokens, generator=generator)
            self._epoch = epoch
        return self._permutation

    def rows(self, step: int) -> torch.Tensor:
        """Row indices [batch_size] of the batch for optimiser step `step` (0-based)."""
        epoch, position = divmod(step, self.batches_per_epoch)
        start = position * self.batch_size
        return self._permutation_of(epoch)[start : start + self.batch_size]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """{hook_point: [batch_size, d]} for optimiser step `step`."""
        rows = self.rows(step)
        return {name: table[rows] for name, table in self.tables.items()}


class StreamBatches:
    """Batches streamed from an ActivationSource whose batch_tokens is the batch size."""

    def __init__(self, source):
        self.source = source

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], dict]]:
        for batch in self.source:
            yield batch, self.source.state_dict()


def split_batch(batch: dict[str, torch.Tensor], parts: int, part: int) -> dict[str, torch.Tensor]:
    """Part `part` of `parts` equal slices of every tensor's rows (micro-batches, processes)."""
    return {name: x.chunk(parts)[part] if parts > 1 else x for name, x in batch.items()}
