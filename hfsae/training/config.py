"""TrainConfig: how TopK SAEs are trained (data, sweep, optimiser, schedule, checkpoints, output).

What each SAE *is* lives in `TopKSAEConfig`. The architecture options a user may set for a run
(`normalize`, `aux_k_coef`, ...) are declared here field by field (SAE_OPTION_FIELDS) with their
default and `--help` text taken from TopKSAEConfig, so they keep one home while the command line and
`training_config.json` stay flat.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
import math
import textwrap
from dataclasses import dataclass, field

from ..configuration import TopKSAEConfig

# TopKSAEConfig fields a user chooses for a training run; the others are sizes the sweep sets
# (n_latents, k), measurements the trainer fills (d_in, dataset_scale) or provenance.
SAE_OPTION_FIELDS = (
    "architecture", "normalize", "aux_k_coef", "k_aux", "multi_topk_coef", "multi_topk_factor", "latent_bias",
    "encoder_subtracts_decoder_bias", "skip_connection",
)  # fmt: skip

# Options that may differ between a run and its resumption: they change neither the data order nor a
# single optimiser step (train_tokens only moves the end, except as check_resumable says; eval_tokens
# only the final measurement). Not activation_cache: cached rows come in another order than harvested ones.
RESUMABLE_CHANGES = frozenset({
    "train_tokens", "save_steps", "save_total_limit", "logging_steps", "quiet", "report_to", "eval_tokens",
    "resume_from_checkpoint", "overwrite_output_dir", "output_dir", "push_to_hub",
})  # fmt: skip


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under each annotated attribute of a class body (PEP 257 style)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body
        if not body or not isinstance(body[0], ast.ClassDef):
            continue
        statements = body[0].body
        for statement, following in zip(statements, statements[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


def documented(cls: type) -> type:
    """Copy each attribute docstring into its field's metadata, where HfArgumentParser finds `--help`."""
    docs = attribute_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in docs and "help" not in f.metadata:
            f.metadata = {**f.metadata, "help": docs[f.name]}
    return cls


_SAE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TopKSAEConfig)}
_SAE_DOCS = attribute_docs(TopKSAEConfig)


def sae_option(name: str):
    """A TrainConfig field for TopKSAEConfig's option `name`: its default and its documentation."""
    return field(default=_SAE_DEFAULTS[name], metadata={"help": _SAE_DOCS[name]})


