"""The explorer's state and core reads: one SAE, its language model, its analysis dataset, and Steer.

`Explorer` holds what the app (hfsae.space) shows and the reads every view shares: it checks a
latent, tokenizes a request, encodes it at the hook point, averages codes over texts for Compare,
and keeps the search index built at load. Steer is a method here: it generates with the shared model
under the explorer's lock. The other views (Text, Latent, Search, Compare, Overview) are functions
of an Explorer in hfsae.explorer_views.

`Explorer.load` takes the SAE by registry name, Hub repo id or folder, and reads what lies beside
it (eval_results.json, training_metrics.json, n2g_explanations.json) from the same place: the
folder, or the Hub repo by hf_hub_download. The analysis is a folder or a Hub dataset repo.

A request costs bounded work whatever it sends: text is cut to MAX_TEXT_CHARS characters before
it is tokenized, then to MAX_TEXT_TOKENS tokens, and search reads an index built once at load.
"""

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import HfsaeError
from .analysis import SUMMARY_FILE, load_analysis
from .folder import ANALYSIS_DIR, EVAL_RESULTS_FILE, N2G_FILE, TRAINING_METRICS_FILE, read_json
from .activations.positions import FIRST_POSITION_USED
from .modeling import SparseCode, TopKSAE

MAX_TEXT_TOKENS = 256  # longer text is cut here, with a message: the views stay readable and fast
# Text is cut to this many characters before tokenizing, so a huge request costs no more than this:
# 64 characters per token is far above any tokenizer's average (about 4 for English and code).
MAX_TEXT_CHARS = 64 * MAX_TEXT_TOKENS
MAX_NEW_TOKENS = 64
MAX_COMPARE_TEXTS = 8  # per side of Compare, each cut like any text


class ExplorerError(HfsaeError, ValueError):
    """A request the explorer cannot answer (a latent out of range, an empty text)."""


# ---- loading -----------------------------------------------------------------------------------------


def display_name(sae_name_or_path) -> str:
    """How the app names an SAE: its registry name or Hub repo id, or a local folder's own name (never its path)."""
    if isinstance(sae_name_or_path, TopKSAE):
        sae_name_or_path = sae_name_or_path.name_or_path or "SAE"
    name = os.fspath(sae_name_or_path)
    return Path(name).resolve().name if Path(name).exists() else name


def _files_beside(sae_name_or_path) -> dict[str, dict | list | None]:
    """The SAE's metrics and N2G explanations, from its folder or its Hub repo (None when absent)."""
    names = (EVAL_RESULTS_FILE, TRAINING_METRICS_FILE, N2G_FILE)
    if isinstance(sae_name_or_path, TopKSAE):
        sae_name_or_path = sae_name_or_path.name_or_path or ""
    from .hub.source import resolve

    try:
        source = resolve(sae_name_or_path)
    except (LookupError, OSError):
        return dict.fromkeys(names)
    if source.local:
        folder = Path(source.location) / source.subfolder
        return {name: _read_json(folder / name) if (folder / name).is_file() else None for name in names}
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    found = {}
    for name in names:
        try:
            path = hf_hub_download(
                source.location, name, subfolder=source.subfolder or None, revision=source.revision
            )
        except (EntryNotFoundError, LocalEntryNotFoundError):
            found[name] = None
        else:
            found[name] = _read_json(path)
    return found


def _read_json(path) -> dict | list:
    """A metrics file (an object) or the N2G explanations (a list of objects)."""
    if Path(path).name != N2G_FILE:
        return read_json(path)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-create it with `hfsae eval`, or delete it.") from err


def _explanations_by_latent(raw) -> dict[int, dict]:
    """N2G explanations as {latent: {"precision", "recall", "patterns": [{"tokens", "activation"}]}}."""
    if raw is None:
        return {}
    if isinstance(raw, dict) and "explanations" in raw:
        raw = raw["explanations"]
    entries = raw.values() if isinstance(raw, dict) else raw
    return {int(entry["latent"]): entry for entry in entries if isinstance(entry, dict) and "latent" in entry}


def explanation_text(entry: dict | None) -> str:
    """An N2G explanation as one line of patterns, e.g. `def · * · (` | `return`; '' when there is none."""
    if not entry:
        return ""
    patterns = []
    for pattern in entry.get("patterns", []):
        tokens = pattern.get("tokens") or ["*" if t is None else f"<{t}>" for t in pattern.get("token_ids", [])]
        patterns.append(" · ".join(visible(token) for token in tokens))
    return " | ".join(dict.fromkeys(patterns))


def visible(token: str) -> str:
    """A token as display text: line breaks and tabs made visible so contexts stay on one line."""
    return token.replace("\n", "↵").replace("\t", "⇥")


