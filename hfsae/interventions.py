"""Read and change an SAE's latents inside any transformers causal LM.

    feats = features(sae, model, tokenizer, ["The cat sat"])       # per-token top latents and values
    with steer(model, sae, {1234: 8.0}):                           # + 8 × latent 1234's unit decoder direction
        model.generate(input_ids, max_new_tokens=20)
    with ablate(model, sae, [1234]), clamp(model, sae, {99: 5.0}):  # several at once, nested or side by side
        logits = model(input_ids).logits
    sweep = steering_sweep(model, sae, tokenizer, 1234, [0, 4, 8], prompts=["Once upon a time"])

Each context manager edits the activation at the SAE's hook point (its config's `hook_point`, or
`hook_point=`) through `hfsae.activations.splice`, for `model(...)` and `model.generate(...)` alike
(with a KV cache, a generated token's position counts from the start of the sequence). The hooks
are removed on exit, exceptions included, and leave the model as it was. An intervention whose
hook never ran, or whose positions no input reached, raises `InterventionError` on exit rather
than doing nothing in silence.

ablate and clamp keep the SAE's error term: the activation becomes x + decode(edited code) −
decode(code), so only the named latents' contributions change; splice replaces x by the
reconstruction decode(encode(x)). By default every position but the first is edited: the SAE was
never trained on position 0 (`hfsae.activations.FIRST_POSITION_USED`).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from .activations import FIRST_POSITION_USED, capture, hook_points
from .errors import HfsaeError
from .evaluation.downstream import kl_per_token, next_token_ce
from .modeling import SparseCode

__all__ = [
    "Ablation",
    "Clamping",
    "Intervention",
    "InterventionError",
    "Splicing",
    "Steering",
    "SteeringPoint",
    "SteeringSweep",
    "TokenFeatures",
    "ablate",
    "clamp",
    "features",
    "plot_sweep",
    "splice",
    "steer",
    "steering_sweep",
]

Positions = int | Sequence[int] | slice | None
# Held-out text for steering_sweep by default: the built-in corpus's last texts (standard-library
# sources), far past the start that `hfsae train` reads by default; each cut to this many tokens.
HELDOUT_TEXTS = 4
HELDOUT_TOKENS = 64


class InterventionError(HfsaeError, RuntimeError):
    """An intervention that never took effect: its hook point never ran, or no input reached its positions."""


def _hook_point(sae, hook_point: str | None) -> str:
    hook_point = hook_point or sae.config.hook_point
    if hook_point is None:
        raise ValueError("The SAE's config names no hook_point; pass hook_point= (e.g. 'layers.8.resid_post').")
    return hook_point


def _latent(sae, latent) -> int:
    n = sae.config.n_latents
    if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < n:
        raise ValueError(f"A latent is an integer in 0–{n - 1} (this SAE has {n}); got {latent!r}.")
    return latent


def _latent_values(sae, values: Mapping, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """{latent: number} → (latents [L] int64, numbers [L] float32), checked."""
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"Give {what} as a non-empty mapping {{latent: {what}}}, e.g. {{123: 4.0}}; got {values!r}.")
    latents = [_latent(sae, latent) for latent in values]
    numbers = [float(value) for value in values.values()]
    if not all(math.isfinite(number) for number in numbers):
        raise ValueError(f"Each {what} must be a finite number; got {dict(values)!r}.")
    return torch.tensor(latents), torch.tensor(numbers)


def _position_mask(positions: Positions, offset: int, length: int) -> torch.Tensor:
    """Which of the positions offset … offset + length − 1 of a sequence are edited: [length] bool."""
    absolute = torch.arange(offset, offset + length)
    if positions is None:
        return absolute >= FIRST_POSITION_USED
    if isinstance(positions, slice):
        start, stop = positions.start or 0, math.inf if positions.stop is None else positions.stop
        step = positions.step or 1
        return (absolute >= start) & (absolute < stop) & ((absolute - start) % step == 0)
    wanted = torch.tensor([positions] if isinstance(positions, int) else list(positions), dtype=torch.int64)
    return torch.isin(absolute, wanted)


def _check_positions(positions: Positions) -> Positions:
    if isinstance(positions, slice):
        parts = (positions.start, positions.stop, positions.step)
        if any(part is not None and (not isinstance(part, int) or part < 0) for part in parts) or positions.step == 0:
            raise ValueError(f"A positions slice takes non-negative integers and a step ≥ 1; got {positions!r}.")
        return positions
    if positions is None:
        return None
    listed = [positions] if isinstance(positions, int) else list(positions)
    if not listed or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in listed):
        raise ValueError(
            f"positions are token positions from the start of the sequence (integers ≥ 0), a slice such as "
            f"slice(5, None), or None for every position but the first; got {positions!r}."
        )
    return positions


def _past_length(kwargs: dict) -> int:
    """How many tokens the model has seen before this forward (its KV cache's length; 0 without one)."""
    # transformers 5 passes the cache as `cache`; older versions and many remote models as `past_key_values`.
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2])  # a legacy tuple of (key, value) per layer


