"""Training past one device: data parallelism and latent sharding on torch.distributed (docs/method.md §6).

    grid.py        the data × latent process grid, with a timeout on every collective
    sharded.py     ShardedTopKSAE: one SAE's latents split across ranks, exact global top-k
    stats.py       global-batch FVU denominators and dead-latent statistics across ranks
    checkpoint.py  gather to / shard from ordinary hfsae folders, optimizer state included
"""

from .checkpoint import load_optimizer_state_, load_sharded_model, load_training_state, save_sharded_model, save_training_state
from .grid import ProcessGrid, ProcessGridError, build_grid, init_process_grid, shard_ranges
from .sharded import ShardedTopKSAE, data_parallel_sae, full_model, global_topk
from .stats import any_rank, global_count, global_normalized_mse

__all__ = [
    "ProcessGrid",
    "ProcessGridError",
    "ShardedTopKSAE",
    "any_rank",
    "build_grid",
    "data_parallel_sae",
    "full_model",
    "global_count",
    "global_normalized_mse",
    "global_topk",
    "init_process_grid",
    "load_optimizer_state_",
    "load_sharded_model",
    "load_training_state",
    "save_sharded_model",
    "save_training_state",
    "shard_ranges",
]
