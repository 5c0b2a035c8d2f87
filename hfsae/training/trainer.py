"""Training loop: activation batches in, trained SAEs (and checkpoints) out.

Every SAE of a sweep (one per hook point, n_latents and k) is a `SAERun`: the model with its own
Adam, EMA and dead-latent counts. All runs read the same batches, so they share the language
model's forward passes. One optimiser step of one run, in order (docs/method.md §1–3):

    forward with the dead mask (TopK, AuxK, Multi-TopK) → backward
    → dead-latent counts       from this batch's code (the selection the forward made)
    → project_decoder_grad_    the gradient loses its component along each decoder row, so the
                               step moves the rows (to first order) along their unit sphere
    → clip (optional)          after the projection: clip the gradient that will be applied
    → Adam (fused)
    → normalize_decoder_       Adam's step is not exactly tangent; restore unit rows afterwards
                               (the reference code renormalises before the step; we renormalise
                               after, so raw weights always have unit rows; an EMA
                               average's rows are close to, not exactly, unit norm)
    → EMA update               average the weights as they will be evaluated

Processes (docs/method.md §6): Accelerate starts torch.distributed and runs autocast; the trainer
puts them on a data × latent `ProcessGrid`. Data parallelism and `latent_shards` train a
`ShardedTopKSAE` (one shard per rank of a latent group, gradients averaged over the data group,
losses of the global batch), so N processes train what one process would. `distribute_saes`
instead gives each rank a share of the SAEs, each trained whole on the whole batch. Every rank runs
the same language-model forward passes; checkpoints and the saved folders hold full-size tensors,
so a run may resume on another number of processes.
"""

from __future__ import annotations

import math
import resource
import sys
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import chain

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..errors import HfsaeError
from ..configuration import TopKSAEConfig
from ..distributed.grid import ProcessGrid, init_process_grid
from ..distributed.sharded import ShardedTopKSAE, check_shardable
from ..distributed.stats import any_rank
from ..modeling import TopKSAE, fired_latents, fvu
from .checkpoint import checkpoints_of_run, load_checkpoint, remove_orphans, save_checkpoint
from .config import TrainConfig
from .data import StreamBatches, split_batch
from .dead import DeadLatents
from .ema import EMA

# Tokens used to initialise b_pre (geometric median) and dataset_scale (docs/method.md §1: ~32k).
INIT_SAMPLE_TOKENS = 32_768
# Rows per chunk when evaluating held-out activations (bounds the [rows, n_latents] pre-activations).
EVAL_CHUNK = 4096
# Collectives give up after this instead of hanging when another process died (long enough for a
# slow checkpoint write on rank 0).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
# A held-out FVU above this stops the run before anything is saved. The data's mean alone scores FVU 1 and
# an SAE starts near it (b_pre is the geometric median, decoder rows have unit norm), so 100 (reconstructions
# ten times farther from the data than its spread) is not undertraining: the weights diverged to finite
# values that the NaN check cannot see. A transcoder has no such starting point (its untrained output bears no
# relation to its target's spread), so only the NaN/inf checks guard it.
MAX_HELDOUT_FVU = 100.0
# Share of the held-out rows that only chooses between raw and EMA weights; the reported metrics are measured
# on the other rows, since choosing on the rows one then reports would flatter the reported FVU by the choice.
# A minority share: the choice only ranks two models, while the reported numbers want the precision.
SELECTION_SHARE = 0.25


class TrainingDivergedError(HfsaeError, ValueError):
    """A loss or weight became NaN or infinite, or the held-out FVU is absurd: the options (learning rate,
    loss weights, batch) diverge."""


