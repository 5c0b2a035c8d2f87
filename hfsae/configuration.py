"""TopKSAEConfig: what a TopK sparse autoencoder is (sizes, normalisation, losses, provenance)."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import PretrainedConfig

from .folder import CONFIG_FILE, SAEFolderError

NORMALIZATIONS = ("none", "layer_norm", "unit_norm", "dataset_scale")
INFERENCE_MODES = ("topk", "threshold")
# The buffer of a thresholded SAE (BatchTopK): the activation a latent must exceed at inference.
THRESHOLD_BUFFER = "threshold"


@dataclass(frozen=True)
class Architecture:
    """What a variant of the TopK family is and which paths can run it ("Adding a variant" in docs/architecture.md).

    The one map of variants: `ARCHITECTURES[config.architecture]`. The model's selection for each
    name is `hfsae.modeling.SELECTIONS` (a test keeps the two key sets equal); the trainer, the
    evaluation and the card read the flags here.
    """

    name: str
    summary: str
    """One line for the card's architecture table."""
    inference: str
    """How latents are chosen at inference by default: 'topk' (k per token) or 'threshold' (the stored buffer)."""
    latent_shards: bool
    """Whether the latent-sharded / data-parallel forward (hfsae.distributed) can train it."""
    multi_topk: bool
    """Whether the Multi-TopK term applies."""
    threshold: bool
    """Whether training estimates a threshold, stored in the weights as the THRESHOLD_BUFFER buffer."""


ARCHITECTURES = {
    "topk": Architecture(
        name="topk",
        summary="TopK: the k largest pre-activations of each token",
        inference="topk",
        latent_shards=True,
        multi_topk=True,
        threshold=False,
    ),
    "batchtopk": Architecture(
        name="batchtopk",
        summary="BatchTopK: the k·B largest pre-activations of a batch while training, a threshold at inference",
        inference="threshold",
        latent_shards=False,
        multi_topk=False,
        threshold=True,
    ),
}