@documented
@dataclass
class TrainConfig:
    """How to train one or more TopK SAEs on a causal language model's activations.

    One SAE is trained for every (hook point, n_latents, k) combination, all from the same forward
    passes of the language model (the sweep mode). With no arguments it trains the built-in default.

    Example:
        >>> config = TrainConfig(model="builtin", hook_points=["layers.10.resid_post"], n_latents=[4096])
    """

    # ---- what to read --------------------------------------------------------------------------------
    model: str = "builtin"
    """Language model: 'builtin' (SmolLM2-135M-Instruct, no download), a Hub id or a local folder."""
    model_revision: str | None = None
    """Hub branch, tag or commit of the language model."""
    model_dtype: str | None = None
    """float32 | bfloat16 | float16 for the language model; None: bfloat16 on a GPU, on the CPU the faster measured one."""
    device_map: str | None = None
    """Accelerate's big-model placement of the language model (e.g. 'auto') when it does not fit one device."""
    trust_remote_code: bool = False
    """Run model code from the language model's Hub repo (off unless asked)."""
    # Layer 10 of 30 on the built-in model: its token norms stay near their mean, where deeper layers
    # have massive-activation outliers, and harvesting stops a third of the way in (docs/performance.md).
    hook_points: list[str] = field(default_factory=lambda: ["layers.10.resid_post"])
    """Where to read activations, e.g. layers.10.resid_post (one SAE set per hook point)."""
    target_hook_points: list[str] = field(default_factory=list)
    """Train transcoders: the i-th hook point's SAEs predict the activation at the i-th of these (same forward
    pass), e.g. --hook-points model.layers.10.mlp:input --target-hook-points layers.10.mlp_out. Empty: SAEs."""
    dataset: str = "builtin"
    """Text: 'builtin' (Python's own documentation and sources), a Hub dataset name or local files."""
    text_column: str = "text"
    """Column of the dataset that holds the text."""
    split: str = "train"
    """Dataset split to train on; held-out FVU uses text outside it."""
    context_size: int = 64
    """Tokens per context (the paper uses 64)."""
    # Epochs by default: on a CPU the forward pass to layer 10 is the slow part, so streaming all 2M
    # training tokens would take several times the whole default run. 120k harvested tokens gave held-out
    # FVU 0.209 (train batches 0.097: overfitting); 200k gave 0.190. Both with 2M training tokens,
    # n_latents 4096, k 32 (docs/performance.md).
    streaming: bool = False
    """Stream fresh activations for every step through a shuffle buffer (memory O(buffer_tokens), any
    train_tokens); off: harvest harvest_tokens once and train epochs over them."""
    harvest_tokens: int = 200_000
    """Distinct tokens harvested once and reused in epochs until train_tokens (without --streaming)."""
    buffer_tokens: int = 65_536
    """Rows per hook point shuffled together when streaming (a batch mixes this many tokens' documents)."""
    eval_tokens: int = 8192
    """Held-out tokens (text the SAE never trains on) for the final FVU."""
    activation_cache: str | None = None
    """Folder to store harvested activations in and reuse in later runs with the same inputs; None harvests anew."""
    activation_cache_dtype: str = "float32"
    """How the activation cache stores rows: float32, bfloat16 or float16 (half the disk; rows are read back as float32)."""

    # ---- what to train (the sweep) -------------------------------------------------------------------
    n_latents: list[int] = field(default_factory=lambda: [4096])
    """Dictionary sizes (TopKSAEConfig.n_latents); one SAE per (hook point, n_latents, k)."""
    k: list[int] = field(default_factory=lambda: [32])
    """Latents kept per token (TopKSAEConfig.k; BatchTopK: on average); one SAE per (hook point, n_latents, k)."""
    architecture: str = sae_option("architecture")
    normalize: str = sae_option("normalize")
    aux_k_coef: float = sae_option("aux_k_coef")
    k_aux: int | None = sae_option("k_aux")
    multi_topk_coef: float = sae_option("multi_topk_coef")
    multi_topk_factor: int = sae_option("multi_topk_factor")
    latent_bias: bool = sae_option("latent_bias")
    encoder_subtracts_decoder_bias: bool | None = sae_option("encoder_subtracts_decoder_bias")
    skip_connection: bool = sae_option("skip_connection")
    tied_init: bool = True
    """Initialise the encoder as the decoder's transpose (docs/method.md §1); false draws it separately."""
    init_from: str | None = None
    """Start from a pretrained SAE (registry name, Hub repo or folder) of the same d_in and n_latents."""

    # ---- optimisation (docs/method.md §3) ------------------------------------------------------------------
    learning_rate: float | None = None
    """Adam learning rate; None uses the scaling rule 2e-4 / sqrt(n_latents / 2**14) per SAE."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_epsilon: float = 6.25e-10
    """Adam epsilon (the paper's value)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warm-up from 0."""
    decay_steps: int = 0
    """Final steps over which the learning rate decays linearly to 0 (0 keeps it constant)."""
    max_grad_norm: float | None = None
    """Clip each SAE's gradient to this norm; None does not clip."""
    ema_decay: float = 0.999
    """Decay of the bias-corrected exponential moving average of the weights."""
    batch_size: int = 2048
    """Tokens per optimiser step (over all processes and accumulation steps)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches whose gradients add up to one step."""
    train_tokens: int = 2_000_000
    """Tokens to train on in total (epochs over the harvested tokens)."""
    dead_tokens: int = 100_000
    """A latent that has not fired for this many tokens is dead and trained by AuxK (paper: 10M)."""

    # ---- run ----------------------------------------------------------------------------------------
    seed: int = 0
    """Seed of the initialisation and the data order."""
    output_dir: str = "sae"
    """Folder for the trained SAE(s) and checkpoints."""
    overwrite_output_dir: bool = False
    """Replace a non-empty output_dir (refused otherwise, unless resuming the run in it)."""
    save_steps: int | None = None
    """Write a checkpoint every this many steps (and at the end); None writes none."""
    save_total_limit: int | None = 2
    """Keep only the newest this many checkpoints of this run; None keeps all."""
    resume_from_checkpoint: str | None = None
    """A checkpoint folder to continue from, or 'last' for the newest one in output_dir/checkpoints."""
    mixed_precision: str | None = None
    """'no' or 'bf16'; None uses bf16 on a GPU and full precision on the CPU."""
    report_to: list[str] = field(default_factory=list)
    """Trackers for accelerate to log to (tensorboard, wandb), when installed."""
    logging_steps: int = 50
    """Update the progress bar and trackers every this many steps."""
    device_batch_tokens: int = 8192
    """Tokens per language-model forward while harvesting."""
    quiet: bool = False
    """Hide progress bars."""
    push_to_hub: str | None = None
    """Hub repo to push the trained SAE(s) to, with their cards, when training ends."""

    # ---- parallelism (docs/method.md §6) ---------------------------------------------------------------
    latent_shards: int = 1
    """Split each SAE's latents over this many processes (must divide the process count and n_latents)."""
    distribute_saes: bool = False
    """Each process trains a share of the (hook point, n_latents, k) SAEs on the whole batch."""

    def __post_init__(self):
        checks = {
            "context_size": self.context_size >= 2,
            "harvest_tokens": self.harvest_tokens >= self.batch_size,
            "buffer_tokens": self.buffer_tokens >= self.batch_size,
            "save_total_limit": self.save_total_limit is None or self.save_total_limit >= 1,
            "latent_shards": self.latent_shards >= 1 and all(n % self.latent_shards == 0 for n in self.n_latents),
            "model_dtype": self.model_dtype in (None, "auto", "float32", "bfloat16", "float16"),
            "activation_cache_dtype": self.activation_cache_dtype in ("float32", "bfloat16", "float16"),
            "eval_tokens": self.eval_tokens >= 1,
            "batch_size": self.batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "train_tokens": self.train_tokens >= self.batch_size,
            "dead_tokens": self.dead_tokens >= 1,
            "ema_decay": 0 <= self.ema_decay < 1,
            "warmup_steps": self.warmup_steps >= 0,
            "decay_steps": self.decay_steps >= 0,
            "learning_rate": self.learning_rate is None or self.learning_rate > 0,
            "max_grad_norm": self.max_grad_norm is None or self.max_grad_norm > 0,
            "save_steps": self.save_steps is None or self.save_steps >= 1,
            "logging_steps": self.logging_steps >= 1,
            "hook_points": len(self.hook_points) >= 1 and len(set(self.hook_points)) == len(self.hook_points),
            "target_hook_points": len(self.target_hook_points) in (0, len(self.hook_points)),
            "n_latents": len(self.n_latents) >= 1 and all(n >= 2 for n in self.n_latents),
            "k": len(self.k) >= 1 and all(k >= 1 for k in self.k),
            "mixed_precision": self.mixed_precision in (None, "no", "bf16", "fp16"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            raise ValueError(f"Invalid training option {name}={getattr(self, name)!r}: {_VALID[name]}")
        if self.latent_shards > 1 and self.distribute_saes:
            raise ValueError(
                f"latent_shards={self.latent_shards} and distribute_saes both split the work over processes; "
                "choose one."
            )
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps} (each micro-batch has the same number of tokens)."
            )
        for n_latents, k in itertools.product(self.n_latents, self.k):
            self.sae_config(d_in=1, hook_point=self.hook_points[0], n_latents=n_latents, k=k, d_out=1)  # raises ValueError

    @property
    def steps(self) -> int:
        """Optimiser steps: train_tokens // batch_size."""
        return self.train_tokens // self.batch_size

    def target_of(self, hook_point: str) -> str | None:
        """The target hook point of hook_point's transcoders, or None when this run trains SAEs."""
        if not self.target_hook_points:
            return None
        return self.target_hook_points[self.hook_points.index(hook_point)]

    def harvested_hook_points(self) -> list[str]:
        """Every hook point whose activations the run reads: the inputs, then the transcoders' targets."""
        return list(dict.fromkeys(self.hook_points + self.target_hook_points))

    def sae_names(self) -> list[tuple[str, int, int]]:
        """Every (hook_point, n_latents, k) this run trains, in a fixed order."""
        return list(itertools.product(self.hook_points, self.n_latents, self.k))

    def check_resumable(self, saved: TrainConfig, *, where: str) -> None:
        """Raise ValueError naming every option that differs from the run being resumed (`saved`)."""
        resumable = set(RESUMABLE_CHANGES)
        # A stream's length is part of its data position (and of its cache); a decay starts decay_steps
        # before the end, so moving the end changes steps already taken.
        if self.streaming or saved.streaming or self.decay_steps or saved.decay_steps:
            resumable.discard("train_tokens")
        changed = [
            f"{f.name}={getattr(self, f.name)!r} (was {getattr(saved, f.name)!r})"
            for f in dataclasses.fields(self)
            if f.name not in resumable and getattr(self, f.name) != getattr(saved, f.name)
        ]
        if changed:
            raise ValueError(
                f"Cannot resume from {where}: {', '.join(changed)}. Resume with the options of the saved run "
                f"(only {', '.join(sorted(resumable - {'resume_from_checkpoint'}))} may change), "
                "or start a new run in another output_dir."
            )

    def sae_config(self, *, d_in: int, hook_point: str, n_latents: int, k: int, **measured) -> TopKSAEConfig:
        """The TopKSAEConfig of one SAE of the sweep; `measured` sets d_out, dataset_scale or overrides provenance."""
        fields = {name: getattr(self, name) for name in SAE_OPTION_FIELDS}
        fields.update(base_model=self.model, context_size=self.context_size, dataset=self.dataset)
        fields.update(target_hook_point=self.target_of(hook_point))
        fields.update(measured)
        if fields["target_hook_point"] is None:
            fields.pop("d_out", None)  # an SAE reconstructs its input
        return TopKSAEConfig(d_in=d_in, n_latents=n_latents, k=k, hook_point=hook_point, **fields)

    def learning_rate_for(self, n_latents: int) -> float:
        """The learning rate of an SAE with n_latents: the configured one, or 2e-4 / sqrt(n / 2**14)."""
        if self.learning_rate is not None:
            return self.learning_rate
        # Community fit of the paper's Figure 3 (docs/method.md §3).
        return 2e-4 / math.sqrt(n_latents / 2**14)

    def learning_rate_factor(self, step: int) -> float:
        """Multiplier of the learning rate at `step`: linear warm-up, constant, linear decay to 0."""
        factor = 1.0
        if self.warmup_steps and step < self.warmup_steps:
            factor = (step + 1) / self.warmup_steps
        remaining = self.steps - step
        if self.decay_steps and remaining < self.decay_steps:
            factor = min(factor, remaining / self.decay_steps)
        return factor

    def to_json_string(self) -> str:
        """The config as JSON (what `training_config.json` holds)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_string(cls, text: str) -> TrainConfig:
        """The config from `to_json_string`'s output."""
        return cls(**json.loads(text))


_VALID = {
    "context_size": "use at least 2 tokens per context.",
    "harvest_tokens": "harvest at least batch_size tokens.",
    "buffer_tokens": "shuffle at least batch_size rows (raise --buffer-tokens or lower --batch-size).",
    "save_total_limit": "keep at least 1 checkpoint, or None for all.",
    "latent_shards": "use a positive number that divides every n_latents (and the number of processes).",
    "model_dtype": "choose float32, bfloat16, float16 or None.",
    "activation_cache_dtype": "choose float32, bfloat16 or float16.",
    "eval_tokens": "use at least 1 held-out token.",
    "batch_size": "use at least 1 token per step.",
    "gradient_accumulation_steps": "use at least 1.",
    "train_tokens": "train on at least batch_size tokens.",
    "dead_tokens": "use a positive token window.",
    "ema_decay": "choose a value in [0, 1).",
    "warmup_steps": "use 0 or more steps.",
    "decay_steps": "use 0 or more steps.",
    "learning_rate": "use a positive value or None for the scaling rule.",
    "max_grad_norm": "use a positive norm or None to disable clipping.",
    "save_steps": "use a positive number of steps or None.",
    "logging_steps": "use a positive number of steps.",
    "hook_points": "name one or more distinct hook points, e.g. layers.10.resid_post.",
    "target_hook_points": "name one target per hook point (transcoders), or none (SAEs).",
    "n_latents": "give one or more sizes of at least 2.",
    "k": "give one or more positive values.",
    "mixed_precision": "choose 'no', 'bf16', 'fp16' or None.",
}