# ---- the state and its reads --------------------------------------------------------------------------


@dataclass
class Explorer:
    """An SAE with its language model, its analysis rows, N2G explanations and metrics, and the reads of them."""

    sae: TopKSAE
    model: object
    tokenizer: object
    analysis: object | None = None  # datasets.Dataset, one row per latent (hfsae.analysis)
    analysis_settings: dict = field(default_factory=dict)
    explanations: dict[int, dict] = field(default_factory=dict)
    eval_results: dict | None = None
    training_metrics: dict | None = None
    name: str = "SAE"
    heldout_texts: list[str] | None = None  # the Steer tab's KL and ΔCE text; None: hfsae.steering_sweep's default
    # One forward at a time: a steering hook spliced into the shared model must never reach another
    # request's generation (the app serves requests from several threads).
    model_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        # What search reads, built once here rather than per query: the tokens at the peaks of each
        # latent's top contexts, its explanation as text, its density and maximum.
        self.token_index: dict[str, dict[int, int]] = {}
        self.explanation_texts = {latent: explanation_text(entry) for latent, entry in self.explanations.items()}
        self.explanation_keys = {latent: text.lower() for latent, text in self.explanation_texts.items()}
        self.density = self.max_activation = None
        if self.analysis is not None:
            table = self.analysis.data.table
            self.density = table.column("density").to_pylist()
            self.max_activation = table.column("max_activation").to_pylist()
            contexts, peaks = table.column("top_tokens").to_pylist(), table.column("top_peak").to_pylist()
            for latent, (windows, at) in enumerate(zip(contexts, peaks)):
                for tokens, peak in zip(windows, at):
                    counts = self.token_index.setdefault(tokens[peak].strip().lower(), {})
                    counts[latent] = counts.get(latent, 0) + 1

    @classmethod
    def load(cls, sae_name_or_path, analysis_path=None, *, model=None, tokenizer=None) -> "Explorer":
        """Load the SAE (a registry name, Hub repo or folder), its base model unless given, its metrics
        and N2G explanations (from the same folder or repo) and its analysis (a folder or dataset repo;
        default: the analysis/ folder beside a local SAE)."""
        if isinstance(sae_name_or_path, TopKSAE):
            sae = sae_name_or_path.eval()
        else:
            from .hub.loading import load

            sae = load(sae_name_or_path)
        if model is None or tokenizer is None:
            model, tokenizer = _load_base_model(sae)
        folder = Path(str(sae.name_or_path or ""))
        if analysis_path is None and sae.name_or_path and (folder / ANALYSIS_DIR).is_dir():
            analysis_path = folder / ANALYSIS_DIR
        analysis, settings = (None, {})
        if analysis_path is not None:
            analysis, settings = _load_analysis_anywhere(analysis_path)
            if len(analysis) != sae.config.n_latents:
                raise ValueError(
                    f"The analysis at {analysis_path} has {len(analysis)} latents but the SAE has "
                    f"{sae.config.n_latents}; run `hfsae analyze` for this SAE."
                )
        beside = _files_beside(sae_name_or_path)
        return cls(
            sae=sae,
            model=model.eval(),
            tokenizer=tokenizer,
            analysis=analysis,
            analysis_settings=settings,
            explanations=_explanations_by_latent(beside[N2G_FILE]),
            eval_results=beside[EVAL_RESULTS_FILE],
            training_metrics=beside[TRAINING_METRICS_FILE],
            name=display_name(sae_name_or_path),
        )

    # ---- the reads every view shares -----------------------------------------------------------------

    @property
    def n_latents(self) -> int:
        return self.sae.config.n_latents

    def check_latent(self, latent) -> int:
        """The latent as an int in range (numbers and text from the page both arrive here)."""
        text = "" if latent is None else str(latent).strip()
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number != int(number):
            raise ExplorerError(f"Choose a latent: a whole number in 0–{self.n_latents - 1}; got {text!r}.")
        latent = int(number)
        if not 0 <= latent < self.n_latents:
            raise ExplorerError(f"This SAE has {self.n_latents} latents (0–{self.n_latents - 1}); got latent {latent}.")
        return latent

    def tokenize(self, text: str) -> tuple[torch.Tensor, str]:
        """Token ids [1, seq] of text, cut at MAX_TEXT_TOKENS, and a message when it was cut.

        The text is cut to MAX_TEXT_CHARS characters first, so the tokenizer never sees more.
        """
        if not text or not text.strip():
            raise ExplorerError("Type some text first.")
        ids = self.tokenizer(text[:MAX_TEXT_CHARS], return_tensors="pt")["input_ids"]
        message = ""
        if ids.shape[1] > MAX_TEXT_TOKENS or len(text) > MAX_TEXT_CHARS:
            message = f"The text is longer than {MAX_TEXT_TOKENS} tokens; only the first {MAX_TEXT_TOKENS} are shown."
            ids = ids[:, :MAX_TEXT_TOKENS]
        return ids, message

    @torch.no_grad()
    def code_of(self, input_ids: torch.Tensor) -> SparseCode:
        """The SAE code [seq, k] of the activations at the hook point for input_ids [1, seq]."""
        from .activations.hook_points import capture

        hook_point = self.sae.config.hook_point
        with self.model_lock:
            activations = capture(self.model, input_ids, [hook_point])[hook_point][0]
        code = self.sae.encode(activations.to(self.sae.W_enc.device))
        return SparseCode(code.indices.cpu(), code.values.float().cpu())

    def token_strings(self, input_ids: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode([i]) for i in input_ids.view(-1).tolist()]

    def row(self, latent: int) -> dict | None:
        return None if self.analysis is None else self.analysis[latent]

    # ---- Steer ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def steer(self, prompt: str, latent, strength: float, max_new_tokens: int = 32):
        """(unsteered continuation, steered continuation, measured rows, message): greedy generation
        without and with strength × the latent's unit decoder direction added at the hook point
        (hfsae.steer), and `SteeringSweep.rows()` for strengths 0 and `strength`: the latent's mean
        activation on the generated tokens, and KL and ΔCE on the held-out text."""
        from .interventions import steering_sweep

        latent = self.check_latent(latent)
        strength = _finite(strength, "The strength")
        max_new_tokens = max(1, min(int(_finite(max_new_tokens, "The number of new tokens")), MAX_NEW_TOKENS))
        input_ids, message = self.tokenize(prompt)
        if message:  # a prompt cut to MAX_TEXT_TOKENS: generate from what is shown
            prompt = self.tokenizer.decode(input_ids[0])
        with self.model_lock:
            sweep = steering_sweep(
                self.model, self.sae, self.tokenizer, latent, [0.0, strength], prompts=[prompt],
                heldout=self.heldout_texts, max_new_tokens=max_new_tokens,
            )
        unsteered, steered = (point.continuations[0] for point in sweep.points)
        return unsteered, steered, sweep.rows(), message

    # ---- Compare's means (its table: hfsae.explorer_views.compare) -----------------------------------

    def mean_code(self, texts: str, side: str) -> tuple[torch.Tensor, int]:
        """Mean activation of every latent [n_latents] over the tokens of one side's texts, and their count."""
        parts = [part for part in (texts or "")[:MAX_TEXT_CHARS].split("\n\n") if part.strip()][:MAX_COMPARE_TEXTS]
        if not parts:
            raise ExplorerError(f"Type text {side} first (several texts: separate them with a blank line).")
        total, count = torch.zeros(self.n_latents), 0
        for part in parts:
            code = self.code_of(self.tokenize(part)[0])
            # Position 0 counts only in a one-token text: the SAE was never trained on it.
            start = FIRST_POSITION_USED if code.values.shape[0] > FIRST_POSITION_USED else 0
            total += code.to_dense(self.n_latents)[start:].sum(0)
            count += code.values.shape[0] - start
        return total / count, count