class Intervention(ABC):
    """A context manager that edits an SAE's hook-point activation at chosen positions while it is active.

    Subclasses define `edit(x)`: activations [rows, d_in] (in the SAE's dtype and device) → edited ones.
    """

    def __init__(self, model, sae, *, positions: Positions = None, hook_point: str | None = None):
        self.model, self.sae = model, sae
        self.hook_point = _hook_point(sae, hook_point)
        self.positions = _check_positions(positions)
        self.calls = self.edited = 0  # hook runs, and runs that reached at least one chosen position
        self._offset = 0
        self._stack: ExitStack | None = None

    @abstractmethod
    def edit(self, x: torch.Tensor) -> torch.Tensor:
        """Activations [rows, d_in] at the chosen positions → their edited values."""

    @abstractmethod
    def describe(self) -> str:
        """What the intervention does and where, for its errors."""

    def __enter__(self):
        if self._stack is not None:
            raise InterventionError(f"{self.describe()} is already active; create a new one to nest it.")
        self.calls = self.edited = 0
        with ExitStack() as stack:
            stack.enter_context(hook_points.splice(self.model, self.hook_point, self._apply))
            handle = self.model.register_forward_pre_hook(self._record_offset, with_kwargs=True)
            stack.callback(handle.remove)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type, exc, traceback):
        stack, self._stack = self._stack, None
        stack.close()
        if exc_type is not None:
            return False
        if self.calls == 0:
            raise InterventionError(
                f"{self.describe()} never ran: the model was not called inside the `with` block, or its forward "
                f"never reaches {self.hook_point}. Call the model (or generate) inside it, or check the hook point."
            )
        if self.edited == 0:
            raise InterventionError(
                f"{self.describe()} changed nothing: no input reached positions {self.positions!r}. "
                "Positions count tokens from the start of the sequence; choose ones the input has."
            )
        return False

    def _record_offset(self, module, args, kwargs):
        self._offset = _past_length(kwargs)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        mask = _position_mask(self.positions, self._offset, x.shape[-2]).to(x.device)
        if not mask.any():
            return x
        self.edited += 1
        parameter = next(self.sae.parameters())
        rows = x[..., mask, :]
        new = self.edit(rows.reshape(-1, x.shape[-1]).to(parameter.device, parameter.dtype)).reshape(rows.shape)
        out = x.clone()
        out[..., mask, :] = new.to(x.device, x.dtype)
        return out


def _unit_directions(sae, latents: torch.Tensor) -> torch.Tensor:
    """Each latent's decoder direction in the model's space, unit norm: [L] → [L, d_in].

    The difference of two decodes, so whatever the SAE's decoder adds besides the latents cancels.
    """
    parameter = next(sae.parameters())
    indices = latents.to(parameter.device)[:, None]
    one = sae.decode(SparseCode(indices, torch.ones(indices.shape, dtype=parameter.dtype, device=parameter.device)))
    zero = sae.decode(SparseCode(indices, torch.zeros(indices.shape, dtype=parameter.dtype, device=parameter.device)))
    direction = (one - zero).float()
    norms = direction.norm(dim=-1, keepdim=True)
    if not (norms > 0).all():
        raise ValueError(f"Latents {latents[(norms[:, 0] == 0).cpu()].tolist()} have a zero decoder vector; steer others.")
    return direction / norms


