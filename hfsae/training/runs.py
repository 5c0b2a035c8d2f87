"""One SAE of a training run (`SAERun`): its model, Adam, EMA and dead-latent counts; how it is built, how it
takes its part of an optimiser step, and how it goes into and comes back from a checkpoint.

Checkpoint tensors are full-size whatever the sharding (`full` gathers, `part` slices), so a run may resume on
another number of processes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from ..configuration import TopKSAEConfig
from ..distributed.grid import ProcessGrid
from ..distributed.sharded import ShardedTopKSAE
from ..distributed.stats import any_rank
from ..modeling import TopKSAE
from .config import TrainConfig
from .dead import DeadLatents
from .ema import EMA


# Tokens used to initialise b_pre (geometric median) and dataset_scale (docs/method.md §1: ~32k).
INIT_SAMPLE_TOKENS = 32_768


def measured_sae_config(config: TrainConfig, sample: dict[str, torch.Tensor], hook_point: str, n_latents: int, k: int,
                        *, base_model: str, init_from=None) -> tuple[TopKSAEConfig, torch.Tensor]:  # fmt: skip
    """(the SAE's config with what `sample` measures: widths and dataset_scale; the first INIT_SAMPLE_TOKENS rows
    of what it reconstructs, for b_pre)."""
    x = sample[hook_point][:INIT_SAMPLE_TOKENS].float().cpu()
    measured = {"base_model": base_model}
    target = config.target_of(hook_point)
    y = x if target is None else sample[target][:INIT_SAMPLE_TOKENS].float().cpu()
    if target is not None:
        measured["d_out"] = y.shape[1]
    if init_from is not None and init_from.config.dataset_scale is not None:
        measured["dataset_scale"] = init_from.config.dataset_scale
    elif config.normalize == "dataset_scale":
        # One constant for the layer so that E‖x‖² = d_in (docs/method.md §1).
        measured["dataset_scale"] = float((x.shape[1] / x.pow(2).sum(dim=1).mean()).sqrt())
    return config.sae_config(d_in=x.shape[1], hook_point=hook_point, n_latents=n_latents, k=k, **measured), y


def _seed_for(seed: int, name: str) -> int:
    # Each SAE's initialisation depends only on the seed and its own name, so training it alone
    # or inside a sweep starts from the same weights.
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def new_sae(sae_config: TopKSAEConfig, config: TrainConfig, name: str, sample: torch.Tensor, *, init_from=None) -> TopKSAE:
    """A new SAE of sae_config: init_from's weights, else tied (or untied) random weights with b_pre from `sample`
    of what it reconstructs."""
    sae = TopKSAE(sae_config)
    if init_from is not None:
        pretrained = init_from.config
        if (pretrained.architecture, pretrained.d_in, pretrained.output_size, pretrained.n_latents) != (
            sae_config.architecture, sae_config.d_in, sae_config.output_size, sae_config.n_latents
        ):
            raise ValueError(
                f"init_from={config.init_from!r} has d_in={pretrained.d_in}, n_latents={pretrained.n_latents}; "
                f"this run trains d_in={sae_config.d_in}, n_latents={sae_config.n_latents} at {sae_config.hook_point} "
                f"(architecture {pretrained.architecture} → {sae_config.architecture}, d_out {pretrained.output_size} → "
                f"{sae_config.output_size}). Pass the same --architecture, --n-latents {pretrained.n_latents} and hook "
                "points of those widths, or start from another SAE."
            )
        sae.load_state_dict(init_from.state_dict())
        return sae
    generator = torch.Generator().manual_seed(_seed_for(config.seed, name))
    sae.init_tied_(generator=generator)
    if not config.tied_init and sae.W_enc.shape == sae.W_dec.shape:  # else init_tied_ drew them apart
        with torch.no_grad():
            W_enc = torch.randn(sae.W_enc.shape, generator=generator)
            sae.W_enc.copy_(W_enc / W_enc.norm(dim=1, keepdim=True))
    sae.init_b_pre_(sample)
    return sae


@torch.no_grad()
def _copy_buffers_(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy every buffer (a BatchTopK threshold and its update count) from source into target, by name."""
    buffers = dict(source.named_buffers())
    for name, buffer in target.named_buffers():
        buffer.copy_(buffers[name])


