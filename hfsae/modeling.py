"""TopKSAE: the TopK sparse autoencoder as a transformers PreTrainedModel (docs/method.md §1–2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import TopKSAEConfig
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

    x_hat: torch.Tensor | None = None  # [..., d_in], in the input's own scale
    code: SparseCode | None = None
    fvu: torch.Tensor | None = None  # scalar: normalised MSE with the batch's variance
    loss: torch.Tensor | None = None  # fvu + multi_topk_coef · multi_topk_loss + aux_k_coef · aux_loss
    aux_loss: torch.Tensor | None = None  # AuxK: dead latents reconstructing the residual; 0 without dead latents
    multi_topk_loss: torch.Tensor | None = None  # FVU with multi_topk_factor · k latents, when enabled


class TopKSAE(HubMixin, PreTrainedModel):
    """z = ReLU(TopK(W_enc (x − b_pre) + b_enc)), x_hat = W_decᵀ z + b_pre, with sparse kernels.

    `W_dec` is stored as [n_latents, d_in]: each row is one latent's decoder vector (the paper's
    columns), so that decoding gathers contiguous rows.

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
        n, d = config.n_latents, config.d_in
        self.W_enc = nn.Parameter(torch.empty(n, d))
        self.b_enc = nn.Parameter(torch.zeros(n)) if config.latent_bias else None
        self.W_dec = nn.Parameter(torch.empty(n, d))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.ops_backend: str | None = None  # None: the fastest for the device; or "reference" / "cpu" / "triton"
        for weight in (self.W_enc, self.W_dec):  # AuxK sends these sparse rows (see _dead_rows)
            weight.register_post_accumulate_grad_hook(_densify_grad)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Called by post_init and by from_pretrained only for weights a checkpoint lacks.
        if module is self:
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
        """Random unit-norm decoder rows, W_enc = W_dec (tied at init only), b_enc = 0, b_pre = 0."""
        W_dec = torch.randn(self.W_dec.shape, generator=generator, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec.copy_(W_dec)
        self.W_enc.copy_(W_dec)
        if self.b_enc is not None:
            self.b_enc.zero_()
        self.b_pre.zero_()

    @torch.no_grad()
    def init_b_pre_(self, sample: torch.Tensor, *, iterations: int = 100, tolerance: float = 1e-6) -> None:
        """Set b_pre to the geometric median of a sample of activations [tokens, d_in] (Weiszfeld)."""
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
        """x: [..., d_in] → the k largest latents of each row (k defaults to config.k)."""
        k = check_k(self.config, k)
        leading = x.shape[:-1]
        x = check_input(self.config, x).reshape(-1, self.config.d_in).to(self.W_enc.dtype)
        x_norm, mean, scale = normalize(self.config, x)
        selection, _ = self._select(x_norm, k)
        values = torch.relu(self._preactivations(x_norm, selection.indices, selection.values))
        return SparseCode(
            indices=selection.indices.reshape(*leading, k),
            values=values.reshape(*leading, k),
            input_mean=None if mean is None else mean.reshape(*leading, 1),
            input_scale=None if scale is None else scale.reshape(*leading, 1),
        )

    def decode(self, code: SparseCode) -> torch.Tensor:
        """A code [..., k] → x_hat [..., d_in], undoing the input normalisation recorded in the code."""
        leading, k = code.indices.shape[:-1], code.indices.shape[-1]
        indices = code.indices.reshape(-1, k)
        if indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < self.config.n_latents:
            raise ValueError(f"Code indices must lie in [0, {self.config.n_latents}); got a code outside that range.")
        y = sparse_decode(indices, code.values.reshape(-1, k).to(self.W_dec.dtype), self.W_dec, self.ops) + self.b_pre
        mean = None if code.input_mean is None else code.input_mean.reshape(-1, 1)
        scale = None if code.input_scale is None else code.input_scale.reshape(-1, 1)
        return denormalize(self.config, y, mean, scale).reshape(*leading, self.config.d_in)

    def forward(
        self, x: torch.Tensor, *, dead_mask: torch.Tensor | None = None, k: int | None = None
    ) -> TopKSAEOutput:
        """Encode, decode and measure x [..., d_in]; with `dead_mask` [n_latents] bool, also the AuxK loss."""
        config = self.config
        k = check_k(config, k)
        leading = x.shape[:-1]
        x = check_input(config, x).reshape(-1, config.d_in).to(self.W_enc.dtype)
        x_norm, mean, scale = normalize(config, x)

        k_multi = min(config.multi_topk_factor * k, config.n_latents) if config.multi_topk_coef > 0 else k
        aux_mask = dead_mask if config.aux_k_coef > 0 else None
        if aux_mask is not None and aux_mask.shape != (config.n_latents,):
            raise ValueError(f"dead_mask must have shape ({config.n_latents},); got {tuple(aux_mask.shape)}.")
        # One host sync counts the dead latents (n_dead), reused to choose the AuxK path.
        selection, n_dead = self._select(x_norm, max(k, k_multi), aux_mask=aux_mask)
        k_aux = 0 if aux_mask is None else selection.aux_indices.shape[1]
        aux_dense = k_aux > 0 and "dense" == auxk_path(
            x_norm, n_dead, k_aux, self.ops, fallback="dense" if n_dead <= AUX_DENSE_MAX_RATIO * k_aux else "sparse"
        )

        # With sparse AuxK, one differentiable gather takes every selected pre-activation (main and
        # AuxK): the encoder gradient is then one sparse scatter instead of one per loss.
        n_main = selection.indices.shape[1]
        indices, preacts = selection.indices, selection.values
        if aux_mask is not None and not aux_dense:
            indices = torch.cat([indices, selection.aux_indices], dim=1)
            preacts = torch.cat([preacts, selection.aux_values], dim=1)
        values = torch.relu(self._preactivations(x_norm, indices, preacts))

        # TopK values come sorted descending, so the first k of the top-(factor·k) are the top-k.
        x_hat_norm = sparse_decode(indices[:, :k], values[:, :k], self.W_dec, self.ops) + self.b_pre
        main_fvu = fvu(x_hat_norm, x_norm)
        loss = main_fvu
        multi_topk_loss = aux_loss = None
        if k_multi > k:
            x_hat_multi = sparse_decode(indices[:, :k_multi], values[:, :k_multi], self.W_dec, self.ops) + self.b_pre
            multi_topk_loss = fvu(x_hat_multi, x_norm)
            loss = loss + config.multi_topk_coef * multi_topk_loss
        if aux_mask is not None and selection.aux_indices.shape[1] == 0:
            aux_loss = x_norm.new_zeros(())  # no dead latents this step
        elif aux_mask is not None:
            residual = (x_norm - x_hat_norm).detach()
            dead = aux_mask.nonzero().squeeze(1)
            position_in_dead = torch.empty(aux_mask.shape[0], dtype=torch.int64, device=dead.device)
            position_in_dead[dead] = torch.arange(dead.numel(), device=dead.device)
            positions = position_in_dead[selection.aux_indices]  # AuxK's code over the dead latents only
            if aux_dense:
                b_sub = None if self.b_enc is None else self.b_enc[dead]
                W_sub = _dead_rows(self.W_enc, dead)
                code = subspace_code(x_norm, W_sub, b_sub, positions, selection.aux_values, b_pre=self.b_pre)
                residual_hat = code @ _dead_rows(self.W_dec, dead)
            else:
                residual_hat = sparse_decode(positions, values[:, n_main:], _dead_rows(self.W_dec, dead), self.ops)
            # A batch whose residual has no variance gives 0/0: the paper sets the term to 0.
            aux_loss = torch.nan_to_num(fvu(residual_hat, residual), nan=0.0)
            loss = loss + config.aux_k_coef * aux_loss

        code = SparseCode(
            indices=indices[:, :k].reshape(*leading, k),
            values=values[:, :k].reshape(*leading, k),
            input_mean=None if mean is None else mean.reshape(*leading, 1),
            input_scale=None if scale is None else scale.reshape(*leading, 1),
        )
        x_hat = denormalize(config, x_hat_norm, mean, scale).reshape(*leading, config.d_in)
        return TopKSAEOutput(
            x_hat=x_hat, code=code, fvu=main_fvu, loss=loss, aux_loss=aux_loss, multi_topk_loss=multi_topk_loss
        )

    def _select(self, x_norm: torch.Tensor, k: int, aux_mask: torch.Tensor | None = None) -> tuple[TopKSelection, int]:
        """The top-k (and AuxK) selection, and how many latents aux_mask marks (0 without one)."""
        with torch.no_grad():
            x_centred = x_norm - self.b_pre
            k_aux = n_masked = 0
            if aux_mask is not None:
                n_masked = int(aux_mask.sum())
                k_aux = min(self.config.k_aux_effective, n_masked)
            W_enc, b_enc = self.W_enc.detach(), None if self.b_enc is None else self.b_enc.detach()
            device_type = x_centred.device.type
            if torch.is_autocast_enabled(device_type):
                # Mixed precision: the encoder matmul reads the autocast dtype (bf16), the master weights
                # and everything after the selection stay fp32 (the selected values are upcast here).
                low = torch.get_autocast_dtype(device_type)
                x_centred, W_enc = x_centred.to(low), W_enc.to(low)
                b_enc = None if b_enc is None else b_enc.to(low)
            selection = self.ops.encode_topk(x_centred, W_enc, b_enc, k, aux_mask=aux_mask if k_aux else None, k_aux=k_aux)
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

    def _preactivations(self, x_norm: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return selected_preactivations(x_norm, self.W_enc, self.b_enc, indices, values, self.ops, b_pre=self.b_pre)



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