class Steering(Intervention):
    """Adds Σ strength × the latent's unit decoder direction (see `steer`)."""

    def __init__(self, model, sae, strengths: Mapping, *, relative: bool = False, positions: Positions = None,
                 hook_point: str | None = None):
        super().__init__(model, sae, positions=positions, hook_point=hook_point)
        self.latents, self.strengths = _latent_values(sae, strengths, "strength")
        self.relative = relative
        with torch.no_grad():
            self.vector = (self.strengths[:, None] * _unit_directions(sae, self.latents).cpu()).sum(0)

    def describe(self) -> str:
        return f"steer({dict(zip(self.latents.tolist(), self.strengths.tolist()))}) at {self.hook_point}"

    def edit(self, x):
        vector = self.vector.to(x.device, x.dtype)
        return x + (x.norm(dim=-1, keepdim=True) * vector if self.relative else vector)


def _edited_by_code(sae, x: torch.Tensor, edit_code) -> torch.Tensor:
    """x + decode(edit_code(code)) − decode(code): the SAE's error term kept, only the edited latents changed.

    Rows whose code `edit_code` leaves unchanged come back exactly as they were.
    """
    code = sae.encode(x)
    edited = edit_code(code)
    if edited is None:
        return x
    return x + (sae.decode(edited) - sae.decode(code))


class Ablation(Intervention):
    """Zeroes latents in the SAE's code, keeping its error term (see `ablate`)."""

    def __init__(self, model, sae, latents: Sequence[int], *, positions: Positions = None,
                 hook_point: str | None = None):
        super().__init__(model, sae, positions=positions, hook_point=hook_point)
        latents = [latents] if isinstance(latents, int) else list(latents)
        if not latents:
            raise ValueError("Name at least one latent to ablate, e.g. [123].")
        self.latents = torch.tensor([_latent(sae, latent) for latent in latents])

    def describe(self) -> str:
        return f"ablate({self.latents.tolist()}) at {self.hook_point}"

    def edit(self, x):
        def zeroed(code: SparseCode) -> SparseCode | None:
            hit = torch.isin(code.indices, self.latents.to(code.indices.device)) & (code.values != 0)
            if not hit.any():
                return None
            return dataclasses.replace(code, values=code.values.masked_fill(hit, 0))

        return _edited_by_code(self.sae, x, zeroed)


class Clamping(Intervention):
    """Sets latents to fixed values in the SAE's code, keeping its error term (see `clamp`)."""

    def __init__(self, model, sae, values: Mapping, *, positions: Positions = None, hook_point: str | None = None):
        super().__init__(model, sae, positions=positions, hook_point=hook_point)
        self.latents, self.values = _latent_values(sae, values, "value")

    def describe(self) -> str:
        return f"clamp({dict(zip(self.latents.tolist(), self.values.tolist()))}) at {self.hook_point}"

    def edit(self, x):
        def clamped(code: SparseCode) -> SparseCode:
            latents = self.latents.to(code.indices.device)
            rows = code.indices.shape[0]
            # The named latents leave the top-k columns and come back as extra columns holding their values.
            values = code.values.masked_fill(torch.isin(code.indices, latents), 0)
            extra = self.values.to(code.values.device, code.values.dtype).expand(rows, -1)
            return dataclasses.replace(
                code,
                indices=torch.cat([code.indices, latents.expand(rows, -1)], dim=-1),
                values=torch.cat([values, extra], dim=-1),
            )

        return _edited_by_code(self.sae, x, clamped)


class Splicing(Intervention):
    """Replaces the activation by the SAE's reconstruction (see `splice`)."""

    def describe(self) -> str:
        return f"splice at {self.hook_point}"

    def edit(self, x):
        return self.sae.decode(self.sae.encode(x))


