"""The process grid: data-parallel replicas × latent shards, on torch.distributed with timeouts.

World size = data_size · latent_size. Rank r sits at data_rank = r // latent_size and
latent_rank = r % latent_size, so the ranks of one latent group are consecutive: on a multi-GPU node
the shards of one SAE talk over the fast intra-node links and only the (smaller) gradient all-reduce
crosses nodes.

    latent_size = 2, data_size = 3       latent group = one SAE split in shards (same batch)
        rank 0 | rank 1                  data group   = ranks holding the same shard (different
        rank 2 | rank 3                                 batches); gradients are averaged over it
        rank 4 | rank 5
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import HfsaeError

# A collective that waits longer than this raises instead of hanging: a dead or stuck rank then
# ends the whole job with an error. Long enough for a slow checkpoint write on rank 0.
DEFAULT_TIMEOUT = timedelta(minutes=10)


class ProcessGridError(HfsaeError, ValueError):
    """The requested grid does not fit the processes that were launched."""


@dataclass(frozen=True)
class ProcessGrid:
    """Where this process sits in the data × latent grid, with the process groups it talks to.

    A group is None when it has one member: collectives over it are skipped, so one process with
    `ProcessGrid.single()` runs the same code without torch.distributed.
    """

    data_size: int
    latent_size: int
    data_rank: int
    latent_rank: int
    data_group: dist.ProcessGroup | None = None
    latent_group: dist.ProcessGroup | None = None

    @classmethod
    def single(cls) -> ProcessGrid:
        """The grid of one process: no data parallelism, one shard holding every latent."""
        return cls(data_size=1, latent_size=1, data_rank=0, latent_rank=0)

    @property
    def rank(self) -> int:
        """This process's global rank."""
        return self.data_rank * self.latent_size + self.latent_rank

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs (global rank 0)."""
        return self.rank == 0

    def shard_range(self, n_latents: int) -> tuple[int, int]:
        """The latents [start, stop) this rank owns; see `shard_ranges`."""
        return shard_ranges(n_latents, self.latent_size)[self.latent_rank]


def shard_ranges(n_latents: int, shards: int) -> list[tuple[int, int]]:
    """Split latents 0..n_latents into `shards` consecutive ranges whose sizes differ by at most one."""
    if not 1 <= shards <= n_latents:
        raise ProcessGridError(
            f"Cannot split n_latents={n_latents} into {shards} latent shards: every shard needs at least "
            f"one latent. Use 1..{n_latents} shards."
        )
    base, extra = divmod(n_latents, shards)
    bounds = [0]
    for shard in range(shards):
        bounds.append(bounds[-1] + base + (1 if shard < extra else 0))
    return list(zip(bounds[:-1], bounds[1:]))


def init_process_grid(
    *, latent_shards: int = 1, backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT
) -> ProcessGrid:
    """Join the job started by torchrun / `accelerate launch` and build its data × latent grid.

    Reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the environment (the launchers set them).
    `latent_shards` must divide the number of processes; the rest is data parallelism. Every
    collective of the job, in any group, gives up after `timeout`. Backend defaults to NCCL on CUDA,
    gloo otherwise. With one process and no launcher, returns `ProcessGrid.single()`.

    Example (4 GPUs: 2 data-parallel replicas of an SAE split in 2 shards):
        >>> grid = init_process_grid(latent_shards=2)   # under: torchrun --nproc_per_node 4 train.py
    """
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
            if latent_shards != 1:
                raise ProcessGridError(
                    f"latent_shards={latent_shards} needs that many processes; this is one process. Launch "
                    f"with `accelerate launch --num_processes N` or `torchrun --nproc_per_node N`."
                )
            return ProcessGrid.single()
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend, timeout=timeout)
    return build_grid(latent_shards=latent_shards, timeout=timeout)


def build_grid(*, latent_shards: int, timeout: timedelta = DEFAULT_TIMEOUT) -> ProcessGrid:
    """The grid over an already initialised default process group (every rank must call this)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if latent_shards < 1 or world % latent_shards:
        raise ProcessGridError(
            f"latent_shards={latent_shards} must divide the number of processes ({world}); choose one of "
            f"{', '.join(str(s) for s in range(1, world + 1) if world % s == 0)}."
        )
    data_size = world // latent_shards
    data_rank, latent_rank = divmod(rank, latent_shards)
    data_group = latent_group = None
    # new_group is itself collective: every rank creates every group, in the same order.
    for data_index in range(data_size):
        ranks = [data_index * latent_shards + shard for shard in range(latent_shards)]
        group = dist.new_group(ranks, timeout=timeout)
        if data_index == data_rank and latent_shards > 1:
            latent_group = group
    for shard in range(latent_shards):
        ranks = [data_index * latent_shards + shard for data_index in range(data_size)]
        group = dist.new_group(ranks, timeout=timeout)
        if shard == latent_rank and data_size > 1:
            data_group = group
    return ProcessGrid(data_size, latent_shards, data_rank, latent_rank, data_group, latent_group)


def group_size(group: dist.ProcessGroup | None) -> int:
    """Members of `group`; 1 for None (no communication needed)."""
    return 1 if group is None else dist.get_world_size(group)


def all_reduce_(tensor: torch.Tensor, group: dist.ProcessGroup | None, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Reduce `tensor` in place over `group` (a no-op for a group of one) and return it."""
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def all_gather(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> list[torch.Tensor]:
    """The same-shaped `tensor` of every member of `group`, in group-rank order."""
    if group is None:
        return [tensor]
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, tensor.contiguous(), group=group)
    return gathered


def barrier(grid: ProcessGrid) -> None:
    """Wait for every process of the job (within the timeout), e.g. until rank 0 has written a file."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
