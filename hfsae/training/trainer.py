"""Training loop: activation batches in, trained SAEs (and checkpoints) out.

Every SAE of a sweep (one per hook point, n_latents and k) is a `SAERun` (`runs.py`): the model with
its own Adam, EMA and dead-latent counts. All runs read the same batches, so they share the language
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
from dataclasses import dataclass
from collections.abc import Iterator
from datetime import timedelta
from itertools import chain

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..distributed.grid import ProcessGrid, init_process_grid
from ..distributed.sharded import check_shardable
from ..errors import HfsaeError
from ..modeling import TopKSAE
from .checkpoint import checkpoints_of_run, load_checkpoint, remove_orphans, save_checkpoint
from .config import TrainConfig
from .data import StreamBatches, split_batch
from .runs import INIT_SAMPLE_TOKENS, SAERun, measured_sae_config, new_sae
from .selection import choose_weights, split_heldout

# Collectives give up after this instead of hanging when another process died (long enough for a
# slow checkpoint write on rank 0).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
# A held-out FVU above this stops the run before anything is saved. The data's mean alone scores FVU 1 and
# an SAE starts near it (b_pre is the geometric median, decoder rows have unit norm), so 100 (reconstructions
# ten times farther from the data than its spread) is not undertraining: the weights diverged to finite
# values that the NaN check cannot see. A transcoder has no such starting point (its untrained output bears no
# relation to its target's spread), so only the NaN/inf checks guard it.
MAX_HELDOUT_FVU = 100.0
class TrainingDivergedError(HfsaeError, ValueError):
    """A loss or weight became NaN or infinite, or the held-out FVU is absurd: the options (learning rate,
    loss weights, batch) diverge."""


def sae_name(hook_point: str, n_latents: int, k: int) -> str:
    """The folder of one SAE of a sweep, e.g. 'layers.10.resid_post/n4096_k32'."""
    return f"{hook_point}/n{n_latents}_k{k}"


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


def _process_grid(config: TrainConfig, world: int) -> ProcessGrid:
    """The data × latent grid of the processes, after checking that the batch splits over it."""
    if world > 1 and not config.distribute_saes:
        grid = init_process_grid(latent_shards=config.latent_shards, timeout=COLLECTIVE_TIMEOUT)
    elif config.latent_shards > 1:
        grid = init_process_grid(latent_shards=config.latent_shards)  # raises: one process
    else:
        grid = ProcessGrid.single()
    processes = grid.data_size * config.gradient_accumulation_steps
    if config.batch_size % processes:
        raise ValueError(
            f"batch_size={config.batch_size} must split evenly over {grid.data_size} data-parallel "
            f"process(es) × {config.gradient_accumulation_steps} accumulation step(s)."
        )
    if config.batch_size // processes < 2:
        raise ValueError(
            f"batch_size={config.batch_size} leaves {config.batch_size // processes} row per micro-batch and "
            "process: the FVU divides by the batch's variance, which needs at least 2 rows. Raise batch_size."
        )
    return grid


def _sizes_of_this_rank(config: TrainConfig, grid: ProcessGrid, rank: int, world: int) -> list[tuple[str, int, int]]:
    """(hook point, n_latents, k) of every SAE this process trains: all of them, or its share with distribute_saes."""
    sizes = config.sae_names()
    if grid.data_size * grid.latent_size > 1:
        # Refused by name before any activation is read, never trained as plain TopK.
        check_shardable(config.sae_config(d_in=1, d_out=1, hook_point=sizes[0][0], n_latents=sizes[0][1], k=sizes[0][2]))
    if not config.distribute_saes:
        return sizes
    if len(sizes) < world:
        raise ValueError(
            f"distribute_saes gives each of {world} processes a share of {len(sizes)} SAE(s); some would "
            "have none. Train more SAEs, or use fewer processes."
        )
    return sizes[rank::world]


def first_batches(batches, steps: int) -> tuple[dict[str, torch.Tensor], Iterator]:
    """(a sample of the first batches' rows, INIT_SAMPLE_TOKENS or `steps` batches' worth, to initialise the
    SAEs from; the batches again from the start, so that training reads those too)."""
    first = []
    rows = 0
    for item in batches:
        first.append(item)
        rows += next(iter(item[0].values())).shape[0]
        if rows >= INIT_SAMPLE_TOKENS or len(first) >= steps:
            break
    sample = {name: torch.cat([batch[name] for batch, _ in first]) for name in first[0][0]}
    return sample, chain(first, batches)


def divergence_advice(config: TrainConfig, run_id: str) -> str:
    """The end of a divergence message: the options that diverged, what was kept, what to change."""
    saved = checkpoints_of_run(config.output_dir, run_id) if config.save_steps else []
    if saved:
        kept = f"the last checkpoint, {saved[-1]}, is kept"
    else:
        kept = "no checkpoint was saved" + ("" if config.save_steps else " (set save_steps to keep checkpoints)")
    return (
        f"(learning_rate={config.learning_rate}, aux_k_coef={config.aux_k_coef}, batch_size={config.batch_size}); "
        f"{kept}. Lower the learning rate or the loss weights, or use larger batches."
    )


def check_heldout_fvu(name: str, fvu_value: float, *, transcoder: bool, step: int, config: TrainConfig, run_id: str) -> None:
    """Raise TrainingDivergedError for a held-out FVU that is not finite or, for an SAE, above MAX_HELDOUT_FVU."""
    if not math.isfinite(fvu_value) or (not transcoder and fvu_value > MAX_HELDOUT_FVU):
        raise TrainingDivergedError(
            f"Training diverged: {name} reconstructs the held-out activations with FVU {fvu_value:.3g} after "
            f"{step} steps, above {MAX_HELDOUT_FVU:g} (the data's mean alone scores 1), so no SAE was saved "
            f"{divergence_advice(config, run_id)}"
        )


def _gathered_results(results: list[TrainResult], config: TrainConfig, accelerator) -> list[TrainResult]:
    """With distribute_saes: every process's results on the main process, in the sweep's order ([] elsewhere)."""
    gathered = [None] * accelerator.num_processes if accelerator.is_main_process else None
    dist.gather_object(results, gathered, dst=0)
    if not accelerator.is_main_process:
        return []
    by_name = {result.name: result for part in gathered for result in part}
    return [by_name[sae_name(*size)] for size in config.sae_names()]


class Trainer:
    """Trains every SAE of a TrainConfig on a stream of activation batches (see `data.py`).

    It holds what the runs share: the step, the data position, the process grid, timings and checkpoints;
    each SAE's own state and step are its `SAERun`'s, and the weights it keeps are `selection.py`'s choice.

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
        self.grid = _process_grid(config, world)
        sizes = _sizes_of_this_rank(config, self.grid, self.accelerator.process_index, world)
        self.names = [sae_name(*size) for size in sizes]
        self._sizes = dict(zip(self.names, sizes))

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def init_runs_(self, sample: dict[str, torch.Tensor]) -> None:
        """Build and initialise every SAE: tied (or not) weights, b_pre and dataset_scale from `sample`."""
        self.runs = []
        for name in self.names:
            hook_point, n_latents, k = self._sizes[name]
            sae_config, reconstructed = measured_sae_config(
                self.config, sample, hook_point, n_latents, k, base_model=self.base_model, init_from=self.init_from
            )
            sae = new_sae(sae_config, self.config, name, reconstructed, init_from=self.init_from)
            self.runs.append(SAERun.build(name, hook_point, sae, self.config, self.grid, self.device))

    def train_step(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimiser step of every run on a global batch {hook_point: [batch_size, d_in]} (see the module
        docstring for the order)."""
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
                x = x_by_hook[run.hook_point].to(self.device)
                run.forward_backward_(x, y, micro_batches=micro_batches, autocast=self.accelerator.autocast)
        for run in self.runs:
            run.update_weights_(self.config.max_grad_norm)
        self.step += 1

    # ---- divergence ---------------------------------------------------------------------------------

    def check_finite(self) -> None:
        """Raise TrainingDivergedError if any run's loss was NaN or infinite, or its weights are (one host sync,
        every rank)."""
        flags = torch.stack([run.failed() for run in self.runs]).to(torch.int32)
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
            f"{divergence_advice(self.config, self.run_id)}"
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
            sample, batches = first_batches(batches, config.steps)
            self.init_runs_(sample)
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

    def _log(self, progress, at_log: tuple[int, float, float]) -> tuple[int, float, float]:
        """Progress bar and trackers: the only host syncs of the loop, every logging_steps steps."""
        step_then, forward_then, sae_then = at_log
        steps = self.step - step_then
        tokens = steps * self.config.batch_size
        logs = {name: value for run in self.runs for name, value in run.take_logs_(steps).items()}
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

    def _finish(self, selection: dict[str, torch.Tensor], reported: dict[str, torch.Tensor], elapsed: float) -> list[TrainResult]:
        """Keep raw or EMA weights as chosen on the `selection` rows; report metrics measured on `reported`.

        Returns every run's result on the main process, [] on the others.
        """
        results = []
        for run in self.runs:
            raw, ema = run.full_models()
            if not (self.config.distribute_saes or self.accelerator.is_main_process):
                continue
            kept, measured = choose_weights(raw, ema, run.hook_point, selection, reported)
            check_heldout_fvu(run.name, measured["fvu"], transcoder=raw.config.is_transcoder, step=self.step,
                              config=self.config, run_id=self.run_id)
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
            return _gathered_results(results, self.config, self.accelerator)
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
            tensors.update(run.checkpoint_tensors())
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
        self.runs = [
            SAERun.from_checkpoint(name, self._sizes[name][0], state["saes"][name]["config"], tensors, self.config,
                                   self.grid, self.device)  # fmt: skip
            for name in self.names
        ]
        torch.set_rng_state(tensors["rng.torch"])
        self.step = state["step"]
        self.run_id = state["run_id"]
        self.position = state["data"]