@strict(accept_kwargs=True)
class TopKSAEConfig(PretrainedConfig):
    """The architecture of a TopK SAE (docs/method.md §1–2) and where its activations came from.

    Example:
        >>> TopKSAEConfig(d_in=576, n_latents=8192, k=32)
    """

    model_type = "topk_sae"

    architecture: str = "topk"
    """Variant of the TopK family: topk | batchtopk (hfsae.configuration.ARCHITECTURES)."""
    d_in: int = 768
    """Width of the activations the SAE reads (and reconstructs, unless d_out is set)."""
    d_out: int | None = None
    """Width of what it reconstructs when that differs from its input (a transcoder's target); None: d_in."""
    n_latents: int = 16384
    """Number of latents (the dictionary size)."""
    k: int = 32
    """Latents kept per token."""
    k_aux: int | None = None
    """Dead latents used by the AuxK loss per token; None means the paper's heuristic d_in // 2."""
    aux_k_coef: float = 1 / 32
    """Weight α of the AuxK loss (docs/method.md §2)."""
    multi_topk_factor: int = 4
    """Multi-TopK also reconstructs with multi_topk_factor · k latents (docs/method.md §2)."""
    multi_topk_coef: float = 0.0
    """Weight of the Multi-TopK term L(factor·k); the paper's value is 1/8. 0 trains plain TopK."""
    latent_bias: bool = True
    """Keep the encoder bias b_enc (the reference code's latent_bias); False drops it, as the paper's equation."""
    normalize: str = "none"
    """Input normalisation: none | layer_norm | unit_norm | dataset_scale (docs/method.md §1)."""
    dataset_scale: float | None = None
    """The layer-wide constant for normalize='dataset_scale': x is multiplied by it before encoding."""
    base_model: str | None = None
    """The language model whose activations the SAE reads (Hub id or path)."""
    hook_point: str | None = None
    """Where in the base model the activations come from, e.g. 'layers.8.resid_post'."""
    target_hook_point: str | None = None
    """A transcoder's target: the activation it predicts from hook_point's (same forward pass), e.g.
    'layers.8.mlp_out' from 'model.layers.8.mlp:input'; None for an SAE (it reconstructs its input)."""
    encoder_subtracts_decoder_bias: bool | None = None
    """Encode x − b_pre (True) or x (False); None: True for an SAE, False for a transcoder (sparsify's convention)."""
    skip_connection: bool = False
    """Add a linear skip term W_skip x (W_skip [d_out, d_in], zero at init) to the output (sparsify's skip_connection)."""
    inference: str | None = None
    """How latents are chosen at inference: topk | threshold; None: the architecture's default
    (threshold for batchtopk, using the 'threshold' buffer estimated during training)."""
    context_size: int | None = None
    """Tokens per training context."""
    dataset: str | None = None
    """The text the SAE was trained on."""

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' reading of config.json, refusing a file that is not a TopKSAEConfig.

        transformers only logs a warning for a foreign model_type (a Llama folder would load as a
        random SAE) and fails with a TypeError on a JSON list.
        """
        subfolder = kwargs.get("subfolder")
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        location = os.fspath(pretrained_model_name_or_path)
        if not location.endswith(".json"):
            location = "/".join(part for part in (location, subfolder, CONFIG_FILE) if part)
        if not isinstance(config_dict, dict):
            raise SAEFolderError(f"{location} should hold a JSON object; it holds a {type(config_dict).__name__}.")
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise SAEFolderError(
                f"{location} describes a model of type {model_type!r}, not a TopK SAE ({cls.model_type!r}). "
                "Load that model with its own class (e.g. transformers.AutoModel), or point at an SAE folder."
            )
        return config_dict, kwargs

    def validate_architecture(self):
        """Checks across fields, run on construction and on from_pretrained."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}; got architecture={self.architecture!r}."
            )
        if self.inference is not None and self.inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {', '.join(INFERENCE_MODES)} or None; got {self.inference!r}.")
        if self.inference_mode == "threshold" and not ARCHITECTURES[self.architecture].threshold:
            thresholded = ", ".join(name for name, variant in ARCHITECTURES.items() if variant.threshold)
            raise ValueError(
                f"inference='threshold' needs a threshold estimated in training (architecture {thresholded}); "
                f"architecture={self.architecture!r} selects with k. Use inference='topk' or None."
            )
        if self.multi_topk_coef and not ARCHITECTURES[self.architecture].multi_topk:
            raise ValueError(
                f"multi_topk_coef={self.multi_topk_coef}: Multi-TopK does not apply to architecture="
                f"{self.architecture!r}; set multi_topk_coef=0."
            )
        if self.is_transcoder and self.normalize != "none":
            raise ValueError(
                f"normalize={self.normalize!r}: a transcoder (target_hook_point={self.target_hook_point!r}) reads and "
                "predicts two different activations, which one normalisation cannot serve; use normalize='none'."
            )
        for name in ("d_in", "d_out", "n_latents", "k", "multi_topk_factor", "k_aux", "context_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer; got {name}={value!r}.")
        for name in ("aux_k_coef", "multi_topk_coef", "dataset_scale"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number; got {name}={value!r}.")
        for name in ("d_in", "d_out", "n_latents", "k", "multi_topk_factor"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={value}.")
        if not self.k < self.n_latents:
            raise ValueError(f"k must be in 1..{self.n_latents - 1} (below n_latents); got k={self.k}.")
        if self.k_aux is not None and not 1 <= self.k_aux <= self.n_latents:
            raise ValueError(f"k_aux must be in 1..{self.n_latents} or None; got k_aux={self.k_aux}.")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}; got normalize={self.normalize!r}.")
        if self.normalize == "dataset_scale" and self.dataset_scale is not None and not self.dataset_scale > 0:
            raise ValueError(f"dataset_scale must be positive; got dataset_scale={self.dataset_scale}.")
        if self.subtracts_b_pre and self.output_size != self.d_in:
            raise ValueError(
                f"encoder_subtracts_decoder_bias needs d_out == d_in (b_pre is subtracted from the input); got "
                f"d_in={self.d_in}, d_out={self.d_out}. Set encoder_subtracts_decoder_bias=False."
            )
        if self.aux_k_coef < 0 or self.multi_topk_coef < 0:
            raise ValueError(
                f"loss weights must be non-negative; got aux_k_coef={self.aux_k_coef}, "
                f"multi_topk_coef={self.multi_topk_coef}."
            )

    @property
    def is_transcoder(self) -> bool:
        """Whether it predicts another activation (target_hook_point or a d_out of its own) rather than its input."""
        return self.target_hook_point is not None or (self.d_out is not None and self.d_out != self.d_in)

    @property
    def output_size(self) -> int:
        """Width of the reconstruction: d_out, or d_in for an SAE."""
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def subtracts_b_pre(self) -> bool:
        """Whether encoding reads x − b_pre (encoder_subtracts_decoder_bias, or its convention when None)."""
        if self.encoder_subtracts_decoder_bias is not None:
            return self.encoder_subtracts_decoder_bias
        return not self.is_transcoder

    @property
    def inference_mode(self) -> str:
        """'topk' or 'threshold': `inference`, or the architecture's default."""
        return self.inference or ARCHITECTURES[self.architecture].inference

    @property
    def k_aux_effective(self) -> int:
        """k_aux, or the paper's heuristic d_in // 2 when unset."""
        return self.k_aux if self.k_aux is not None else max(1, self.d_in // 2)


def _raise_value_errors(init):
    """Strict validation wraps errors in its own type; callers of a config should see ValueError."""

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except StrictDataclassError as err:
            cause = err.__cause__ or err
            raise ValueError(f"Invalid TopKSAEConfig: {cause}") from err

    return checked_init


TopKSAEConfig.__init__ = _raise_value_errors(TopKSAEConfig.__init__)