def _finite(value, what: str) -> float:
    """A number from the page as a float; inf, NaN or text is refused (a request may send any of them)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ExplorerError(f"{what} must be a finite number; got {value!r}.")
    return number


def _load_base_model(sae: TopKSAE):
    if sae.config.base_model is None:
        raise ExplorerError("The SAE's config names no base_model; pass model= and tokenizer= for the model it reads.")
    from .activations import load_language_model

    return load_language_model(sae.config.base_model, quiet=True)


def _load_analysis_anywhere(path):
    """A local analysis folder or parquet file, or a dataset repo on the Hub (as `hfsae analyze --push-to-hub` writes)."""
    if Path(path).exists():
        return load_analysis(path)
    from datasets import load_dataset
    from huggingface_hub import hf_hub_download

    from huggingface_hub.errors import EntryNotFoundError

    try:
        dataset = load_dataset(str(path), split="train")
    except Exception as err:  # datasets raises many types for a missing or offline repo
        raise FileNotFoundError(
            f"No analysis at {path}: neither a local folder nor a loadable dataset repo ({err})."
        ) from err
    try:
        settings = read_json(hf_hub_download(str(path), SUMMARY_FILE, repo_type="dataset"))
    except EntryNotFoundError:  # a dataset pushed without its settings file
        settings = {}
    return dataset, settings