def steer(model, sae, strengths: Mapping, *, relative: bool = False, positions: Positions = None,
          hook_point: str | None = None) -> Steering:
    """While active, add Σ strength × the latent's unit decoder direction to the activation at the hook point.

    strengths: {latent: strength}. With `relative=True` a strength is a multiple of each token's
    activation norm ‖x‖ (0.5: half the residual's length) instead of an absolute length.

    Example:
        >>> with hfsae.steer(model, sae, {123: 8.0}):
        ...     out = model.generate(input_ids, max_new_tokens=20)
    """
    return Steering(model, sae, strengths, relative=relative, positions=positions, hook_point=hook_point)


def ablate(model, sae, latents: int | Sequence[int], *, positions: Positions = None,
           hook_point: str | None = None) -> Ablation:
    """While active, zero latents in the SAE's code of the activation, keeping the SAE's error term:
    x becomes x − Σ value × decoder contribution of each named latent that fired, nothing else.

    Example:
        >>> with hfsae.ablate(model, sae, [123, 456]):
        ...     logits = model(input_ids).logits
    """
    return Ablation(model, sae, latents, positions=positions, hook_point=hook_point)


def clamp(model, sae, values: Mapping, *, positions: Positions = None, hook_point: str | None = None) -> Clamping:
    """While active, set latents to fixed values in the SAE's code (whether they fired or not), keeping the
    SAE's error term. values: {latent: value}.

    Example:
        >>> with hfsae.clamp(model, sae, {123: 10.0}):
        ...     out = model.generate(input_ids, max_new_tokens=20)
    """
    return Clamping(model, sae, values, positions=positions, hook_point=hook_point)


def splice(model, sae, *, positions: Positions = None, hook_point: str | None = None) -> Splicing:
    """While active, replace the activation at the hook point by the SAE's reconstruction decode(encode(x)).

    Example:
        >>> with hfsae.splice(model, sae):
        ...     logits = model(input_ids).logits
    """
    return Splicing(model, sae, positions=positions, hook_point=hook_point)


# ---- reading features -----------------------------------------------------------------------------


@dataclass
class TokenFeatures:
    """One text's latents: each token's top latents by value, and optionally the dense code."""

    tokens: list[str]
    input_ids: torch.Tensor  # [seq]
    indices: torch.Tensor  # [seq, top] latents, strongest first
    values: torch.Tensor  # [seq, top] their activations
    dense: torch.Tensor | None = None  # [seq, n_latents] when asked for


def _batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int | None):
    """(input_ids [batch, seq], attention_mask, lengths) per batch, right-padded (the causal positions
    before the padding see no difference)."""
    encoded = [tokenizer(text)["input_ids"][:max_length] for text in texts]
    if any(not ids for ids in encoded):
        raise ValueError("A text tokenizes to no tokens; pass non-empty texts.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        longest = max(len(ids) for ids in chunk)
        ids = torch.tensor([row + [pad] * (longest - len(row)) for row in chunk])
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in chunk])
        yield ids, mask, [len(row) for row in chunk]


@torch.no_grad()
def features(sae, model, tokenizer, texts: str | Sequence[str], *, top: int | None = None, dense: bool = False,
             batch_size: int = 8, max_length: int | None = None, hook_point: str | None = None):
    """Each token's top latents with their values, for texts run through `model` in batches.

    `sae` is one SAE, or a sequence of SAEs read in the same forward pass (each at its own hook
    point); the result is a list of TokenFeatures per text, or one such list per SAE. `top` keeps the
    strongest latents of each token (default: all k); `dense=True` adds the [seq, n_latents] code.

    Example:
        >>> (feats,) = hfsae.features(sae, model, tokenizer, ["The cat sat"])
        >>> feats.tokens, feats.indices[:, 0]        # each token's strongest latent
    """
    saes = list(sae) if isinstance(sae, (list, tuple)) else [sae]
    texts = [texts] if isinstance(texts, str) else list(texts)
    if hook_point is not None and len(saes) > 1:
        raise ValueError("hook_point= overrides one SAE's hook point; with several, each reads its config's.")
    points = [_hook_point(one, hook_point) for one in saes]
    device = next(model.parameters()).device
    results: list[list[TokenFeatures]] = [[] for _ in saes]
    for ids, mask, lengths in _batches(tokenizer, texts, batch_size, max_length):
        captured = capture(model, ids.to(device), list(dict.fromkeys(points)), attention_mask=mask.to(device))
        for one, point, out in zip(saes, points, results):
            parameter = next(one.parameters())
            code = one.encode(captured[point].to(parameter.device, parameter.dtype))
            values, order = code.values.float().sort(dim=-1, descending=True)
            indices = code.indices.gather(-1, order)
            full = code.to_dense(one.config.n_latents).float() if dense else None
            for row, length in enumerate(lengths):
                kept = ids[row, :length]
                out.append(TokenFeatures(
                    tokens=[tokenizer.decode([i]) for i in kept.tolist()],
                    input_ids=kept,
                    indices=indices[row, :length, :top].cpu(),
                    values=values[row, :length, :top].cpu(),
                    dense=None if full is None else full[row, :length].cpu(),
                ))
    return results if isinstance(sae, (list, tuple)) else results[0]