def split_heldout(heldout: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(selection, reported) rows of every hook point: the first SELECTION_SHARE choose raw or EMA weights,
    the rest measure the reported metrics.

    Disjoint by rows, not by documents: the tables carry no document ids, and the harvest shuffles rows within
    a window of consecutive contexts, so only the documents near the cut give rows to both parts. The choice is
    one bit, and no reported metric is measured on a row that made it.
    """
    rows = next(iter(heldout.values())).shape[0]
    if rows < 2:
        raise ValueError(
            f"Got {rows} held-out rows; at least 2 are needed (some choose raw or EMA weights, the rest measure "
            "the kept ones): use eval_tokens of at least 2."
        )
    cut = max(1, int(rows * SELECTION_SHARE))
    return {name: x[:cut] for name, x in heldout.items()}, {name: x[cut:] for name, x in heldout.items()}


def _inputs_and_targets(part: dict[str, torch.Tensor], hook_point: str, target: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) in held-out rows: y is what the model reconstructs (x for an SAE, a transcoder's target)."""
    return part[hook_point], part[hook_point] if target is None else part[target]


def _all_finite(sae: torch.nn.Module) -> torch.Tensor:
    """Whether every weight of `sae` is finite, as a 0-d bool tensor on its device (no host sync)."""
    return torch.stack([parameter.detach().isfinite().all() for parameter in sae.parameters()]).all()


def sae_name(hook_point: str, n_latents: int, k: int) -> str:
    """The folder of one SAE of a sweep, e.g. 'layers.10.resid_post/n4096_k32'."""
    return f"{hook_point}/n{n_latents}_k{k}"


def _seed_for(seed: int, name: str) -> int:
    # Each SAE's initialisation depends only on the seed and its own name, so training it alone
    # or inside a sweep starts from the same weights.
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


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
    fvu_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # since the last log
    diverged: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.bool))  # no host sync

    def full(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The full-size tensor of parameter `name` from this rank's part (collective when sharded)."""
        return self.sae.gather_full(name, tensor) if isinstance(self.sae, ShardedTopKSAE) else tensor

    def part(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full-size tensor of parameter `name`."""
        return self.sae.shard_of(name, tensor) if isinstance(self.sae, ShardedTopKSAE) else tensor


@dataclass
class TrainResult:
    """What training one SAE produced: the model to save (EMA or raw) and its measurements."""

    name: str
    sae: TopKSAE
    metrics: dict


def make_accelerator(config: TrainConfig):
    """The Accelerator for a run: bf16 autocast on a GPU unless told otherwise, trackers, timeouts."""
    from accelerate import Accelerator, InitProcessGroupKwargs

    mixed_precision = config.mixed_precision
    if mixed_precision is None:
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(
        mixed_precision=mixed_precision,
        log_with=_available_trackers(config.report_to) or None,
        project_dir=config.output_dir,
        # Every collective times out instead of hanging when another process has died.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)],
    )


def _available_trackers(names: list[str]) -> list[str]:
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"report_to names {missing}, which is not installed; pip install {' '.join(missing)}.")
    return list(names)


def _peak_rss_bytes() -> int:
    # VmHWM is this program's own peak; ru_maxrss keeps the peak of the process that exec'd it
    # (a benchmark or notebook that launched the run), so it is only the fallback off Linux.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_memory() -> dict[str, int]:
    """Peak resident memory of this process, and the peak CUDA allocation when there is a GPU (bytes)."""
    peaks = {"peak_rss_bytes": _peak_rss_bytes()}
    if torch.cuda.is_available():
        peaks["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return peaks


@torch.no_grad()
def _copy_buffers_(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy every buffer (a BatchTopK threshold and its update count) from source into target, by name."""
    buffers = dict(source.named_buffers())
    for name, buffer in target.named_buffers():
        buffer.copy_(buffers[name])


class Trainer:
    """Trains every SAE of a TrainConfig on a stream of activation batches (see `data.py`).

    Example:
        >>> config = TrainConfig(hook_points=["h"], n_latents=[64], k=[4], batch_size=256, train_tokens=2560,
        ...                      harvest_tokens=1024)
        >>> data = EpochBatches({"h": torch.randn(1024, 16)}, batch_size=256, seed=0)
        >>> results = Trainer(config).fit(data, {"h": torch.randn(256, 16)})
    """

    def __init__(self, config: TrainConfig, *, accelerator=None, base_model: str | None = None, init_from=None):
        self.config = config
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self.base_model = base_model or config.model
        self.init_from = init_from  # a pretrained TopKSAE to start from (config.init_from, loaded)
        self.step = 0
        self.runs: list[SAERun] = []
        self.run_id = uuid.uuid4().hex
        self.position: dict = {}  # the data position after the last step
        self.forward_seconds = self.step_seconds = 0.0
        self.forward_tokens = 0
        world = self.accelerator.num_processes
        if world > 1 and not config.distribute_saes:
            self.grid = init_process_grid(latent_shards=config.latent_shards, timeout=COLLECTIVE_TIMEOUT)
        elif config.latent_shards > 1:
            self.grid = init_process_grid(latent_shards=config.latent_shards)  # raises: one process
        else:
            self.grid = ProcessGrid.single()
        processes = self.grid.data_size * config.gradient_accumulation_steps
        if config.batch_size % processes:
            raise ValueError(
                f"batch_size={config.batch_size} must split evenly over {self.grid.data_size} data-parallel "
                f"process(es) × {config.gradient_accumulation_steps} accumulation step(s)."
            )
        if config.batch_size // processes < 2:
            raise ValueError(
                f"batch_size={config.batch_size} leaves {config.batch_size // processes} row per micro-batch and "
                "process: the FVU divides by the batch's variance, which needs at least 2 rows. Raise batch_size."
            )
        names = config.sae_names()
        if self.grid.data_size * self.grid.latent_size > 1:
            # Refused by name before any activation is read, never trained as plain TopK.
            check_shardable(config.sae_config(d_in=1, d_out=1, hook_point=names[0][0], n_latents=names[0][1], k=names[0][2]))
        if config.distribute_saes:
            rank = self.accelerator.process_index
            if len(names) < world:
                raise ValueError(
                    f"distribute_saes gives each of {world} processes a share of {len(names)} SAE(s); some would "
                    "have none. Train more SAEs, or use fewer processes."
                )
            names = names[rank::world]
        self.names = [sae_name(*name) for name in names]
        self._sizes = dict(zip(self.names, names))

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    # ---- setting up ---------------------------------------------------------------------------------

    def init_runs_(self, sample: dict[str, torch.Tensor]) -> None:
        """Build and initialise every SAE: tied (or not) weights, b_pre and dataset_scale from `sample`."""
        config = self.config
        self.runs = []
        for name in self.names:
            hook_point, n_latents, k = self._sizes[name]
            x = sample[hook_point][:INIT_SAMPLE_TOKENS].float().cpu()
            measured = {"base_model": self.base_model}
            target = config.target_of(hook_point)
            if target is not None:
                y = sample[target][:INIT_SAMPLE_TOKENS].float().cpu()
                measured["d_out"] = y.shape[1]
            if self.init_from is not None and self.init_from.config.dataset_scale is not None:
                measured["dataset_scale"] = self.init_from.config.dataset_scale
            elif config.normalize == "dataset_scale":
                # One constant for the layer so that E‖x‖² = d_in (docs/method.md §1).
                measured["dataset_scale"] = float((x.shape[1] / x.pow(2).sum(dim=1).mean()).sqrt())
            sae_config = config.sae_config(d_in=x.shape[1], hook_point=hook_point, n_latents=n_latents, k=k, **measured)
            sae = self._initialised_sae(sae_config, name, x if target is None else y)
            self.runs.append(self._prepare_run(name, hook_point, sae))

    def _initialised_sae(self, sae_config: TopKSAEConfig, name: str, sample: torch.Tensor) -> TopKSAE:
        """A new SAE of sae_config, from init_from or tied random weights; b_pre from `sample` of what it reconstructs."""
        sae = TopKSAE(sae_config)
        if self.init_from is not None:
            pretrained = self.init_from.config
            if (pretrained.architecture, pretrained.d_in, pretrained.output_size, pretrained.n_latents) != (
                sae_config.architecture, sae_config.d_in, sae_config.output_size, sae_config.n_latents
            ):
                raise ValueError(
                    f"init_from={self.config.init_from!r} has d_in={pretrained.d_in}, n_latents={pretrained.n_latents}; "
                    f"this run trains d_in={sae_config.d_in}, n_latents={sae_config.n_latents} at {sae_config.hook_point} "
                    f"(architecture {pretrained.architecture} → {sae_config.architecture}, d_out {pretrained.output_size} → "
                    f"{sae_config.output_size}). Pass the same --architecture, --n-latents {pretrained.n_latents} and hook "
                    "points of those widths, or start from another SAE."
                )
            sae.load_state_dict(self.init_from.state_dict())
            return sae
        generator = torch.Generator().manual_seed(_seed_for(self.config.seed, name))
        sae.init_tied_(generator=generator)
        if not self.config.tied_init and sae.W_enc.shape == sae.W_dec.shape:  # else init_tied_ drew them apart
            with torch.no_grad():
                W_enc = torch.randn(sae.W_enc.shape, generator=generator)
                sae.W_enc.copy_(W_enc / W_enc.norm(dim=1, keepdim=True))
        sae.init_b_pre_(sample)
        return sae

    def _prepare_run(self, name: str, hook_point: str, sae: TopKSAE) -> SAERun:
        config = self.config
        learning_rate = config.learning_rate_for(sae.config.n_latents)
        sae = sae.to(self.device)
        if self.grid.data_size * self.grid.latent_size > 1:
            # Its losses divide by the global batch's variance and its gradients are averaged over the
            # data group, so N processes step exactly as one process on the whole batch.
            sae = ShardedTopKSAE.from_model(sae, self.grid)
        optimizer = torch.optim.Adam(
            sae.parameters(),
            lr=learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            fused=True,
        )
        return SAERun(
            name=name,
            hook_point=hook_point,
            sae=sae,
            optimizer=optimizer,
            ema=EMA(sae, config.ema_decay),
            dead=DeadLatents(sae.config.n_latents, config.dead_tokens, device=self.device),
            learning_rate=learning_rate,
            fvu_sum=torch.zeros((), device=self.device),
            diverged=torch.zeros((), dtype=torch.bool, device=self.device),
        )

    # ---- one optimiser step (see the module docstring for the order) ---------------------------------

    def train_step(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimiser step of every run on a global batch {hook_point: [batch_size, d_in]}."""
        micro_batches = self.config.gradient_accumulation_steps
        batch = split_batch(batch, self.grid.data_size, self.grid.data_rank)
        factor = self.config.learning_rate_factor(self.step)
        for run in self.runs:
            for group in run.optimizer.param_groups:
                group["lr"] = run.learning_rate * factor
        for micro in range(micro_batches):
            x_by_hook = split_batch(batch, micro_batches, micro)
            for run in self.runs:
                target = run.sae.config.target_hook_point
                y = None if target is None else x_by_hook[target].to(self.device)
                self._forward_backward(run, x_by_hook[run.hook_point].to(self.device), y)
        for run in self.runs:
            self._update_weights(run)
        self.step += 1

    def _forward_backward(self, run: SAERun, x: torch.Tensor, target: torch.Tensor | None) -> None:
        micro_batches = self.config.gradient_accumulation_steps
        with self.accelerator.autocast():
            transcoding = {} if target is None else {"target": target}  # the sharded forward takes no target
            output = run.sae(x, dead_mask=run.dead.dead_mask, **transcoding)
        (output.loss / micro_batches).backward()
        run.fvu_sum += output.fvu.detach() / micro_batches
        run.diverged |= ~torch.isfinite(output.loss.detach())
        # Tokens of every data-parallel rank: a latent is alive if it fired on any of them.
        group = self.grid.data_group
        reduce = None if group is None else (lambda fired: any_rank(fired.bool(), group))
        run.dead.update_(output.code.indices, output.code.values, tokens=x.shape[0] * self.grid.data_size, reduce=reduce)

    def _update_weights(self, run: SAERun) -> None:
        sae = run.sae
        if isinstance(sae, ShardedTopKSAE):
            sae.sync_gradients_()
        sae.project_decoder_grad_()
        if self.config.max_grad_norm is not None:
            if isinstance(sae, ShardedTopKSAE):
                sae.clip_grad_norm_(self.config.max_grad_norm)
            else:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), self.config.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
        run.ema.update_(sae)

    def check_finite(self) -> None:
        """Raise TrainingDivergedError if any run's loss was NaN or infinite, or its weights are (one host sync,
        every rank)."""
        flags = torch.stack([run.diverged | ~_all_finite(run.sae) for run in self.runs]).to(torch.int32)
        if dist.is_initialized() and dist.get_world_size() > 1:
            total = flags.sum().reshape(1)
            dist.all_reduce(total, op=dist.ReduceOp.MAX)
            if int(total) == 0:
                return
        elif not bool(flags.any()):
            return
        bad = [run.name for run, flag in zip(self.runs, flags.tolist()) if flag] or ["an SAE on another process"]
        raise TrainingDivergedError(
            f"Training diverged: the loss or weights of {', '.join(bad)} became NaN or infinite by step {self.step} "
            f"{self._what_to_do()}"
        )

    def _what_to_do(self) -> str:
        """The end of a divergence message: the options that diverged, what was kept, what to change."""
        config = self.config
        saved = checkpoints_of_run(config.output_dir, self.run_id) if config.save_steps else []
        if saved:
            kept = f"the last checkpoint, {saved[-1]}, is kept"
        else:
            kept = "no checkpoint was saved" + ("" if config.save_steps else " (set save_steps to keep checkpoints)")
        return (
            f"(learning_rate={config.learning_rate}, aux_k_coef={config.aux_k_coef}, batch_size={config.batch_size}); "
            f"{kept}. Lower the learning rate or the loss weights, or use larger batches."
        )

    def _check_heldout_fvu(self, name: str, fvu_value: float, *, transcoder: bool) -> None:
        if not math.isfinite(fvu_value) or (not transcoder and fvu_value > MAX_HELDOUT_FVU):
            raise TrainingDivergedError(
                f"Training diverged: {name} reconstructs the held-out activations with FVU {fvu_value:.3g} after "
                f"{self.step} steps, above {MAX_HELDOUT_FVU:g} (the data's mean alone scores 1), so no SAE was saved "
                f"{self._what_to_do()}"
            )

    # ---- the loop -----------------------------------------------------------------------------------

    def fit(self, data, heldout: dict[str, torch.Tensor], *, resume_from=None) -> list[TrainResult]:
        """Train for config.steps steps on `data` (EpochBatches / StreamBatches), evaluate on `heldout`
        (split by `split_heldout` into rows that choose raw or EMA weights and rows that measure them).

        `resume_from`: a checkpoint folder to continue from (the runs are rebuilt from it).
        """
        config = self.config
        selection, reported = split_heldout(heldout)  # before training: refuse too few rows early
        if resume_from is not None:
            tensors, state = load_checkpoint(resume_from)
            self.load_state_(tensors, state)
            data.load_state_dict(self.position)
        batches = iter(data)
        if resume_from is None:
            batches = self._init_from_first_batches(batches)
        if config.report_to:
            hyperparameters = {name: str(value) if isinstance(value, list) else value for name, value in vars(config).items()}
            self.accelerator.init_trackers("hfsae", config=hyperparameters)
        if self.accelerator.is_main_process:
            remove_orphans(config.output_dir)
        streaming = isinstance(data, StreamBatches)
        started = time.perf_counter()
        hidden = config.quiet or not self.accelerator.is_local_main_process
        progress = tqdm(total=config.steps, initial=self.step, desc="training", unit="step", disable=hidden)
        at_log = (self.step, self.forward_seconds, self.step_seconds)
        while self.step < config.steps:
            tick = time.perf_counter()
            try:
                batch, position = next(batches)
            except StopIteration:
                raise ValueError(
                    f"The training text ran out after {self.step} of {config.steps} steps. Use more text "
                    "(dataset), fewer train_tokens, or epochs over harvested tokens (no --streaming)."
                ) from None
            tock = time.perf_counter()
            self.train_step(batch)
            self.position = position
            if streaming:
                self.forward_seconds += tock - tick
                self.forward_tokens += config.batch_size
            self.step_seconds += time.perf_counter() - tock
            progress.update(1)
            if self.step % config.logging_steps == 0 or self.step == config.steps:
                self.check_finite()
                at_log = self._log(progress, at_log)
            if config.save_steps and self.step % config.save_steps == 0:
                self.save_state()
        progress.close()
        self.check_finite()
        if config.save_steps and self.step % config.save_steps != 0:
            self.save_state()
        elapsed = time.perf_counter() - started
        return self._finish(selection, reported, elapsed)

    def _init_from_first_batches(self, batches):
        """Initialise the SAEs from the first batches (INIT_SAMPLE_TOKENS rows), then train on them too."""
        first = []
        rows = 0
        for item in batches:
            first.append(item)
            rows += next(iter(item[0].values())).shape[0]
            if rows >= INIT_SAMPLE_TOKENS or len(first) >= self.config.steps:
                break
        sample = {name: torch.cat([batch[name] for batch, _ in first]) for name in first[0][0]}
        self.init_runs_(sample)
        return chain(first, batches)

    def _log(self, progress, at_log: tuple[int, float, float]) -> tuple[int, float, float]:
        """Progress bar and trackers: the only host syncs of the loop, every logging_steps steps."""
        step_then, forward_then, sae_then = at_log
        steps = self.step - step_then
        tokens = steps * self.config.batch_size
        logs = {}
        for run in self.runs:
            logs[f"{run.name}/fvu"] = (run.fvu_sum / max(steps, 1)).item()
            logs[f"{run.name}/dead_fraction"] = run.dead.dead_fraction()
            run.fvu_sum.zero_()
        first = self.runs[0].name
        postfix = {"sae_tok/s": f"{tokens / max(self.step_seconds - sae_then, 1e-9):,.0f}"}
        if self.forward_seconds > forward_then:
            postfix["forward_tok/s"] = f"{tokens / (self.forward_seconds - forward_then):,.0f}"
        progress.set_postfix(
            **postfix, fvu=f"{logs[f'{first}/fvu']:.4f}", dead=f"{logs[f'{first}/dead_fraction']:.3f}"
        )
        if self.config.report_to:
            self.accelerator.log(logs, step=self.step)
        return self.step, self.forward_seconds, self.step_seconds

    # ---- evaluation and the model to keep -----------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self, sae: TopKSAE, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
        """(FVU, fraction of latents that never fire, L0) on held-out activations x [tokens, d_in].

        y is what the model reconstructs (x for an SAE, a transcoder's target). FVU is measured in the
        activation's own scale: x_hat is what would be spliced back. L0 is measured (BatchTopK's varies),
        with the selection of inference (eval mode: a BatchTopK threshold).
        """
        sae.eval()
        x_hats, fired = [], torch.zeros(sae.config.n_latents, dtype=torch.bool, device=self.device)
        active = 0
        for chunk in x.split(EVAL_CHUNK):
            output = sae(chunk.to(self.device))
            x_hats.append(output.x_hat.float().cpu())
            fired |= fired_latents(output.code.indices, output.code.values, sae.config.n_latents)
            active += int((output.code.values > 0).sum())
        error = fvu(torch.cat(x_hats).double(), y.double()).item()
        return error, 1.0 - fired.float().mean().item(), active / x.shape[0]

    def _full_models(self, run: SAERun) -> tuple[TopKSAE, TopKSAE]:
        """(raw, EMA) weights as ordinary TopKSAEs (collective when sharded)."""
        averaged = run.ema.averaged()
        raw = TopKSAE(run.sae.config).to(self.device)
        ema = TopKSAE(run.sae.config).to(self.device)
        raw.load_state_dict({name: run.full(name, p.detach()) for name, p in run.sae.named_parameters()}, strict=False)
        ema.load_state_dict({name: run.full(name, averaged[name]) for name in averaged}, strict=False)
        for model in (raw, ema):  # a BatchTopK threshold: estimated on the raw weights' codes
            _copy_buffers_(run.sae, model)
        return raw, ema

    def _choose_weights(self, run: SAERun, raw: TopKSAE, ema: TopKSAE, selection: dict[str, torch.Tensor],
                        reported: dict[str, torch.Tensor]) -> tuple[TopKSAE, dict]:  # fmt: skip
        """Keep EMA or raw weights, whichever has the lower FVU on the selection rows (the paper keeps the
        better); measure both, and report the kept one's metrics, on the reported rows only."""
        candidates = {"raw": raw, "ema": ema}
        hooks = (run.hook_point, raw.config.target_hook_point)
        chosen_on = {name: self._evaluate(sae, *_inputs_and_targets(selection, *hooks))[0] for name, sae in candidates.items()}
        weights = "ema" if chosen_on["ema"] <= chosen_on["raw"] else "raw"
        measured = {name: self._evaluate(sae, *_inputs_and_targets(reported, *hooks)) for name, sae in candidates.items()}
        fvu_value, unfired, l0 = measured[weights]
        metrics = {
            "fvu": fvu_value,
            "fvu_raw": measured["raw"][0],
            "fvu_ema": measured["ema"][0],
            "weights": weights,
            "selection_fvu_raw": chosen_on["raw"],
            "selection_fvu_ema": chosen_on["ema"],
            "heldout_unfired_fraction": unfired,
            "l0": l0,
            "selection_tokens": selection[run.hook_point].shape[0],
            "heldout_tokens": reported[run.hook_point].shape[0],
        }
        return candidates[weights], metrics

    def _finish(self, selection: dict[str, torch.Tensor], reported: dict[str, torch.Tensor], elapsed: float) -> list[TrainResult]:
        """Keep raw or EMA weights as chosen on the `selection` rows; report metrics measured on `reported`.

        Returns every run's result on the main process, [] on the others.
        """
        results = []
        for run in self.runs:
            raw, ema = self._full_models(run)
            if not (self.config.distribute_saes or self.accelerator.is_main_process):
                continue
            kept, measured = self._choose_weights(run, raw, ema, selection, reported)
            self._check_heldout_fvu(run.name, measured["fvu"], transcoder=raw.config.is_transcoder)
            tokens = self.step * self.config.batch_size
            metrics = {
                **measured,
                "dead_fraction": run.dead.dead_fraction(),
                "dead_tokens": self.config.dead_tokens,
                "tokens": tokens,
                "steps": self.step,
                "learning_rate": run.learning_rate,
                "elapsed_seconds": round(elapsed, 2),
                "sae_tokens_per_s": round(tokens / max(self.step_seconds, 1e-9), 1),
                **peak_memory(),
            }
            if self.forward_seconds:
                metrics["forward_tokens_per_s"] = round(self.forward_tokens / self.forward_seconds, 1)
            results.append(TrainResult(name=run.name, sae=kept.cpu(), metrics=metrics))
        if self.config.distribute_saes and self.accelerator.num_processes > 1:
            gathered = [None] * self.accelerator.num_processes if self.accelerator.is_main_process else None
            dist.gather_object(results, gathered, dst=0)
            if not self.accelerator.is_main_process:
                return []
            by_name = {result.name: result for part in gathered for result in part}
            results = [by_name[sae_name(*name)] for name in self.config.sae_names()]
        return results

    # ---- checkpoints (full-size tensors: any number of processes can resume them) --------------------

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Every tensor of the training state by flat name, and the rest as JSON-able data.

        Collective when SAEs are sharded (every rank must call it); with distribute_saes, this
        rank's SAEs only.
        """
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        state: dict = {
            "step": self.step,
            "run_id": self.run_id,
            "train_config": self.config.to_json_string(),
            "data": self.position,
            "saes": {},
        }
        for run in self.runs:
            prefix = f"{run.name}/"
            for name, parameter in run.sae.named_parameters():
                tensors[f"{prefix}weights.{name}"] = run.full(name, parameter.detach())
                tensors[f"{prefix}ema.{name}"] = run.full(name, run.ema.shadow[run.ema.names.index(name)])
                adam = run.optimizer.state[parameter]
                for key in ("exp_avg", "exp_avg_sq"):
                    tensors[f"{prefix}adam.{name}.{key}"] = run.full(name, adam[key])
                tensors[f"{prefix}adam.{name}.step"] = adam["step"]
            for name, buffer in run.sae.named_buffers():  # a BatchTopK threshold
                tensors[f"{prefix}buffers.{name}"] = buffer.detach()
            tensors[f"{prefix}ema_updates"] = torch.tensor(run.ema.updates)
            tensors[f"{prefix}dead.tokens_since_fired"] = run.dead.tokens_since_fired
            state["saes"][run.name] = {"config": run.sae.config.to_dict()}
        return tensors, state

    def save_state(self):
        """Write a checkpoint of the current step into output_dir/checkpoints (the main process writes)."""
        self.check_finite()  # a diverged state never replaces the last good checkpoint
        tensors, state = self.state()
        if self.config.distribute_saes and self.accelerator.num_processes > 1:
            parts = [None] * self.accelerator.num_processes if self.accelerator.is_main_process else None
            dist.gather_object(({n: t.cpu() for n, t in tensors.items()}, state["saes"]), parts, dst=0)
            if self.accelerator.is_main_process:
                for part_tensors, part_saes in parts:
                    tensors.update(part_tensors)
                    state["saes"].update(part_saes)
        folder = None
        if self.accelerator.is_main_process:
            folder = save_checkpoint(
                self.config.output_dir, self.step, tensors, state, run_id=self.run_id, keep=self.config.save_total_limit
            )
        self.accelerator.wait_for_everyone()
        return folder

    def load_state_(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Rebuild this rank's runs from a checkpoint (`load_checkpoint`'s tensors and state)."""
        missing = sorted(set(self.names) - set(state["saes"]))
        if missing:
            raise ValueError(
                f"The checkpoint holds SAEs {sorted(state['saes'])}, but this run trains {sorted(self.names)} too. "
                "Resume with the same hook_points, n_latents and k."
            )
        device = self.device
        self.runs = []
        for name in self.names:
            prefix = f"{name}/"
            sae = TopKSAE(TopKSAEConfig.from_dict(state["saes"][name]["config"]))
            sae.load_state_dict({n: tensors[f"{prefix}weights.{n}"] for n, _ in sae.named_parameters()}, strict=False)
            with torch.no_grad():
                for n, buffer in sae.named_buffers():
                    buffer.copy_(tensors[f"{prefix}buffers.{n}"])
            run = self._prepare_run(name, self._sizes[name][0], sae)
            for index, shadow in enumerate(run.ema.shadow):
                shadow.copy_(run.part(run.ema.names[index], tensors[f"{prefix}ema.{run.ema.names[index]}"]))
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
            self.runs.append(run)
        torch.set_rng_state(tensors["rng.torch"])
        self.step = state["step"]
        self.run_id = state["run_id"]
        self.position = state["data"]
