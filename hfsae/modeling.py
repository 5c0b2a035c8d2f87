"""TopKSAE: the TopK sparse autoencoder as a transformers PreTrainedModel (docs/method.md §1–2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import ARCHITECTURES, THRESHOLD_BUFFER, TopKSAEConfig
from .folder import WEIGHTS_FILE, SAEFolderError, check_finite, saved_tensor_shapes
from .pretrained import HubMixin
from .ops import TopKSelection, backend_for, selected_preactivations, sparse_decode, subspace_code
from .ops.auxk import auxk_path

# Added to the standard deviation, not inside a square root: what OpenAI's released SAEs expect (docs/method.md §1).
LAYER_NORM_EPS = 1e-5
# A latent "fires" when selected with a value above this (docs/method.md §2): training's dead-latent
# count, the evaluation's dead fraction and the explorer's densities all use it.
FIRING_THRESHOLD = 1e-3
# The AuxK path is measured where it runs (ops/auxk.py); this rule decides when measuring is off or the
# work is too small to time: dense matmuls over the dead latents while there are at most this many per
# k_aux, sparse products over the k_aux selected entries otherwise. benchmarks/bench_step.py times both
# paths; the figures behind this bound are in docs/performance.md.
AUX_DENSE_MAX_RATIO = 4


def fvu(x_hat: torch.Tensor, x: torch.Tensor, *, variance: torch.Tensor | float | None = None) -> torch.Tensor:
    """Fraction of variance unexplained ‖x − x_hat‖² / ‖x − mean(x)‖² over a batch [tokens, d] (docs/method.md §2).

    The one FVU of hfsae: every loss and every metric uses it. `variance` replaces the denominator's
    per-token mean squared deviation with a fixed estimate; by default it comes from the batch.
    """
    error = (x - x_hat).pow(2).sum(dim=-1).mean()
    if variance is None:
        variance = (x - x.mean(dim=0)).pow(2).sum(dim=-1).mean()
    return error / variance


def fired_latents(indices: torch.Tensor, values: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Which latents fired in a code: indices, values [..., k] → [n_latents] bool (value > FIRING_THRESHOLD)."""
    # Counting with index_add_ avoids the host sync that boolean-mask indexing would need.
    firing = (values.reshape(-1) > FIRING_THRESHOLD).to(torch.int32)
    counts = torch.zeros(n_latents, dtype=torch.int32, device=indices.device)
    return counts.index_add_(0, indices.reshape(-1), firing) > 0


# ---- what encoding needs of the config alone (shared with distributed.ShardedTopKSAE) ------------------


def check_k(config: TopKSAEConfig, k: int | None) -> int:
    """k, or config.k when None; an error unless 1 ≤ k ≤ n_latents."""
    if k is None:
        return config.k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= config.n_latents:
        raise ValueError(f"k must be an integer in 1..{config.n_latents}; got k={k!r}.")
    return k


def check_input(config: TopKSAEConfig, x: torch.Tensor) -> torch.Tensor:
    """x [..., d_in] as given, or an error naming what is wrong with it (width, emptiness, NaN/inf)."""
    if x.dim() == 0 or x.shape[-1] != config.d_in:
        raise ValueError(
            f"This SAE reads activations of width d_in={config.d_in}; got input of shape "
            f"{tuple(x.shape)} (last dimension {x.shape[-1] if x.dim() else None}). Check the hook point and base model."
        )
    if x.numel() == 0:
        raise ValueError(f"The input of shape {tuple(x.shape)} holds no rows; pass at least one activation vector.")
    if not torch.isfinite(x).all():
        raise ValueError("The input holds NaN or infinite values; the SAE would reconstruct garbage.")
    return x


def check_target(config: TopKSAEConfig, y: torch.Tensor) -> torch.Tensor:
    """A transcoder's target y [..., d_out] as given, or an error naming what is wrong with it."""
    if y.dim() == 0 or y.shape[-1] != config.output_size:
        raise ValueError(
            f"This transcoder predicts activations of width d_out={config.output_size} at "
            f"{config.target_hook_point}; got a target of shape {tuple(y.shape)}. Check target_hook_point."
        )
    if not torch.isfinite(y).all():
        raise ValueError("The target holds NaN or infinite values; the loss would be garbage.")
    return y


