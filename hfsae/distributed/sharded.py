"""ShardedTopKSAE: one TopK SAE whose latents are split across processes (docs/method.md §6).

Each rank of a latent group owns latents [start, stop): those rows of W_enc, b_enc and W_dec;
b_pre is replicated. A forward pass:

1. every rank computes its local pre-activations and keeps its own top-k candidates
   (values and global indices) with the usual ops backend;
2. the candidates are all-gathered and every rank takes the same exact global top-k of them;
3. each rank decodes the winners it owns; the partial reconstructions are summed with all-reduce.

Why k candidates per shard suffice: if a latent of shard s is among the global top k of a row,
every latent of s with a larger pre-activation is too, so at most k of s's latents win and they are
the largest of s. Its local top-k therefore holds every winner it owns, and the global top-k of the
union of local top-k lists is the global top-k (up to ties, as in one process). A shard with fewer
than k latents sends all of them, padded with −inf. AuxK (top k_aux among dead latents) works the
same way with k_aux candidates per shard.

Gradients: the sum of partial reconstructions is an all-reduce whose backward is the identity (every
rank holds the same loss); the centred input fed to the shards is an identity whose backward
all-reduces, because every shard's encoder sends gradient into b_pre. So each shard's weights get
gradient only through the winners it owns and b_pre's gradient is complete and equal on every rank.

With a data group (several replicas of the same shards fed different batches), the losses are those
of the whole global batch: the FVU denominators are all-reduced, and each rank's loss carries the
global value with the gradient of its own share, so averaging gradients over the data group
(`sync_gradients_`) gives exactly the gradient of one process on the whole batch. With one shard
this is plain data parallelism.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointNotFoundError, HfsaeError
from ..configuration import ARCHITECTURES, TopKSAEConfig
from ..folder import SHARDED_WEIGHTS_INDEX, WEIGHTS_FILE, staged_folder
from ..modeling import SparseCode, TopKSAE, TopKSAEOutput, check_input, check_k, denormalize, normalize, topk_losses
from ..ops import backend_for, selected_preactivations, sparse_decode
from .grid import ProcessGrid, all_gather, all_reduce_, barrier, shard_ranges
from .stats import global_normalized_mse


class UnsupportedVariantError(HfsaeError, ValueError):
    """The latent-sharded / data-parallel forward cannot run this variant."""


def check_shardable(config: TopKSAEConfig) -> None:
    """An UnsupportedVariantError naming the variant unless ShardedTopKSAE computes it exactly."""
    if not ARCHITECTURES[config.architecture].latent_shards:
        raise UnsupportedVariantError(
            f"architecture={config.architecture!r} trains on one process only: its selection is not built for "
            "--latent-shards or data-parallel processes. Train it with one process, or use architecture='topk'."
        )
    if config.is_transcoder or config.skip_connection:
        raise UnsupportedVariantError(
            f"A transcoder (target_hook_point={config.target_hook_point!r}) trains on one process only: the "
            "sharded forward reconstructs its input. Train it with one process."
        )


def _weight_files(folder: str) -> dict[str, str]:
    """Parameter name → the safetensors file holding it (one file, or a sharded index)."""
    index = os.path.join(folder, SHARDED_WEIGHTS_INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(folder, file) for name, file in weight_map.items()}
    single = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(single):
        raise CheckpointNotFoundError(
            f"{folder!r} holds no {WEIGHTS_FILE} (nor {SHARDED_WEIGHTS_INDEX}); expected a folder "
            f"written by save_pretrained."
        )
    with safe_open(single, "pt") as f:
        return {name: single for name in f.keys()}


class _SumOverShards(torch.autograd.Function):
    """Forward: all-reduce sum over the latent group. Backward: identity (the loss is replicated)."""

    @staticmethod
    def forward(ctx, tensor, group):
        return all_reduce_(tensor.clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _CopyToShards(torch.autograd.Function):
    """Forward: identity. Backward: all-reduce sum, since every shard's encoder reads the same input."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_(grad.contiguous().clone(), ctx.group), None


