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

Device placement, mixed precision, gradient accumulation and (later) DDP go through Accelerate.
"""

from __future__ import annotations

import time
import zlib
from datetime import timedelta
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..configuration import TopKSAEConfig
from ..distributed.sharded import data_parallel_sae, full_model
from ..modeling import TopKSAE
from ..training.losses import normalized_mse
from .checkpoint import flatten_optimizer_state, load_checkpoint, save_checkpoint, unflatten_optimizer_state
from .config import TrainConfig
from .data import EpochBatches, split_batch
from .dead import DeadLatents, fired_latents
from .ema import EMA

# Tokens used to initialise b_pre (geometric median) and dataset_scale (docs/method.md §1: ~32k).
INIT_SAMPLE_TOKENS = 32_768
# Rows per chunk when evaluating held-out activations (bounds the [rows, n_latents] pre-activations).
EVAL_CHUNK = 4096


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
    sae: TopKSAE  # the unwrapped model: decoder-norm helpers, saving
    model: torch.nn.Module  # what accelerator.prepare returned (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer
    ema: EMA
    dead: DeadLatents
    learning_rate: float
    fvu_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # since the last log


@dataclass
class TrainResult:
    """What training one SAE produced: the model to save (EMA or raw) and its measurements."""

    name: str
    sae: TopKSAE
    metrics: dict


def make_accelerator(config: TrainConfig):
    """The Accelerator for a run: bf16 autocast on a GPU unless told otherwise, accumulation, trackers."""
    from accelerate import Accelerator, InitProcessGroupKwargs

    mixed_precision = config.mixed_precision
    if mixed_precision is None:
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=_available_trackers(config.report_to) or None,
        project_dir=config.output_dir,
        # Every collective times out instead of hanging when another process has died.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=10))],
    )


def _available_trackers(names: list[str]) -> list[str]:
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"report_to names {missing}, which is not installed; pip install {' '.join(missing)}.")
    return list(names)


class Trainer:
    """Trains every SAE of a TrainConfig on in-memory activations {hook_point: [tokens, d_in]}.

    Example:
        >>> trainer = Trainer(TrainConfig(hook_points=["h"], n_latents=[64], k=[4], batch_size=256,
        ...                               train_tokens=2560, harvest_tokens=1024), {"h": 16})
        >>> results = trainer.fit({"h": torch.randn(1024, 16)}, {"h": torch.randn(256, 16)})
    """

    def __init__(self, config: TrainConfig, d_in: dict[str, int], *, accelerator=None, base_model: str | None = None):
        self.config = config
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self.base_model = base_model or config.model
        self.d_in = d_in
        self.step = 0
        self.runs: list[SAERun] = []
        processes = self.accelerator.num_processes * config.gradient_accumulation_steps
        if config.batch_size % processes:
            raise ValueError(
                f"batch_size={config.batch_size} must split evenly over {self.accelerator.num_processes} "
                f"process(es) × {config.gradient_accumulation_steps} accumulation step(s)."
            )

    # ---- setting up ---------------------------------------------------------------------------------

    def init_runs_(self, sample: dict[str, torch.Tensor]) -> None:
        """Build and initialise every SAE: tied (or not) weights, b_pre and dataset_scale from `sample`."""
        config = self.config
        self.runs = []
        for hook_point, n_latents, k in config.sae_names():
            x = sample[hook_point][:INIT_SAMPLE_TOKENS].float()
            measured = {"base_model": self.base_model}
            if config.normalize == "dataset_scale":
                # One constant for the layer so that E‖x‖² = d_in (docs/method.md §1).
                measured["dataset_scale"] = float((x.shape[1] / x.pow(2).sum(dim=1).mean()).sqrt())
            sae_config = config.sae_config(
                d_in=self.d_in[hook_point], hook_point=hook_point, n_latents=n_latents, k=k, **measured
            )
            name = sae_name(hook_point, n_latents, k)
            sae = self._initialised_sae(sae_config, name, x)
            self.runs.append(self._prepare_run(name, hook_point, sae))

    def _initialised_sae(self, sae_config: TopKSAEConfig, name: str, sample: torch.Tensor) -> TopKSAE:
        generator = torch.Generator().manual_seed(_seed_for(self.config.seed, name))
        sae = TopKSAE(sae_config)
        sae.init_tied_(generator=generator)
        if not self.config.tied_init:
            with torch.no_grad():
                W_enc = torch.randn(sae.W_enc.shape, generator=generator)
                sae.W_enc.copy_(W_enc / W_enc.norm(dim=1, keepdim=True))
        sae.init_b_pre_(sample)
        return sae

    def _prepare_run(self, name: str, hook_point: str, sae: TopKSAE) -> SAERun:
        config = self.config
        learning_rate = config.learning_rate_for(sae.config.n_latents)
        # Under several processes, a one-shard ShardedTopKSAE: its losses divide by the global batch's
        # variance, so DDP's averaged gradient equals the one-process gradient on the whole batch.
        sae = data_parallel_sae(sae.to(self.accelerator.device))
        optimizer = torch.optim.Adam(
            sae.parameters(),
            lr=learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            fused=True,
        )
        model, optimizer = self.accelerator.prepare(sae, optimizer)
        return SAERun(
            name=name,
            hook_point=hook_point,
            sae=self.accelerator.unwrap_model(model),
            model=model,
            optimizer=optimizer,
            ema=EMA(sae, config.ema_decay),
            dead=DeadLatents(sae.config.n_latents, config.dead_tokens, device=self.accelerator.device),
            learning_rate=learning_rate,
            fvu_sum=torch.zeros((), device=self.accelerator.device),
        )

    # ---- one optimiser step (see the module docstring for the order) ---------------------------------

    def train_step(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimiser step of every run on a global batch {hook_point: [batch_size, d_in]}."""
        accelerator = self.accelerator
        micro_batches = self.config.gradient_accumulation_steps
        batch = split_batch(batch, accelerator.num_processes, accelerator.process_index)
        self._set_learning_rates()
        for micro in range(micro_batches):
            x_by_hook = split_batch(batch, micro_batches, micro)
            with accelerator.accumulate(*[run.model for run in self.runs]):
                for run in self.runs:
                    self._forward_backward(run, x_by_hook[run.hook_point].to(accelerator.device))
                    if accelerator.sync_gradients:
                        self._update_weights(run)
        self.step += 1

    def _set_learning_rates(self) -> None:
        factor = self.config.learning_rate_factor(self.step)
        for run in self.runs:
            for group in run.optimizer.param_groups:
                group["lr"] = run.learning_rate * factor

    def _forward_backward(self, run: SAERun, x: torch.Tensor) -> None:
        output = run.model(x, dead_mask=run.dead.dead_mask)
        self.accelerator.backward(output.loss)
        run.fvu_sum += output.fvu.detach() / self.config.gradient_accumulation_steps
        # Tokens of every process: a latent is alive if it fired on any of them.
        tokens = x.shape[0] * self.accelerator.num_processes
        reduce = self.accelerator.reduce if self.accelerator.num_processes > 1 else None
        run.dead.update_(output.code.indices, output.code.values, tokens=tokens, reduce=reduce)

    def _update_weights(self, run: SAERun) -> None:
        run.sae.project_decoder_grad_()
        if self.config.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(run.model.parameters(), self.config.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.sae.normalize_decoder_()
        run.ema.update_(run.sae)

    # ---- the loop -----------------------------------------------------------------------------------

    def fit(self, train: dict[str, torch.Tensor], heldout: dict[str, torch.Tensor]) -> list[TrainResult]:
        """Train on `train` {hook_point: [tokens, d_in]} for config.steps steps; evaluate on `heldout`."""
        config = self.config
        batches = EpochBatches(train, batch_size=config.batch_size, seed=config.seed)
        if not self.runs:
            self.init_runs_(train)
        if config.resume_from_checkpoint:
            from .checkpoint import resolve_checkpoint

            self.load_state_(resolve_checkpoint(config.output_dir, config.resume_from_checkpoint))
        if config.report_to:
            hyperparameters = {name: str(value) if isinstance(value, list) else value for name, value in vars(config).items()}
            self.accelerator.init_trackers("hfsae", config=hyperparameters)
        started = time.perf_counter()
        hidden = config.quiet or not self.accelerator.is_local_main_process
        progress = tqdm(total=config.steps, initial=self.step, desc="training", unit="step", disable=hidden)
        tokens_at_log, time_at_log = self.step * config.batch_size, started
        while self.step < config.steps:
            self.train_step(batch=batches.batch(self.step))
            progress.update(1)
            if self.step % config.logging_steps == 0 or self.step == config.steps:
                tokens_at_log, time_at_log = self._log(progress, tokens_at_log, time_at_log)
            if config.save_steps and self.step % config.save_steps == 0:
                self.save_state()
        progress.close()
        if config.save_steps and self.step % config.save_steps != 0:
            self.save_state()
        elapsed = time.perf_counter() - started
        return [self._finish(run, heldout[run.hook_point], elapsed) for run in self.runs]

    def _log(self, progress, tokens_at_log: int, time_at_log: float) -> tuple[int, float]:
        """Progress bar and trackers: the only host syncs of the loop, every logging_steps steps."""
        now, tokens = time.perf_counter(), self.step * self.config.batch_size
        steps = self.step - (tokens_at_log // self.config.batch_size)
        logs = {}
        for run in self.runs:
            logs[f"{run.name}/fvu"] = (run.fvu_sum / max(steps, 1)).item()
            logs[f"{run.name}/dead_fraction"] = run.dead.dead_fraction()
            run.fvu_sum.zero_()
        first = self.runs[0].name
        progress.set_postfix(
            tokens_per_s=f"{(tokens - tokens_at_log) / max(now - time_at_log, 1e-9):,.0f}",
            fvu=f"{logs[f'{first}/fvu']:.4f}",
            dead=f"{logs[f'{first}/dead_fraction']:.3f}",
        )
        if self.config.report_to:
            self.accelerator.log(logs, step=self.step)
        return tokens, now

    # ---- evaluation and the model to keep -----------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self, sae: TopKSAE, x: torch.Tensor) -> tuple[float, float]:
        """(FVU, fraction of latents that never fire) on held-out activations x [tokens, d_in].

        FVU is measured in the activation's own scale: x_hat is what would be spliced back.
        """
        x_hats, fired = [], torch.zeros(sae.config.n_latents, dtype=torch.bool, device=self.accelerator.device)
        for chunk in x.split(EVAL_CHUNK):
            output = sae(chunk.to(self.accelerator.device))
            x_hats.append(output.x_hat.float().cpu())
            fired |= fired_latents(output.code.indices, output.code.values, sae.config.n_latents)
        fvu = normalized_mse(torch.cat(x_hats).double(), x.double()).item()
        return fvu, 1.0 - fired.float().mean().item()

    def _finish(self, run: SAERun, heldout: torch.Tensor, elapsed: float) -> TrainResult:
        """Evaluate raw and EMA weights on held-out data; keep the better (the paper reports the better)."""
        raw = run.sae = full_model(run.sae)
        ema = TopKSAE(raw.config).to(self.accelerator.device)
        ema.load_state_dict(raw.state_dict())
        run.ema.copy_to_(ema)
        (fvu_raw, unfired_raw), (fvu_ema, unfired_ema) = self._evaluate(raw, heldout), self._evaluate(ema, heldout)
        kept, weights = (ema, "ema") if fvu_ema <= fvu_raw else (raw, "raw")
        metrics = {
            "fvu": min(fvu_raw, fvu_ema),
            "fvu_raw": fvu_raw,
            "fvu_ema": fvu_ema,
            "weights": weights,
            "dead_fraction": run.dead.dead_fraction(),
            "dead_tokens": self.config.dead_tokens,
            "heldout_unfired_fraction": unfired_ema if weights == "ema" else unfired_raw,
            "tokens": self.step * self.config.batch_size,
            "steps": self.step,
            "heldout_tokens": heldout.shape[0],
            "learning_rate": run.learning_rate,
            "elapsed_seconds": round(elapsed, 2),
        }
        return TrainResult(name=run.name, sae=kept.cpu(), metrics=metrics)

    # ---- checkpoints --------------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Every tensor of the training state by flat name, and the rest as JSON-able data."""
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        state: dict = {"step": self.step, "train_config": self.config.to_json_string(), "saes": {}}
        for run in self.runs:
            prefix = f"{run.name}/"
            tensors.update({f"{prefix}weights.{n}": p for n, p in run.sae.state_dict().items()})
            tensors.update({f"{prefix}ema.{n}": t for n, t in run.ema.state_dict().items()})
            tensors.update({f"{prefix}dead.{n}": t for n, t in run.dead.state_dict().items()})
            optimizer_tensors, optimizer_rest = flatten_optimizer_state(run.optimizer.state_dict(), f"{prefix}adam.")
            tensors.update(optimizer_tensors)
            state["saes"][run.name] = {"config": run.sae.config.to_dict(), "optimizer": optimizer_rest}
        return tensors, state

    def save_state(self):
        """Write a checkpoint of the current step into output_dir/checkpoints (main process only)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tensors, state = self.state()
            return save_checkpoint(self.config.output_dir, self.step, tensors, state)

    def load_state_(self, folder) -> None:
        """Restore the state written by `save_state` (the runs must exist: same sweep, same sizes)."""
        tensors, state = load_checkpoint(folder)
        names = [run.name for run in self.runs]
        if sorted(state["saes"]) != sorted(names):
            raise ValueError(
                f"Checkpoint {folder} holds SAEs {sorted(state['saes'])}, but this run trains {sorted(names)}. "
                "Resume with the same hook_points, n_latents and k."
            )
        device = self.accelerator.device
        for run in self.runs:
            prefix = f"{run.name}/"

            def part(kind: str, prefix=prefix) -> dict[str, torch.Tensor]:
                start = f"{prefix}{kind}."
                return {n[len(start) :]: t.to(device) for n, t in tensors.items() if n.startswith(start)}

            run.sae.load_state_dict(part("weights"))
            run.ema.load_state_dict(part("ema"))
            run.dead.load_state_dict(part("dead"))
            optimizer_state = unflatten_optimizer_state(
                {n: t.to(device) for n, t in tensors.items()}, state["saes"][run.name]["optimizer"], f"{prefix}adam."
            )
            run.optimizer.load_state_dict(optimizer_state)
        torch.set_rng_state(tensors["rng.torch"])
        self.step = state["step"]