# ---- measuring steering ---------------------------------------------------------------------------


@dataclass
class SteeringPoint:
    """What steering at one strength does (means over tokens; KL and ΔCE in nats per token)."""

    strength: float
    activation: float
    """The latent's mean activation on the generated tokens, read at the hook point while steering."""
    text_activation: float
    """The latent's mean activation on the same generated tokens read without steering: does the text itself carry it?"""
    kl: float
    """KL(unsteered ‖ steered) of the next-token distributions on the held-out text."""
    delta_ce: float
    """Cross-entropy on the held-out text, steered minus unsteered."""
    continuations: list[str]


@dataclass
class SteeringSweep:
    """steering_sweep's result: one SteeringPoint per strength."""

    latent: int
    hook_point: str
    relative: bool
    points: list[SteeringPoint]
    ce_clean: float
    n_generated: int
    n_heldout: int

    HEADERS = ("strength", "activation (steered)", "activation (text)", "KL", "ΔCE")

    def rows(self) -> list[list[float]]:
        """[strength, activation, text activation, KL, ΔCE] per strength, rounded for display."""
        return [
            [point.strength, *(round(value, 4) for value in (point.activation, point.text_activation, point.kl,
                                                             point.delta_ce))]
            for point in self.points
        ]


def _latent_mean(sae, activations: torch.Tensor, latent: int, start: int) -> tuple[float, int]:
    """(sum of the latent's values over positions start…, their count) for activations [1, seq, d]."""
    parameter = next(sae.parameters())
    code = sae.encode(activations[0, start:].to(parameter.device, parameter.dtype))
    return float((code.values.float() * (code.indices == latent)).sum()), code.values.shape[0]


def _generate(model, tokenizer, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                          do_sample=False, pad_token_id=pad)


def _heldout_ids(tokenizer, heldout: Sequence[str] | None, device) -> list[torch.Tensor]:
    if heldout is None:
        from .activations import builtin_texts

        heldout = builtin_texts()[-HELDOUT_TEXTS:]
    ids = [tokenizer(text, return_tensors="pt")["input_ids"][:, :HELDOUT_TOKENS].to(device) for text in heldout]
    ids = [row for row in ids if row.shape[1] >= 2 + FIRST_POSITION_USED]
    if not ids:
        raise ValueError(f"The held-out text needs at least {2 + FIRST_POSITION_USED} tokens; pass longer texts.")
    return ids


def _generation_effect(model, sae, tokenizer, prompt_ids, steering, latent, max_new_tokens):
    """(continuations, steered activation sum, text activation sum, generated tokens) over the prompts."""
    continuations, steered_sum, text_sum, count = [], 0.0, 0.0, 0
    for ids in prompt_ids:
        with steering:
            generated = _generate(model, tokenizer, ids, max_new_tokens)
            steered = capture(model, generated, steering.hook_point)[steering.hook_point]
        plain = capture(model, generated, steering.hook_point)[steering.hook_point]
        start = ids.shape[1]
        continuations.append(tokenizer.decode(generated[0, start:], skip_special_tokens=True))
        if generated.shape[1] > start:
            steered_total, n = _latent_mean(sae, steered, latent, start)
            text_total, _ = _latent_mean(sae, plain, latent, start)
            steered_sum, text_sum, count = steered_sum + steered_total, text_sum + text_total, count + n
    return continuations, steered_sum, text_sum, count