def normalize(
    config: TopKSAEConfig, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """x [tokens, d_in] → (normalised x, mean [tokens, 1] or None, scale [tokens, 1] or None).

    `scale` is what decoding multiplies by. For layer_norm it is the std itself although encoding
    divides by std + eps: OpenAI's released SAEs (and SAELens's port of them) undo it that way.
    """
    mode = config.normalize
    if mode == "none":
        return x, None, None
    if mode == "dataset_scale":
        if config.dataset_scale is None:
            raise ValueError("normalize='dataset_scale' needs config.dataset_scale; the trainer estimates it.")
        return x * config.dataset_scale, None, None
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    if mode == "layer_norm":
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + LAYER_NORM_EPS), mean, std
    scale = centred.norm(dim=-1, keepdim=True).clamp_min(LAYER_NORM_EPS)  # unit_norm
    return centred / scale, mean, scale


def denormalize(
    config: TopKSAEConfig, y: torch.Tensor, mean: torch.Tensor | None, scale: torch.Tensor | None
) -> torch.Tensor:
    """Undo `normalize` on a reconstruction y [tokens, d_in]."""
    if config.normalize == "dataset_scale":
        return y / config.dataset_scale
    if scale is not None:
        y = y * scale
    if mean is not None:
        y = y + mean
    return y


@dataclass
class SparseCode:
    """The active latents of each row: a sparse [..., n_latents] matrix with k entries a row.

    `input_mean` / `input_scale` carry the per-row input normalisation so that `decode` can undo it;
    they are None when the SAE does not normalise per row.
    """

    indices: torch.Tensor  # [..., k] int64, each in [0, n_latents)
    values: torch.Tensor  # [..., k], non-negative
    input_mean: torch.Tensor | None = None  # [..., 1]
    input_scale: torch.Tensor | None = None  # [..., 1]

    def to_dense(self, n_latents: int) -> torch.Tensor:
        """The code as a dense [..., n_latents] tensor (for inspection, never in a hot path)."""
        dense = self.values.new_zeros(*self.values.shape[:-1], n_latents)
        return dense.scatter_add_(-1, self.indices, self.values)


@dataclass
class TopKSAEOutput(ModelOutput):
    """What `TopKSAE.forward` returns. Losses are measured on the normalised input (what is trained)."""

    x_hat: torch.Tensor | None = None  # [..., d_out], in the input's own scale (a transcoder: the target's)
    code: SparseCode | None = None
    fvu: torch.Tensor | None = None  # scalar: normalised MSE with the batch's variance (None: no target given)
    loss: torch.Tensor | None = None  # fvu + multi_topk_coef · multi_topk_loss + aux_k_coef · aux_loss
    aux_loss: torch.Tensor | None = None  # AuxK: dead latents reconstructing the residual; 0 without dead latents
    multi_topk_loss: torch.Tensor | None = None  # FVU with multi_topk_factor · k latents, when enabled