def global_topk(
    candidates: list[tuple[torch.Tensor, torch.Tensor, int]], group
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Exact global top-k of candidate sets gathered from every rank of `group`, in one all-gather.

    Each set is (values, global indices [batch, m], count) with m ≤ count: this rank's best
    candidates. Returns, per set, the `count` largest over all ranks: values and indices [batch,
    count], sorted descending. Values and indices travel together as float64 (indices below 2^53 are
    exact in float64).
    """
    batch = candidates[0][0].shape[0]
    values_parts, index_parts = [], []
    for values, indices, count in candidates:
        missing = count - values.shape[1]  # a small shard, or one with few dead latents: pad with losers
        values_parts.append(torch.cat([values.double(), values.new_full((batch, missing), float("-inf")).double()], 1))
        index_parts.append(torch.cat([indices.double(), indices.new_zeros(batch, missing).double()], 1))
    width = sum(count for _, _, count in candidates)
    packed = torch.cat(values_parts + index_parts, dim=1)  # [batch, 2 · width]
    gathered = torch.stack(all_gather(packed, group), dim=1)  # [batch, ranks, 2 · width]
    results, offset = [], 0
    for values, _, count in candidates:
        candidate_values = gathered[:, :, offset : offset + count].reshape(batch, -1)
        candidate_indices = gathered[:, :, width + offset : width + offset + count].reshape(batch, -1)
        top_values, positions = candidate_values.topk(count, dim=1)
        results.append((top_values.to(values.dtype), candidate_indices.gather(1, positions).long()))
        offset += count
    return results


def owned_columns(local: torch.Tensor, owned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The winners this rank owns, first in each row, as a code the sparse ops can decode.

    local, owned [batch, m]: local indices (meaningless where not owned) and ownership. Returns
    order [batch, width] (columns to take, owned ones first, in their order), the local indices
    [batch, width] and the ownership [batch, width], width = the most owned winners of any row.
    The filler entries of shorter rows get distinct local indices unused in their row: the sparse
    kernels (CSR on CPU) require a row's indices to be distinct. Such indices exist: a row owns c
    of the width ≤ n_local entries, and at most c of the indices 0..width−1 are taken.
    """
    batch = local.shape[0]
    count = owned.sum(dim=1, keepdim=True)  # [batch, 1]
    width = min(max(int(count.max()), 1) if batch else 1, local.shape[1])
    order = torch.argsort((~owned).to(torch.int8), dim=1, stable=True)[:, :width]
    local, owned = local.gather(1, order), owned.gather(1, order)
    # Mark which of 0..width−1 the owned entries use (column `width` collects everything else).
    taken = torch.zeros(batch, width + 1, dtype=torch.bool, device=local.device)
    taken.scatter_(1, torch.where(owned & (local < width), local, width), True)
    free = torch.argsort(taken[:, :width].to(torch.int8), dim=1, stable=True)  # unused indices first
    position = torch.arange(width, device=local.device).expand(batch, width)
    filler = free.gather(1, (position - count).clamp_min(0))
    return order, torch.where(owned, local, filler), owned


class ShardedTopKSAE(nn.Module):
    """This rank's slice [start, stop) of a TopK SAE's latents, computing the whole SAE with its peers.

    Parameters: W_enc, W_dec [stop − start, d_in], b_enc [stop − start], b_pre [d_in] (replicated).
    `forward` returns the same `TopKSAEOutput` as `TopKSAE.forward` on the global batch: the code
    holds global latent indices and is identical on every rank of the latent group.

    Example (under torchrun, 2 shards):
        >>> grid = init_process_grid(latent_shards=2)
        >>> sae = ShardedTopKSAE.from_pretrained("path/to/sae", grid)     # reads only this rank's rows
        >>> out = sae(x); out.loss.backward(); sae.sync_gradients_()
    """

    def __init__(self, config: TopKSAEConfig, grid: ProcessGrid):
        super().__init__()
        check_shardable(config)
        self.config = config
        self.grid = grid
        self.start, self.stop = grid.shard_range(config.n_latents)
        n_local, d = self.stop - self.start, config.d_in
        self.W_enc = nn.Parameter(torch.empty(n_local, d))
        self.b_enc = nn.Parameter(torch.zeros(n_local)) if config.latent_bias else None
        self.W_dec = nn.Parameter(torch.empty(n_local, d))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.W_skip = None  # check_shardable refuses skip connections
        self.ops_backend: str | None = None  # as TopKSAE.ops_backend

    # ---- building from and back to an ordinary TopKSAE ------------------------------------------------

    @classmethod
    def from_model(cls, model: TopKSAE, grid: ProcessGrid) -> ShardedTopKSAE:
        """This rank's shard of a whole model (every rank holds the same `model`)."""
        sharded = cls(model.config, grid).to(device=model.W_enc.device, dtype=model.W_enc.dtype)
        sharded.load_full_state_dict_(model.state_dict())
        return sharded

    @classmethod
    def from_pretrained(
        cls, folder: str, grid: ProcessGrid, *, device: str | torch.device = "cpu"
    ) -> ShardedTopKSAE:
        """Load this rank's shard of a saved hfsae folder, reading only its rows of the weight files."""
        sae = cls(TopKSAEConfig.from_pretrained(folder), grid)
        files = _weight_files(folder)
        state = {}
        for name, _ in sae.named_parameters():
            if name not in files:
                raise CheckpointNotFoundError(f"{folder!r} has no weight {name!r}; it holds {', '.join(sorted(files))}.")
            with safe_open(files[name], "pt") as f:
                state[name] = f.get_tensor(name) if name == "b_pre" else f.get_slice(name)[sae.start : sae.stop]
        sae = sae.to(device=device, dtype=next(iter(state.values())).dtype)
        with torch.no_grad():
            for name, parameter in sae.named_parameters():
                parameter.copy_(state[name])
        return sae

    @torch.no_grad()
    def load_full_state_dict_(self, state: dict[str, torch.Tensor]) -> None:
        """Copy this rank's rows of full-size tensors (a TopKSAE state dict) into the shard."""
        for name, parameter in self.named_parameters():
            parameter.copy_(self.shard_of(name, state[name]))

    def shard_of(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of the full-size tensor named `name` (rows for sharded ones, all for b_pre)."""
        return full if name == "b_pre" else full[self.start : self.stop]

    def gather_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's state dict, assembled on the latent group (same on every member)."""
        return {name: self.gather_full(name, tensor.detach()) for name, tensor in self.named_parameters()}

    def gather_full(self, name: str, local: torch.Tensor) -> torch.Tensor:
        """The full-size tensor from every shard's part `local` (shaped like parameter `name`)."""
        if name == "b_pre" or self.grid.latent_group is None:
            return local
        # all_gather needs equal shapes: pad every part to the largest shard.
        longest = -(-self.config.n_latents // self.grid.latent_size)
        padded = local.new_zeros(longest, *local.shape[1:])
        padded[: local.shape[0]] = local
        parts = all_gather(padded, self.grid.latent_group)
        ranges = shard_ranges(self.config.n_latents, self.grid.latent_size)
        return torch.cat([part[: stop - start] for part, (start, stop) in zip(parts, ranges)])

    def to_full_model(self) -> TopKSAE:
        """An ordinary single-process TopKSAE with the gathered weights (collective over the latent group)."""
        state = self.gather_state_dict()
        model = TopKSAE(self.config).to(device=self.W_enc.device, dtype=self.W_enc.dtype)
        model.load_state_dict(state)
        model.ops_backend = self.ops_backend
        return model

    def save_pretrained(self, folder: str, *, extra_files: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
        """Write one ordinary hfsae model folder (rank 0 writes; every rank must call this).

        `extra_files` ({file name: tensors}, used on rank 0) are saved into the folder with the model,
        in the same swap: the optimizer state of a checkpoint (`checkpoint.save_sharded_model`).
        """
        model = self.to_full_model() if self.grid.data_rank == 0 else None
        if self.grid.is_main:
            with staged_folder(folder, overwrite=True) as staging:
                model.save_pretrained(staging)
                for name, tensors in (extra_files or {}).items():
                    save_file(tensors, staging / name)
        barrier(self.grid)  # nobody reads the folder before rank 0 has finished it

    # ---- initialisation, decoder norms and gradient synchronisation -----------------------------------

    # Row-wise operations: correct on a shard as they are on the whole model (pass init_tied_ a
    # generator seeded differently per shard).
    init_tied_ = TopKSAE.init_tied_
    normalize_decoder_ = TopKSAE.normalize_decoder_
    project_decoder_grad_ = TopKSAE.project_decoder_grad_

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the gradients so that the whole model's gradient norm is at most max_norm.

        As torch.nn.utils.clip_grad_norm_ on the unsharded model: the squared norms of the shards
        are summed over the latent group, b_pre (replicated) counted once. Returns the norm before
        clipping. Call it after `sync_gradients_`.
        """
        sharded = [p.grad for name, p in self.named_parameters() if name != "b_pre" and p.grad is not None]
        squares = torch.stack([grad.float().pow(2).sum() for grad in sharded]).sum() if sharded else self.b_pre.new_zeros(())
        all_reduce_(squares, self.grid.latent_group)
        if self.b_pre.grad is not None:
            squares = squares + self.b_pre.grad.float().pow(2).sum()
        norm = squares.sqrt()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # torch's formula, so the results agree
        for parameter in self.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(scale.to(parameter.grad.dtype))
        return norm

    @torch.no_grad()
    def sync_gradients_(self) -> None:
        """Average every gradient over the data group (replicas of this shard fed other batches).

        One flat all-reduce for all parameters: fewer, larger messages.
        """
        group = self.grid.data_group
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if group is None or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        all_reduce_(flat, group).div_(self.grid.data_size)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    # ---- forward ---------------------------------------------------------------------------------------

    @property
    def ops(self):
        """The sparse-ops module for this shard's device (the same backends as TopKSAE)."""
        return backend_for(self.W_enc.device, self.ops_backend)

    def forward(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None = None, k: int | None = None
    ) -> TopKSAEOutput:
        """As TopKSAE.forward on x [..., d_in] (this rank's rows of the global batch).

        `dead_mask` [n_latents] bool is over all latents and must be equal on every rank (combine the
        statistics with `hfsae.distributed.stats.any_rank` first). Every rank of the job must call
        forward with the same k and the same kind of arguments: the collectives must match.
        """
        config = self.config
        k = check_k(config, k)
        leading = x.shape[:-1]
        # The same input check and normalisation as TopKSAE: they read only the config.
        x = check_input(config, x).reshape(-1, config.d_in).to(self.W_enc.dtype)
        x_norm, mean, scale = normalize(config, x)
        x_centred = _CopyToShards.apply(x_norm - self.b_pre, self.grid.latent_group)

        k_multi = min(config.multi_topk_factor * k, config.n_latents) if config.multi_topk_coef > 0 else k
        aux_mask = dead_mask if config.aux_k_coef > 0 else None
        if aux_mask is not None and aux_mask.shape != (config.n_latents,):
            raise ValueError(f"dead_mask must have shape ({config.n_latents},); got {tuple(aux_mask.shape)}.")
        indices, preacts, n_main = self._select(x_centred, max(k, k_multi), aux_mask)

        # Every rank holds all winners; it differentiates only through those it owns. The others
        # become value 0 at some local index: they add nothing and send no gradient anywhere.
        owned = (indices >= self.start) & (indices < self.stop)
        local = torch.where(owned, indices - self.start, 0)
        values = selected_preactivations(
            x_centred, self.W_enc, self.b_enc, local, torch.where(owned, preacts, 0.0), self.ops
        )
        values = torch.where(owned, torch.relu(values), 0.0)

        # Main, Multi-TopK and AuxK partial reconstructions go out in one all-reduce.
        spans = [(0, k)] + ([(0, k_multi)] if k_multi > k else [])
        has_aux = indices.shape[1] > n_main  # no AuxK candidates when no latent is dead
        if has_aux:
            spans.append((n_main, indices.shape[1]))
        partials = []
        for a, b in spans:
            order, span_local, span_owned = owned_columns(local[:, a:b], owned[:, a:b])
            span_values = torch.where(span_owned, values[:, a:b].gather(1, order), 0.0)
            partials.append(sparse_decode(span_local, span_values, self.W_dec, self.ops))
        decoded = _SumOverShards.apply(torch.cat(partials, dim=1), self.grid.latent_group).split(config.d_in, dim=1)

        x_hat_norm = decoded[0] + self.b_pre
        loss, fvu, multi_topk_loss, aux_loss = topk_losses(
            config,
            x_norm,
            x_hat_norm,
            x_hat_multi=decoded[1] + self.b_pre if k_multi > k else None,
            residual_hat=decoded[-1] if has_aux else None,
            aux=aux_mask is not None,
            measure=self._fvu,
        )

        code = SparseCode(
            indices=indices[:, :k].reshape(*leading, k),
            values=torch.relu(preacts[:, :k]).reshape(*leading, k),
            input_mean=None if mean is None else mean.reshape(*leading, 1),
            input_scale=None if scale is None else scale.reshape(*leading, 1),
        )
        x_hat = denormalize(config, x_hat_norm, mean, scale).reshape(*leading, config.d_in)
        return TopKSAEOutput(
            x_hat=x_hat, code=code, fvu=fvu, loss=loss, aux_loss=aux_loss, multi_topk_loss=multi_topk_loss
        )

    @torch.no_grad()
    def _select(
        self, x_centred: torch.Tensor, k: int, aux_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Global winners [batch, k (+ k_aux)]: global indices and pre-activations, main then AuxK."""
        group, n_local = self.grid.latent_group, self.stop - self.start
        k_aux = 0 if aux_mask is None else min(self.config.k_aux_effective, int(aux_mask.sum()))
        local_mask = None if aux_mask is None else aux_mask[self.start : self.stop]
        local_k_aux = 0 if not k_aux else min(k_aux, int(local_mask.sum()))
        b_enc = None if self.b_enc is None else self.b_enc.detach()
        selection = self.ops.encode_topk(
            x_centred.detach(), self.W_enc.detach(), b_enc, min(k, n_local),
            aux_mask=local_mask if local_k_aux else None, k_aux=local_k_aux,
        )
        candidates = [(selection.values, selection.indices + self.start, k)]
        if k_aux:
            aux_values, aux_indices = selection.aux_values, selection.aux_indices
            if aux_values is None:  # no dead latents in this shard
                aux_values = selection.values.new_empty(selection.values.shape[0], 0)
                aux_indices = selection.indices.new_empty(selection.indices.shape[0], 0)
            candidates.append((aux_values, aux_indices + self.start, k_aux))
        winners = global_topk(candidates, group)
        indices = torch.cat([indices for _, indices in winners], dim=1)
        values = torch.cat([values for values, _ in winners], dim=1)
        return indices, values, k

    def _fvu(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The FVU over the global batch of the data group, carrying this rank's gradient share."""
        return global_normalized_mse(x_hat, x, self.grid.data_group)



def data_parallel_sae(sae: TopKSAE) -> TopKSAE | ShardedTopKSAE:
    """What a data-parallel trainer should train: `sae` itself on one process; else a one-shard copy.

    The one-shard ShardedTopKSAE computes the FVU and AuxK denominators over the global batch, and
    its gradient, averaged by DDP (accelerator.prepare), is exactly the one-process gradient on the
    whole batch. With TopKSAE under DDP each process would normalise by its own batch's variance.
    Every process must call this (it creates process groups).
    """
    import torch.distributed as dist

    from .grid import build_grid

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return sae
    return ShardedTopKSAE.from_model(sae, build_grid(latent_shards=1))


def full_model(sae: TopKSAE | ShardedTopKSAE) -> TopKSAE:
    """An ordinary TopKSAE: `sae` itself, or the gathered shards (collective over the latent group)."""
    return sae.to_full_model() if isinstance(sae, ShardedTopKSAE) else sae