@torch.no_grad()
def steering_sweep(model, sae, tokenizer, latent: int, strengths: Sequence[float], *, prompts: Sequence[str],
                   heldout: Sequence[str] | None = None, relative: bool = False, max_new_tokens: int = 32,
                   positions: Positions = None, hook_point: str | None = None) -> SteeringSweep:
    """Steer `latent` at each strength and measure it: the latent's mean activation on greedy
    continuations of the prompts (while steering, and re-read without), and KL and ΔCE to the
    unsteered model on held-out text (default: the built-in corpus's last texts).

    Example:
        >>> sweep = hfsae.steering_sweep(model, sae, tokenizer, 123, [0, 4, 8, 16], prompts=["I think"])
        >>> sweep.rows()      # [strength, activation (steered), activation (text), KL, ΔCE]
    """
    latent = _latent(sae, latent)
    strengths = [float(strength) for strength in strengths]
    if not strengths or not all(math.isfinite(strength) for strength in strengths):
        raise ValueError(f"Give one or more finite strengths; got {strengths!r}.")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    device = next(model.parameters()).device
    prompt_ids = [tokenizer(prompt, return_tensors="pt")["input_ids"].to(device) for prompt in prompts]
    if not prompt_ids or any(ids.shape[1] == 0 for ids in prompt_ids):
        raise ValueError("Give at least one non-empty prompt to generate from.")
    heldout_ids = _heldout_ids(tokenizer, heldout, device)
    clean = [model(input_ids=ids, use_cache=False).logits for ids in heldout_ids]
    n_heldout = sum(ids.shape[1] - 1 - FIRST_POSITION_USED for ids in heldout_ids)
    ce_clean = sum(float(next_token_ce(logits, ids)[:, FIRST_POSITION_USED:].sum())
                   for logits, ids in zip(clean, heldout_ids)) / n_heldout
    points = []
    for strength in strengths:
        steering = steer(model, sae, {latent: strength}, relative=relative, positions=positions, hook_point=hook_point)
        continuations, steered_sum, text_sum, count = _generation_effect(
            model, sae, tokenizer, prompt_ids, steering, latent, max_new_tokens
        )
        kl = ce = 0.0
        with steering:
            for logits, ids in zip(clean, heldout_ids):
                steered = model(input_ids=ids, use_cache=False).logits
                kl += float(kl_per_token(logits, steered)[:, FIRST_POSITION_USED:-1].sum())
                ce += float(next_token_ce(steered, ids)[:, FIRST_POSITION_USED:].sum())
        points.append(SteeringPoint(
            strength=strength, activation=steered_sum / max(count, 1), text_activation=text_sum / max(count, 1),
            kl=kl / n_heldout, delta_ce=ce / n_heldout - ce_clean, continuations=continuations,
        ))
    return SteeringSweep(latent=latent, hook_point=steering.hook_point, relative=relative, points=points,
                         ce_clean=ce_clean, n_generated=count, n_heldout=n_heldout)


def plot_sweep(sweep: SteeringSweep, path: str | Path) -> Path:
    """Save a figure of a sweep against strength: the latent's activation, KL and ΔCE; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strengths = [point.strength for point in sweep.points]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5), constrained_layout=True)
    axes[0].plot(strengths, [p.activation for p in sweep.points], "o-", label="while steering")
    axes[0].plot(strengths, [p.text_activation for p in sweep.points], "s--", label="generated text, unsteered")
    axes[0].set(title=f"latent {sweep.latent}: mean activation", xlabel="strength")
    axes[0].legend()
    axes[1].plot(strengths, [p.kl for p in sweep.points], "o-")
    axes[1].set(title="KL(unsteered ‖ steered), held-out", xlabel="strength", ylabel="nats/token")
    axes[2].plot(strengths, [p.delta_ce for p in sweep.points], "o-")
    axes[2].set(title="ΔCE, held-out", xlabel="strength", ylabel="nats/token")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