@dataclass
class SAERun:
    """One SAE of the sweep and its training state."""

    name: str
    hook_point: str
    sae: TopKSAE | ShardedTopKSAE
    optimizer: torch.optim.Optimizer
    ema: EMA
    dead: DeadLatents
    learning_rate: float
    grid: ProcessGrid
    fvu_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # since the last log
    diverged: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.bool))  # no host sync

    @classmethod
    def build(cls, name: str, hook_point: str, sae: TopKSAE, config: TrainConfig, grid: ProcessGrid,
              device: torch.device) -> SAERun:  # fmt: skip
        """The run of `sae` on `device`: sharded over the grid when it has several processes, with a fresh Adam,
        EMA and dead-latent counts."""
        learning_rate = config.learning_rate_for(sae.config.n_latents)
        sae = sae.to(device)
        if grid.data_size * grid.latent_size > 1:
            # Its losses divide by the global batch's variance and its gradients are averaged over the
            # data group, so N processes step exactly as one process on the whole batch.
            sae = ShardedTopKSAE.from_model(sae, grid)
        optimizer = torch.optim.Adam(
            sae.parameters(), lr=learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon, fused=True
        )
        return cls(
            name=name,
            hook_point=hook_point,
            sae=sae,
            optimizer=optimizer,
            ema=EMA(sae, config.ema_decay),
            dead=DeadLatents(sae.config.n_latents, config.dead_tokens, device=device),
            learning_rate=learning_rate,
            grid=grid,
            fvu_sum=torch.zeros((), device=device),
            diverged=torch.zeros((), dtype=torch.bool, device=device),
        )

    @property
    def device(self) -> torch.device:
        return self.fvu_sum.device

    def full(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The full-size tensor of parameter `name` from this rank's part (collective when sharded)."""
        return self.sae.gather_full(name, tensor) if isinstance(self.sae, ShardedTopKSAE) else tensor

    def part(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full-size tensor of parameter `name`."""
        return self.sae.shard_of(name, tensor) if isinstance(self.sae, ShardedTopKSAE) else tensor

    def take_logs_(self, steps: int) -> dict[str, float]:
        """Mean training FVU over the last `steps` steps and the dead fraction now (host syncs); restarts the sum."""
        logs = {f"{self.name}/fvu": (self.fvu_sum / max(steps, 1)).item(), f"{self.name}/dead_fraction": self.dead.dead_fraction()}
        self.fvu_sum.zero_()
        return logs

    # ---- one optimiser step (the trainer's module docstring gives the order) ----------------------------

    def forward_backward_(self, x: torch.Tensor, target: torch.Tensor | None, *, micro_batches: int, autocast) -> None:
        """Forward one micro-batch with the dead mask, accumulate its gradient and the dead-latent counts."""
        with autocast():
            transcoding = {} if target is None else {"target": target}  # the sharded forward takes no target
            output = self.sae(x, dead_mask=self.dead.dead_mask, **transcoding)
        (output.loss / micro_batches).backward()
        self.fvu_sum += output.fvu.detach() / micro_batches
        self.diverged |= ~torch.isfinite(output.loss.detach())
        # Tokens of every data-parallel rank: a latent is alive if it fired on any of them.
        group = self.grid.data_group
        reduce = None if group is None else (lambda fired: any_rank(fired.bool(), group))
        self.dead.update_(output.code.indices, output.code.values, tokens=x.shape[0] * self.grid.data_size, reduce=reduce)

    def update_weights_(self, max_grad_norm: float | None) -> None:
        """Project, clip, step Adam, renormalise the decoder rows and fold the weights into the EMA."""
        sae = self.sae
        if isinstance(sae, ShardedTopKSAE):
            sae.sync_gradients_()
        sae.project_decoder_grad_()
        if max_grad_norm is not None:
            if isinstance(sae, ShardedTopKSAE):
                sae.clip_grad_norm_(max_grad_norm)
            else:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
        self.ema.update_(sae)

    def failed(self) -> torch.Tensor:
        """Whether a loss was NaN/inf or a weight is, as a 0-d bool tensor on the device (no host sync)."""
        finite = torch.stack([parameter.detach().isfinite().all() for parameter in self.sae.parameters()]).all()
        return self.diverged | ~finite

    def full_models(self) -> tuple[TopKSAE, TopKSAE]:
        """(raw, EMA) weights as ordinary TopKSAEs (collective when sharded)."""
        averaged = self.ema.averaged()
        raw = TopKSAE(self.sae.config).to(self.device)
        ema = TopKSAE(self.sae.config).to(self.device)
        raw.load_state_dict({name: self.full(name, p.detach()) for name, p in self.sae.named_parameters()}, strict=False)
        ema.load_state_dict({name: self.full(name, averaged[name]) for name in averaged}, strict=False)
        for model in (raw, ema):  # a BatchTopK threshold: estimated on the raw weights' codes
            _copy_buffers_(self.sae, model)
        return raw, ema

    # ---- checkpoints ------------------------------------------------------------------------------------

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Weights, EMA, Adam moments, buffers and dead counts by flat name under 'name/' (full size; collective
        when sharded)."""
        prefix = f"{self.name}/"
        tensors = {}
        for name, parameter in self.sae.named_parameters():
            tensors[f"{prefix}weights.{name}"] = self.full(name, parameter.detach())
            tensors[f"{prefix}ema.{name}"] = self.full(name, self.ema.shadow[self.ema.names.index(name)])
            adam = self.optimizer.state[parameter]
            for key in ("exp_avg", "exp_avg_sq"):
                tensors[f"{prefix}adam.{name}.{key}"] = self.full(name, adam[key])
            tensors[f"{prefix}adam.{name}.step"] = adam["step"]
        for name, buffer in self.sae.named_buffers():  # a BatchTopK threshold
            tensors[f"{prefix}buffers.{name}"] = buffer.detach()
        tensors[f"{prefix}ema_updates"] = torch.tensor(self.ema.updates)
        tensors[f"{prefix}dead.tokens_since_fired"] = self.dead.tokens_since_fired
        return tensors

    @classmethod
    def from_checkpoint(cls, name: str, hook_point: str, sae_config: dict, tensors: dict[str, torch.Tensor],
                        config: TrainConfig, grid: ProcessGrid, device: torch.device) -> SAERun:  # fmt: skip
        """The run `checkpoint_tensors` saved, on this rank's part of the grid."""
        prefix = f"{name}/"
        sae = TopKSAE(TopKSAEConfig.from_dict(sae_config))
        sae.load_state_dict({n: tensors[f"{prefix}weights.{n}"] for n, _ in sae.named_parameters()}, strict=False)
        with torch.no_grad():
            for n, buffer in sae.named_buffers():
                buffer.copy_(tensors[f"{prefix}buffers.{n}"])
        run = cls.build(name, hook_point, sae, config, grid, device)
        for n, shadow in zip(run.ema.names, run.ema.shadow):
            shadow.copy_(run.part(n, tensors[f"{prefix}ema.{n}"]))
        run.ema.updates = int(tensors[f"{prefix}ema_updates"])
        run.dead.load_state_dict({"tokens_since_fired": tensors[f"{prefix}dead.tokens_since_fired"].to(device)})
        optimizer_state = {
            index: {
                "step": tensors[f"{prefix}adam.{n}.step"],
                **{key: run.part(n, tensors[f"{prefix}adam.{n}.{key}"]).to(device) for key in ("exp_avg", "exp_avg_sq")},
            }
            for index, (n, _) in enumerate(run.sae.named_parameters())
        }
        run.optimizer.load_state_dict({"state": optimizer_state, "param_groups": run.optimizer.state_dict()["param_groups"]})
        return run