def topk_losses(
    config: TopKSAEConfig,
    target: torch.Tensor,
    x_hat: torch.Tensor,
    *,
    x_hat_multi: torch.Tensor | None = None,
    residual_hat: torch.Tensor | None = None,
    aux: bool = False,
    measure=fvu,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The training loss of every variant (docs/method.md §2): (loss, fvu, multi_topk_loss, aux_loss).

    The one definition, called by `TopKSAE.forward` and the latent-sharded forward: target and the
    reconstructions [tokens, d_out] are normalised; `residual_hat` is the dead latents' reconstruction of
    target − x_hat (None when no latent is dead: AuxK is then 0); `aux` says whether AuxK runs this step;
    `measure` is the FVU (the sharded forward passes one over the global batch).
    """
    main = measure(x_hat, target)
    loss, multi_topk_loss, aux_loss = main, None, None
    if x_hat_multi is not None:
        multi_topk_loss = measure(x_hat_multi, target)
        loss = loss + config.multi_topk_coef * multi_topk_loss
    if aux:
        aux_loss = target.new_zeros(())
        if residual_hat is not None:
            # A batch whose residual has no variance gives 0/0: the paper sets the term to 0.
            aux_loss = torch.nan_to_num(measure(residual_hat, (target - x_hat).detach()), nan=0.0)
        loss = loss + config.aux_k_coef * aux_loss
    return loss, main, multi_topk_loss, aux_loss


# ---- the selection of each architecture (configuration.ARCHITECTURES holds what each one is) -------------


def _select_topk(sae: TopKSAE, x_norm: torch.Tensor, k: int | None, aux_mask: torch.Tensor | None, training: bool):
    """TopK: the k largest pre-activations of each row (and AuxK's), sorted descending."""
    return select_topk(sae, x_norm, sae.config.k if k is None else k, aux_mask)


def _select_batchtopk(sae: TopKSAE, x_norm: torch.Tensor, k: int | None, aux_mask: torch.Tensor | None, training: bool):
    """BatchTopK (Bussmann et al. 2024): training keeps the k·rows largest pre-activations of the whole batch
    and folds the smallest kept one into the threshold buffer; inference keeps those above the threshold,
    or each row's top k when k is given or config.inference is 'topk'."""
    if training:
        rows = x_norm.shape[0]
        return select_above(sae, x_norm, sae.config.k, aux_mask, batch_k=sae.config.k * rows)
    if k is not None or sae.config.inference_mode == "topk":
        return select_topk(sae, x_norm, sae.config.k if k is None else k, aux_mask)
    if float(sae.threshold) < 0:
        raise ValueError(
            "This BatchTopK SAE has no threshold yet (it is estimated while training); train it, or set "
            "config.inference='topk' to keep each token's top k."
        )
    return select_above(sae, x_norm, sae.config.k, aux_mask, threshold=sae.threshold)


SELECTIONS = {"topk": _select_topk, "batchtopk": _select_batchtopk}
"""architecture name → (sae, normalised x, k or None, dead mask or None, training) → (TopKSelection, dead count).

`training` is true in the forward of a model in training mode; encode always selects as at inference."""
# BatchTopK's threshold is a running mean of each batch's smallest kept activation: a plain mean over the
# first 1 / (1 − THRESHOLD_DECAY) batches, an exponential average with this decay after them.
THRESHOLD_DECAY = 0.999


class TopKSAE(HubMixin, PreTrainedModel):
    """z = ReLU(TopK(W_enc (x − b_pre) + b_enc)), x_hat = W_decᵀ z + b_pre, with sparse kernels.

    `W_dec` is stored as [n_latents, d_out]: each row is one latent's decoder vector (the paper's
    columns), so that decoding gathers contiguous rows. The variants (config.architecture, a transcoder's
    target_hook_point / d_out / skip_connection) are described in docs/architecture.md, "Adding a variant".

    Example:
        >>> sae = TopKSAE(TopKSAEConfig(d_in=64, n_latents=512, k=8))
        >>> code = sae.encode(torch.randn(10, 64))        # code.indices, code.values: [10, 8]
        >>> x_hat = sae.decode(code)                      # [10, 64]
    """

    config_class = TopKSAEConfig
    base_model_prefix = "sae"
    main_input_name = "x"
    _no_split_modules: list[str] = []

    def __init__(self, config: TopKSAEConfig):
        super().__init__(config)
        n, d, d_out = config.n_latents, config.d_in, config.output_size
        self.W_enc = nn.Parameter(torch.empty(n, d))
        self.b_enc = nn.Parameter(torch.zeros(n)) if config.latent_bias else None
        self.W_dec = nn.Parameter(torch.empty(n, d_out))
        self.b_pre = nn.Parameter(torch.zeros(d_out))
        self.W_skip = nn.Parameter(torch.zeros(d_out, d)) if config.skip_connection else None
        if ARCHITECTURES[config.architecture].threshold:
            # Negative until training estimates it; saved with the weights. The update count (training state,
            # in checkpoints, not in the weights) makes the estimate a plain mean over the first batches.
            self.register_buffer(THRESHOLD_BUFFER, torch.tensor(-1.0))
            self.register_buffer("threshold_updates", torch.tensor(0, dtype=torch.int64), persistent=False)
        self.ops_backend: str | None = None  # None: the fastest for the device; or "reference" / "cpu" / "triton"
        for weight in (self.W_enc, self.W_dec):  # AuxK sends these sparse rows (see _dead_rows)
            weight.register_post_accumulate_grad_hook(_densify_grad)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Called by post_init, and by from_pretrained when anything was not loaded: a non-persistent buffer (the
        # BatchTopK threshold's update count) never is, so loaded parameters (flagged by transformers) are kept.
        if module is self and not all(getattr(p, "_is_hf_initialized", False) for p in self.parameters()):
            self.init_tied_()

    @classmethod
    def from_pretrained_folder(cls, folder, *args, **kwargs):
        """Load an hfsae folder on disk (HubMixin.from_pretrained finds and downloads it first) strictly:
        a weights file whose tensors are missing, extra or shaped unlike config.json raises an error
        that names it (transformers would only log it and initialise those weights at random).
        """
        return _load_strictly(super().from_pretrained_folder, folder, *args, **kwargs)

    # ---- initialisation and decoder-norm helpers (docs/method.md §1) --------------------------------------

    @torch.no_grad()
    def init_tied_(self, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder rows, W_enc = W_dec (tied at init only), b_enc = 0, b_pre = 0, W_skip = 0.

        A transcoder whose widths differ draws W_enc's unit rows separately (there is nothing to tie).
        """
        W_dec = torch.randn(self.W_dec.shape, generator=generator, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec.copy_(W_dec)
        if self.W_enc.shape != W_dec.shape:
            W_dec = torch.randn(self.W_enc.shape, generator=generator, dtype=torch.float32)
            W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_enc.copy_(W_dec)
        if self.b_enc is not None:
            self.b_enc.zero_()
        self.b_pre.zero_()
        if self.W_skip is not None:
            self.W_skip.zero_()
        # Buffers (a BatchTopK threshold) start in __init__, where the ones a checkpoint lacks keep their value.

    @torch.no_grad()
    def init_b_pre_(self, sample: torch.Tensor, *, iterations: int = 100, tolerance: float = 1e-6) -> None:
        """Set b_pre to the geometric median of a sample of what it reconstructs [tokens, d_out] (Weiszfeld).

        For an SAE that is its input; for a transcoder, pass a sample of the target.
        """
        if self.config.is_transcoder:
            x = check_target(self.config, sample).reshape(-1, self.config.output_size).float()
        else:
            x, _, _ = normalize(self.config, check_input(self.config, sample).reshape(-1, self.config.d_in).float())
        self.b_pre.copy_(geometric_median(x, iterations=iterations, tolerance=tolerance))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).tiny)

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove from each decoder row's gradient its component along the (unit-norm) row."""
        if self.W_dec.grad is None:
            return
        # In chunks of rows, updated in place: no [n_latents, d_in] temporary, so the step's extra memory
        # does not grow with n_latents (benchmarks/bench_memory.py); faster on the CPU than one bmm.
        grad, weight = self.W_dec.grad, self.W_dec
        for start in range(0, weight.shape[0], 2048):
            g, w = grad[start : start + 2048], weight[start : start + 2048]
            g.addcmul_((g * w).sum(1, keepdim=True), w, value=-1)

    # ---- encode / decode / forward ------------------------------------------------------------------

    @property
    def ops(self):
        """The sparse-ops module in use for this model's device."""
        return backend_for(self.W_enc.device, self.ops_backend)

    def encode(self, x: torch.Tensor, *, k: int | None = None) -> SparseCode:
        """x: [..., d_in] → the active latents of each row: its k largest (k defaults to config.k), or for a
        thresholded SAE (BatchTopK) those above the threshold, as many as the row has (padded with zeros)."""
        if k is not None:
            k = check_k(self.config, k)
        leading = x.shape[:-1]
        x = check_input(self.config, x).reshape(-1, self.config.d_in).to(self.W_enc.dtype)
        x_norm, mean, scale = normalize(self.config, x)
        selection, _ = SELECTIONS[self.config.architecture](self, x_norm, k, None, False)
        values = torch.relu(self._preactivations(x_norm, selection.indices, selection.values))
        width = selection.indices.shape[1]
        return SparseCode(
            indices=selection.indices.reshape(*leading, width),
            values=values.reshape(*leading, width),
            input_mean=None if mean is None else mean.reshape(*leading, 1),
            input_scale=None if scale is None else scale.reshape(*leading, 1),
        )

    def decode(self, code: SparseCode, *, x: torch.Tensor | None = None) -> torch.Tensor:
        """A code [..., k] → x_hat [..., d_out], undoing the input normalisation recorded in the code.

        With a skip connection the output also needs the input x [..., d_in] the code came from.
        """
        leading, k = code.indices.shape[:-1], code.indices.shape[-1]
        indices = code.indices.reshape(-1, k)
        if indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < self.config.n_latents:
            raise ValueError(f"Code indices must lie in [0, {self.config.n_latents}); got a code outside that range.")
        y = sparse_decode(indices, code.values.reshape(-1, k).to(self.W_dec.dtype), self.W_dec, self.ops) + self.b_pre
        if self.W_skip is not None:
            if x is None:
                raise ValueError("This transcoder has a skip connection: pass decode(code, x=input) to add W_skip x.")
            y = y + check_input(self.config, x).reshape(-1, self.config.d_in).to(self.W_skip.dtype) @ self.W_skip.T
        mean = None if code.input_mean is None else code.input_mean.reshape(-1, 1)
        scale = None if code.input_scale is None else code.input_scale.reshape(-1, 1)
        return denormalize(self.config, y, mean, scale).reshape(*leading, self.config.output_size)

    def forward(
        self,
        x: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        dead_mask: torch.Tensor | None = None,
        k: int | None = None,
    ) -> TopKSAEOutput:
        """Encode, decode and measure x [..., d_in]; with `dead_mask` [n_latents] bool, also the AuxK loss.

        An SAE measures its reconstruction of x; a transcoder that of `target` [..., d_out] (the activation
        at its target_hook_point from the same forward pass), and returns no losses without one. In
        training mode a BatchTopK SAE selects over the whole batch and updates its threshold.
        """
        config = self.config
        if k is not None:
            k = check_k(config, k)
        leading = x.shape[:-1]
        x = check_input(config, x).reshape(-1, config.d_in).to(self.W_enc.dtype)
        x_norm, mean, scale = normalize(config, x)
        y_norm = x_norm
        if config.is_transcoder:
            y_norm = None if target is None else check_target(config, target).reshape(-1, config.output_size).to(x.dtype)
            if y_norm is not None and y_norm.shape[0] != x.shape[0]:
                raise ValueError(f"target has {y_norm.shape[0]} rows where x has {x.shape[0]}; pass the same tokens.")

        k_main = config.k if k is None else k
        k_multi = min(config.multi_topk_factor * k_main, config.n_latents) if config.multi_topk_coef > 0 else k_main
        aux_mask = dead_mask if config.aux_k_coef > 0 and y_norm is not None else None
        if aux_mask is not None and aux_mask.shape != (config.n_latents,):
            raise ValueError(f"dead_mask must have shape ({config.n_latents},); got {tuple(aux_mask.shape)}.")
        # One host sync counts the dead latents (n_dead), reused to choose the AuxK path.
        select = SELECTIONS[config.architecture]
        selection, n_dead = select(self, x_norm, k if k_multi == k_main else k_multi, aux_mask, self.training)
        n_main = selection.indices.shape[1]
        k_main = k_main if k_multi > k_main else n_main  # BatchTopK and thresholds keep a width of their own
        k_aux = 0 if aux_mask is None else selection.aux_indices.shape[1]
        aux_dense = k_aux > 0 and "dense" == auxk_path(
            x_norm, n_dead, k_aux, self.ops, fallback="dense" if n_dead <= AUX_DENSE_MAX_RATIO * k_aux else "sparse"
        )

        # With sparse AuxK, one differentiable gather takes every selected pre-activation (main and
        # AuxK): the encoder gradient is then one sparse scatter instead of one per loss.
        indices, preacts = selection.indices, selection.values
        if aux_mask is not None and not aux_dense:
            indices = torch.cat([indices, selection.aux_indices], dim=1)
            preacts = torch.cat([preacts, selection.aux_values], dim=1)
        values = torch.relu(self._preactivations(x_norm, indices, preacts))

        # TopK values come sorted descending, so the first k of the top-(factor·k) are the top-k.
        x_hat_norm = self._output(sparse_decode(indices[:, :k_main], values[:, :k_main], self.W_dec, self.ops), x_norm)
        x_hat_multi = residual_hat = None
        if k_multi > k_main:
            x_hat_multi = self._output(sparse_decode(indices[:, :k_multi], values[:, :k_multi], self.W_dec, self.ops), x_norm)
        if k_aux > 0:
            residual_hat = self._aux_reconstruction(x_norm, aux_mask, selection, values[:, n_main:], aux_dense)
        loss = main_fvu = multi_topk_loss = aux_loss = None
        if y_norm is not None:
            loss, main_fvu, multi_topk_loss, aux_loss = topk_losses(
                config, y_norm, x_hat_norm, x_hat_multi=x_hat_multi, residual_hat=residual_hat, aux=aux_mask is not None
            )

        code = SparseCode(
            indices=indices[:, :k_main].reshape(*leading, k_main),
            values=values[:, :k_main].reshape(*leading, k_main),
            input_mean=None if mean is None else mean.reshape(*leading, 1),
            input_scale=None if scale is None else scale.reshape(*leading, 1),
        )
        x_hat = denormalize(config, x_hat_norm, mean, scale).reshape(*leading, config.output_size)
        return TopKSAEOutput(
            x_hat=x_hat, code=code, fvu=main_fvu, loss=loss, aux_loss=aux_loss, multi_topk_loss=multi_topk_loss
        )

    def _output(self, decoded: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
        """The normalised reconstruction from the decoded latents [tokens, d_out]: + b_pre (+ W_skip x)."""
        y = decoded + self.b_pre
        return y if self.W_skip is None else y + x_norm @ self.W_skip.T

    def _aux_reconstruction(self, x_norm, aux_mask, selection: TopKSelection, aux_values, dense: bool) -> torch.Tensor:
        """AuxK's reconstruction of the residual from the dead latents' selection (dense or sparse products)."""
        dead = aux_mask.nonzero().squeeze(1)
        position_in_dead = torch.empty(aux_mask.shape[0], dtype=torch.int64, device=dead.device)
        position_in_dead[dead] = torch.arange(dead.numel(), device=dead.device)
        positions = position_in_dead[selection.aux_indices]  # AuxK's code over the dead latents only
        if dense:
            b_sub = None if self.b_enc is None else self.b_enc[dead]
            b_pre = self.b_pre if self.config.subtracts_b_pre else None
            code = subspace_code(x_norm, _dead_rows(self.W_enc, dead), b_sub, positions, selection.aux_values, b_pre=b_pre)
            return code @ _dead_rows(self.W_dec, dead)
        return sparse_decode(positions, aux_values, _dead_rows(self.W_dec, dead), self.ops)

    def _preactivations(self, x_norm: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        b_pre = self.b_pre if self.config.subtracts_b_pre else None
        return selected_preactivations(x_norm, self.W_enc, self.b_enc, indices, values, self.ops, b_pre=b_pre)


def select_topk(sae: TopKSAE, x_norm: torch.Tensor, k: int, aux_mask: torch.Tensor | None = None) -> tuple[TopKSelection, int]:
    """The top-k (and AuxK) selection of `sae`, and how many latents aux_mask marks (0 without one)."""
    with torch.no_grad():
        x_centred = x_norm - sae.b_pre if sae.config.subtracts_b_pre else x_norm
        k_aux = n_masked = 0
        if aux_mask is not None:
            n_masked = int(aux_mask.sum())
            k_aux = min(sae.config.k_aux_effective, n_masked)
        W_enc, b_enc = sae.W_enc.detach(), None if sae.b_enc is None else sae.b_enc.detach()
        device_type = x_centred.device.type
        if torch.is_autocast_enabled(device_type):
            # Mixed precision: the encoder matmul reads the autocast dtype (bf16), the master weights
            # and everything after the selection stay fp32 (the selected values are upcast here).
            low = torch.get_autocast_dtype(device_type)
            x_centred, W_enc = x_centred.to(low), W_enc.to(low)
            b_enc = None if b_enc is None else b_enc.to(low)
        selection = sae.ops.encode_topk(x_centred, W_enc, b_enc, k, aux_mask=aux_mask if k_aux else None, k_aux=k_aux)
        selection.values = selection.values.to(x_norm.dtype)
        if aux_mask is not None and selection.aux_indices is None:
            # No dead latents this step: AuxK contributes an empty selection (loss 0).
            empty = selection.indices.new_empty(selection.indices.shape[0], 0)
            selection.aux_indices, selection.aux_values = empty, selection.values.new_empty(empty.shape)
        elif selection.aux_indices is not None:
            selection.aux_values, selection.aux_indices = _positive_prefix(
                selection.aux_values.to(x_norm.dtype), selection.aux_indices
            )
        return selection, n_masked


@torch.no_grad()
def select_above(
    sae: TopKSAE,
    x_norm: torch.Tensor,
    k: int,
    aux_mask: torch.Tensor | None,
    *,
    threshold: torch.Tensor | None = None,
    batch_k: int | None = None,
) -> tuple[TopKSelection, int]:
    """Each row's pre-activations above `threshold`, or among the batch_k largest of the whole batch.

    Exact with the per-row sparse ops: each row sends its top `width` candidates, and the width doubles
    until no row has all of its candidates kept (a row that has may hold more). The selection is as wide
    as the row with the most; the rest of each row is zeros (distinct indices, as the kernels need).
    With batch_k, the smallest kept positive value updates the threshold buffer (its running mean).
    """
    n = sae.config.n_latents
    width = min(n, 4 * k)
    while True:
        selection, n_dead = select_topk(sae, x_norm, width, aux_mask)
        values = selection.values
        cut = values.reshape(-1).topk(min(batch_k, values.numel())).values[-1] if batch_k else threshold
        kept = (values >= cut if batch_k else values > cut) & (values > 0)  # ReLU zeroes the rest anyway
        if width == n or not bool(kept[:, -1].any()):
            break
        width = min(n, 2 * width)
    count = max(1, int(kept.sum(1).max()))
    kept = kept[:, :count]
    selection.indices = selection.indices[:, :count]
    selection.values = torch.where(kept, values[:, :count], 0.0)
    if batch_k:
        positive = selection.values[selection.values > 0]
        if positive.numel():
            # The mean of every batch's value so far, then an exponential average (weight 1 − THRESHOLD_DECAY).
            weight = max(1 - THRESHOLD_DECAY, 1 / (int(sae.threshold_updates) + 1))
            sae.threshold.lerp_(positive.min().to(sae.threshold.dtype), weight)
            sae.threshold_updates += 1
    return selection, n_dead


def _load_strictly(base_from_pretrained, location, *args, **kwargs):
    """transformers' from_pretrained, then an SAEFolderError unless the weights are exactly this SAE's finite tensors.

    The weight file's header is checked against config.json before anything is allocated: an edited n_latents
    must not reserve gigabytes (or crash) before the mismatch is found.
    """
    want_info = kwargs.pop("output_loading_info", False)
    allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
    folder = Path(location, kwargs.get("subfolder") or "")
    weights = "/".join(str(part) for part in (location, kwargs.get("subfolder"), WEIGHTS_FILE) if part)
    saved = saved_tensor_shapes(folder) if not allow_mismatch else None
    if saved is not None:
        config = kwargs.get("config")
        config = config if isinstance(config, TopKSAEConfig) else TopKSAEConfig.from_pretrained(folder)
        with torch.device("meta"):  # shapes only: nothing is allocated
            expected = {name: list(tensor.shape) for name, tensor in TopKSAE(config).state_dict().items()}
        wrong = [name for name in sorted(expected.keys() & saved.keys()) if expected[name] != saved[name]]
        if wrong:
            name = wrong[0]
            raise SAEFolderError(
                f"{weights} does not hold the weights of the TopK SAE its config.json describes: {name} has shape "
                f"{tuple(saved[name])} where config.json (d_in={config.d_in}, n_latents={config.n_latents}) needs "
                f"{tuple(expected[name])}. It may come from another model or an edited config.json; re-save or "
                "re-download the SAE."
            )
    model, info = base_from_pretrained(
        location, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    problems = []
    if info["missing_keys"]:
        problems.append(f"it lacks {', '.join(sorted(info['missing_keys']))}")
    if info["unexpected_keys"]:
        problems.append(f"it holds unexpected tensors {', '.join(sorted(info['unexpected_keys']))}")
    if info["mismatched_keys"] and not allow_mismatch:
        problems += [
            f"{name} has shape {tuple(saved)} where config.json (d_in={model.config.d_in}, "
            f"n_latents={model.config.n_latents}) needs {tuple(expected)}"
            for name, saved, expected in sorted(info["mismatched_keys"])[:1]
        ]
    if problems:
        raise SAEFolderError(
            f"{weights} does not hold the weights of the TopK SAE its config.json describes: {'; '.join(problems)}. "
            "It may come from another model or an edited config.json; re-save or re-download the SAE."
        )
    # A NaN weight would load and evaluate, then break eval, card and push on their own files: refuse it here.
    check_finite(dict(model.state_dict()), what=weights)
    return (model, info) if want_info else model


def _positive_prefix(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The AuxK selection [batch, k_aux] cut to `kept` columns, the largest count of positive values in a
    row: as given when that is every column, else each row's top `kept`, sorted descending. Exact: an
    entry ≤ 0 is 0 after ReLU and gets no gradient, so dropping it changes neither the loss nor any
    gradient. One column stays, so the loss keeps its value when none is positive."""
    kept = max(1, int((values > 0).sum(1).max()))
    if kept == values.shape[1]:  # nothing to cut: no sort (a [4096, 288] sort cost ~5% of a step)
        return values, indices
    values, order = values.topk(kept, dim=1)
    return values, indices.gather(1, order)


def _dead_rows(weight: nn.Parameter, dead: torch.Tensor) -> torch.Tensor:
    """weight[dead], whose gradient reaches `weight` as sparse rows: autograd adds them in place to the main
    path's dense gradient, where plain indexing would build and add a zero-filled [n_latents, d_in] one
    (~3% of a step at n 16k–32k, measured)."""
    return nn.functional.embedding(dead, weight, sparse=True)


def _densify_grad(weight: nn.Parameter) -> None:
    """Keep .grad dense (optimizers expect it) when AuxK's sparse rows were its only gradient."""
    if weight.grad is not None and weight.grad.is_sparse:
        weight.grad = weight.grad.to_dense()


def geometric_median(points: torch.Tensor, *, iterations: int = 100, tolerance: float = 1e-6) -> torch.Tensor:
    """The point minimising the sum of Euclidean distances to points [count, d] (Weiszfeld iterations)."""
    median = points.mean(dim=0)
    for _ in range(iterations):
        distances = (points - median).norm(dim=1).clamp_min(1e-8)
        weights = 1.0 / distances
        updated = (weights[:, None] * points).sum(dim=0) / weights.sum()
        shift = (updated - median).norm()
        median = updated
        if shift <= tolerance * median.norm().clamp_min(1.0):
            break
    return median


AutoConfig.register(TopKSAEConfig.model_type, TopKSAEConfig)
AutoModel.register(TopKSAEConfig, TopKSAE)
