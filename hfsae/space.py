"""The explorer: a Gradio app over one SAE, its language model and its analysis dataset.

`build_app(sae)` returns a `gr.Blocks` with five tabs: Text (a text's tokens coloured by a
latent, and each token's top latents), Latent (one latent's statistics, contexts, logit effects
and N2G explanation), Search (latents by token or explanation), Steer (generation with a
latent's decoder direction added at the hook point) and Overview (the SAE's metrics).

`Explorer` holds the data and computes every view as plain Python values, so the views are
tested without a browser; `build_app` only lays out components and wires events to it. The app
makes no outbound calls: analytics are off and the default theme's fonts are served locally.
"""

import functools
import html
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .analysis import ANALYSIS_DIR, DEFAULT_SAE, load_analysis
from .modeling import FIRING_THRESHOLD, SparseCode, TopKSAE

MAX_TEXT_TOKENS = 256  # longer text is cut here, with a message: the views stay readable and fast
MAX_NEW_TOKENS = 64
TOP_LATENTS_PER_TOKEN = 3
EVAL_RESULTS_FILE = "eval_results.json"
TRAINING_METRICS_FILE = "training_metrics.json"
N2G_FILE = "n2g_explanations.json"
# Inline styles: Gradio 6 takes custom CSS only at launch(), and the contexts must look right however the app is served.
CONTEXT_STYLE = (
    "font-family: var(--font-mono); font-size: 0.9em; line-height: 1.9; white-space: nowrap; overflow-x: auto"
)
LABEL_STYLE = "color: var(--body-text-color-subdued); margin-right: 0.8em; display: inline-block; min-width: 6.5em"


class ExplorerError(ValueError):
    """A request the explorer cannot answer (a latent out of range, an empty text)."""


# ---- loading -----------------------------------------------------------------------------------------


def _load_sae(name_or_path: str | os.PathLike | TopKSAE) -> TopKSAE:
    if isinstance(name_or_path, TopKSAE):
        return name_or_path
    from .hub.loading import load

    return load(str(name_or_path))


def _sae_folder(sae: TopKSAE) -> Path | None:
    folder = Path(str(sae.name_or_path or ""))
    return folder if sae.name_or_path and folder.is_dir() else None


def _read_json(path: Path | None):
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); regenerate it or delete it.") from err


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
        patterns.append(" · ".join(_visible(token) for token in tokens))
    return " | ".join(dict.fromkeys(patterns))


def _visible(token: str) -> str:
    """A token as display text: line breaks and tabs made visible so contexts stay on one line."""
    return token.replace("\n", "↵").replace("\t", "⇥")


# ---- the data behind the views -----------------------------------------------------------------------


@dataclass
class Explorer:
    """An SAE with its language model, its analysis rows, N2G explanations and metrics, and every view of them."""

    sae: TopKSAE
    model: object
    tokenizer: object
    analysis: object | None = None  # datasets.Dataset, one row per latent (hfsae.analysis)
    analysis_settings: dict = field(default_factory=dict)
    explanations: dict[int, dict] = field(default_factory=dict)
    eval_results: dict | None = None
    training_metrics: dict | None = None
    name: str = "SAE"
    # One forward at a time: a steering hook spliced into the shared model must never reach another
    # request's generation (the app serves requests from several threads).
    model_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, sae_name_or_path, analysis_path=None, *, model=None, tokenizer=None) -> "Explorer":
        """Load the SAE (a name, Hub repo or folder), its base model unless given, and what lies beside it."""
        sae = _load_sae(sae_name_or_path).eval()
        if model is None or tokenizer is None:
            from .analysis import _load_base_model

            model, tokenizer = _load_base_model(sae)
        folder = _sae_folder(sae)
        if analysis_path is None and folder is not None and (folder / ANALYSIS_DIR).is_dir():
            analysis_path = folder / ANALYSIS_DIR
        analysis, settings = (None, {})
        if analysis_path is not None:
            analysis, settings = _load_analysis_anywhere(analysis_path)
            if len(analysis) != sae.config.n_latents:
                raise ValueError(
                    f"The analysis at {analysis_path} has {len(analysis)} latents but the SAE has "
                    f"{sae.config.n_latents}; run `hfsae analyze` for this SAE."
                )
        return cls(
            sae=sae,
            model=model.eval(),
            tokenizer=tokenizer,
            analysis=analysis,
            analysis_settings=settings,
            explanations=_explanations_by_latent(_read_json(folder / N2G_FILE if folder else None)),
            eval_results=_read_json(folder / EVAL_RESULTS_FILE if folder else None),
            training_metrics=_read_json(folder / TRAINING_METRICS_FILE if folder else None),
            name=str(sae_name_or_path if not isinstance(sae_name_or_path, TopKSAE) else sae.name_or_path or "SAE"),
        )

    # ---- shared helpers -----------------------------------------------------------------------------

    @property
    def n_latents(self) -> int:
        return self.sae.config.n_latents

    def check_latent(self, latent) -> int:
        """The latent as an int in range (numbers and text from the page both arrive here)."""
        text = "" if latent is None else str(latent).strip()
        try:
            latent = int(float(text))
        except ValueError:
            raise ExplorerError(f"Choose a latent: a whole number in 0–{self.n_latents - 1}; got {text!r}.") from None
        if not 0 <= latent < self.n_latents:
            raise ExplorerError(f"This SAE has {self.n_latents} latents (0–{self.n_latents - 1}); got latent {latent}.")
        return latent

    def tokenize(self, text: str) -> tuple[torch.Tensor, str]:
        """Token ids [1, seq] of text, cut at MAX_TEXT_TOKENS, and a message when it was cut."""
        if not text or not text.strip():
            raise ExplorerError("Type some text first.")
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        message = ""
        if ids.shape[1] > MAX_TEXT_TOKENS:
            message = f"The text has {ids.shape[1]} tokens; only the first {MAX_TEXT_TOKENS} are shown."
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

    # ---- Text --------------------------------------------------------------------------------------

    def text_view(self, text: str, latent=None):
        """(highlighted [(token, score in [0, 1])], the latent shown, per-token rows, message).

        Without a latent, the one with the largest activation in the text is shown. Each row is
        [position, token, then "latent (activation)" for the token's top latents].
        """
        input_ids, message = self.tokenize(text)
        code = self.code_of(input_ids)
        tokens = self.token_strings(input_ids)
        if latent is None or not str(latent).strip():
            latent = int(code.indices.view(-1)[code.values.view(-1).argmax()])
        latent = self.check_latent(latent)
        activations = (code.values * (code.indices == latent)).sum(-1)  # [seq]
        scale = max(float(activations.max()), self._max_activation(latent), FIRING_THRESHOLD)
        highlighted = [(token, round(float(a) / scale, 4)) for token, a in zip(tokens, activations)]
        rows = []
        for position, token in enumerate(tokens):
            order = code.values[position].argsort(descending=True)[:TOP_LATENTS_PER_TOKEN]
            cells = [
                f"{int(code.indices[position, j])} ({float(code.values[position, j]):.2f})"
                for j in order
                if code.values[position, j] > FIRING_THRESHOLD
            ]
            rows.append(
                [
                    position,
                    _visible(token),
                    *cells,
                    *[""] * (TOP_LATENTS_PER_TOKEN - len(cells)),
                ]
            )
        return highlighted, latent, rows, message

    def _max_activation(self, latent: int) -> float:
        row = self.row(latent)
        return float(row["max_activation"]) if row else 0.0

    # ---- Latent ------------------------------------------------------------------------------------

    def latent_view(self, latent):
        """(markdown summary, histogram rows [(bin, count)], top contexts HTML, random contexts HTML, logit rows)."""
        latent = self.check_latent(latent)
        row = self.row(latent)
        lines = [f"## Latent {latent}"]
        if row is None:
            lines.append("_No analysis dataset for this SAE: run `hfsae analyze` to see its statistics and contexts._")
        else:
            density = row["density"]
            every = f" (1 in {1 / density:,.0f} tokens)" if density > 0 else ""
            n_tokens = self.analysis_settings.get("n_tokens")
            lines.append(
                f"**Density** {density:.4%}{every} · **mean activation** {row['mean_activation']:.3f} · "
                f"**max activation** {row['max_activation']:.3f}" + (f" · over {n_tokens:,} tokens" if n_tokens else "")
            )
            if density == 0:
                lines.append("_This latent never fired in the analysed text (dead)._")
        explanation = self.explanations.get(latent)
        if explanation:
            precision, recall = explanation.get("precision"), explanation.get("recall")
            lines.append(
                f"**N2G explanation** `{explanation_text(explanation)}` · precision {_number(precision)} · "
                f"recall {_number(recall)}"
            )
        histogram = []
        if row is not None and row["density"] > 0:
            edges, counts = row["histogram_edges"], row["histogram_counts"]
            # The stored range reaches up to twice the maximum (it doubles as it streams): show the
            # bins up to the last one that holds a firing.
            shown = max(i for i, count in enumerate(counts) if count) + 1
            histogram = [
                (f"{(low + high) / 2:.4g}", count) for low, high, count in zip(edges[:shown], edges[1:], counts[:shown])
            ]
        top = self._contexts(row, "top", latent) if row else ""
        random = self._contexts(row, "random", latent) if row else ""
        return "\n\n".join(lines), histogram, top, random, self.logit_rows(latent, row)

    def _contexts(self, row: dict, prefix: str, latent: int) -> str:
        """Examples as HTML, one line each: a label, then the tokens shaded by activation / the latent's max."""
        scale = max(float(row["max_activation"]), FIRING_THRESHOLD)
        quantiles = row.get("random_quantiles") if prefix == "random" else None
        lines = []
        for number, (tokens, activations) in enumerate(
            zip(row[f"{prefix}_tokens"], row[f"{prefix}_token_activations"])
        ):
            label = f"{row[f'{prefix}_activations'][number]:.2f}"
            if quantiles:
                label += f" · q{quantiles[number]:.2f}"
            spans = "".join(
                f'<span class="token" style="white-space: pre; border-radius: 2px; background-color: '
                f'rgba(239, 68, 60, {min(a / scale, 1.0):.3f})" title="{a:.3f}">{html.escape(_visible(token))}</span>'
                for token, a in zip(tokens, activations)
            )
            lines.append(
                f'<div class="context" style="{CONTEXT_STYLE}"><span style="{LABEL_STYLE}">{label}</span>{spans}</div>'
            )
        if not lines:
            return "<p><em>No firing in the analysed text.</em></p>"
        return "".join(lines)

    @torch.no_grad()
    def logit_rows(self, latent: int, row: dict | None = None, n_tokens: int = 10) -> list[list]:
        """[promoted token, logit, suppressed token, logit] rows, from the analysis or computed now."""
        if row is not None and "promoted_tokens" in row:
            promoted, promoted_logits = row["promoted_tokens"], row["promoted_logits"]
            suppressed, suppressed_logits = (
                row["suppressed_tokens"],
                row["suppressed_logits"],
            )
        else:
            head = self.model.get_output_embeddings()
            if head is None or head.weight.shape[1] != self.sae.config.d_in:
                return []
            logits = head.weight.float() @ self.sae.W_dec[latent].float()
            top, bottom = logits.topk(n_tokens), logits.topk(n_tokens, largest=False)
            promoted, promoted_logits = (
                self.token_strings(top.indices),
                top.values.tolist(),
            )
            suppressed, suppressed_logits = (
                self.token_strings(bottom.indices),
                bottom.values.tolist(),
            )
        return [
            [_visible(p), round(pl, 3), _visible(s), round(sl, 3)]
            for p, pl, s, sl in zip(promoted, promoted_logits, suppressed, suppressed_logits)
        ]

    # ---- Search ------------------------------------------------------------------------------------

    def search(self, query: str, by: str = "token", limit: int = 50) -> list[list]:
        """Latents matching query: by "token" (the token at the peak of their top contexts) or by
        "explanation" (N2G explanation text). Rows [latent, density, max activation, matches, explanation]."""
        query = (query or "").strip()
        if not query:
            raise ExplorerError("Type a token or a piece of explanation to search for.")
        if by not in ("token", "explanation"):
            raise ExplorerError(f"Search by 'token' or 'explanation'; got {by!r}.")
        matches: dict[int, int] = {}
        if by == "token":
            if self.analysis is None:
                raise ExplorerError("Searching by token needs the analysis dataset: run `hfsae analyze`.")
            wanted = query.lower()
            for latent, (contexts, peaks) in enumerate(zip(self.analysis["top_tokens"], self.analysis["top_peak"])):
                count = sum(tokens[peak].strip().lower() == wanted for tokens, peak in zip(contexts, peaks))
                if count:
                    matches[latent] = count
        else:
            wanted = query.lower()
            for latent, entry in self.explanations.items():
                if wanted in explanation_text(entry).lower():
                    matches[latent] = 1
        rows = []
        for latent, count in matches.items():
            row = self.row(latent)
            density = row["density"] if row else None
            maximum = row["max_activation"] if row else None
            rows.append(
                [
                    latent,
                    density,
                    maximum,
                    count,
                    explanation_text(self.explanations.get(latent)),
                ]
            )
        rows.sort(key=lambda r: (-r[3], -(r[2] or 0.0)))
        return [[r[0], _number(r[1], ".3%"), _number(r[2]), r[3], r[4]] for r in rows[:limit]]

    # ---- Steer -------------------------------------------------------------------------------------

    @torch.no_grad()
    def steer(self, prompt: str, latent, strength: float, max_new_tokens: int = 32) -> tuple[str, str, str]:
        """(unsteered continuation, steered continuation, message): greedy generation with and without
        strength × the latent's decoder direction added at the hook point at every position."""
        from .activations.hook_points import splice

        latent = self.check_latent(latent)
        input_ids, message = self.tokenize(prompt)
        max_new_tokens = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS))

        def add_direction(activation: torch.Tensor) -> torch.Tensor:
            # Decoding undoes the SAE's input normalisation, so the direction is scaled as the SAE
            # would scale it for these activations: the difference of two decodes that differ
            # only in this latent's value.
            code = self.sae.encode(activation.to(self.sae.W_enc.device))
            only = code.indices[..., :1].clone().fill_(latent)
            with_latent = SparseCode(
                only,
                torch.full_like(only, float(strength), dtype=code.values.dtype),
                code.input_mean,
                code.input_scale,
            )
            without = SparseCode(
                only,
                torch.zeros_like(with_latent.values),
                code.input_mean,
                code.input_scale,
            )
            direction = self.sae.decode(with_latent) - self.sae.decode(without)
            return activation + direction.to(activation.dtype)

        with self.model_lock:
            unsteered = self._generate(input_ids, max_new_tokens)
            with splice(self.model, self.sae.config.hook_point, add_direction):
                steered = self._generate(input_ids, max_new_tokens)
        return unsteered, steered, message

    def _generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> str:
        output = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        return self.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)

    # ---- Overview ----------------------------------------------------------------------------------

    def overview(self) -> str:
        """Markdown: what the SAE is, its metrics (eval_results.json, training_metrics.json) and the analysis."""
        config = self.sae.config
        sections = [
            f"## {self.name}",
            (
                f"TopK SAE with **{config.n_latents:,} latents**, **k = {config.k}**, reading `{config.hook_point}` "
                f"of `{config.base_model}` (d_in {config.d_in}, normalize `{config.normalize}`)."
            ),
        ]
        for title, metrics in (
            ("Evaluation", self.eval_results),
            ("Training", self.training_metrics),
        ):
            if metrics:
                rows = "\n".join(f"| {name} | {_number(value)} |" for name, value in _flatten(metrics).items())
                sections.append(f"### {title}\n\n| metric | value |\n|---|---|\n{rows}")
        if not (self.eval_results or self.training_metrics):
            sections.append("_No eval_results.json or training_metrics.json beside this SAE: run `hfsae eval`._")
        if self.analysis is not None:
            density = torch.tensor(self.analysis["density"])
            n_tokens = self.analysis_settings.get("n_tokens")
            sections.append(
                "### Analysis\n\n"
                + (f"{n_tokens:,} tokens analysed · " if isinstance(n_tokens, int) else "")
                + f"dead latents {float((density == 0).float().mean()):.2%} · "
                f"median density {float(density.median()):.4%}"
            )
        return "\n\n".join(sections)


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _number(value, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) and spec == ".4g":
        return f"{value:,}"  # counts (tokens, steps) read best whole
    return format(value, spec)


def _load_analysis_anywhere(path):
    """A local analysis folder or parquet file, or a dataset repo on the Hub."""
    if Path(path).exists():
        return load_analysis(path)
    from datasets import load_dataset

    try:
        return load_dataset(str(path), split="train"), {}
    except Exception as err:  # datasets raises many types for a missing or offline repo
        raise FileNotFoundError(
            f"No analysis at {path}: neither a local folder nor a loadable dataset repo ({err})."
        ) from err


# ---- the app -----------------------------------------------------------------------------------------


def build_app(sae_name_or_path="builtin", analysis_path=None, *, model=None, tokenizer=None):
    """The explorer as a `gr.Blocks` for an SAE (name, Hub repo, folder or TopKSAE) and its analysis.

    Example:
        >>> build_app("path/to/sae").launch()
    """
    explorer = (
        sae_name_or_path
        if isinstance(sae_name_or_path, Explorer)
        else Explorer.load(sae_name_or_path, analysis_path, model=model, tokenizer=tokenizer)
    )
    return _blocks(explorer)


def _blocks(explorer: Explorer):
    # Gradio reads these when it is imported: no usage statistics, no update check, nothing leaves
    # the machine. (This module does not import gradio at the top, so that `hfsae --help` and the
    # views work without the [space] extra; the SelectData annotations below need this module not
    # to use postponed annotations, since `gr` exists only in this function.)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError("The explorer needs gradio: pip install 'hfsae[space]'.") from err

    def shown(fn):
        """Run a view; a user error becomes a visible message instead of a stack trace."""

        # wraps keeps fn's signature visible: Gradio injects SelectData by its annotation.
        @functools.wraps(fn)
        def wrapped(*args):
            try:
                return fn(*args)
            except ExplorerError as err:
                raise gr.Error(str(err)) from err

        return wrapped

    def open_latent(latent):
        summary, histogram, top, random, logits = explorer.latent_view(latent)
        return (
            gr.Tabs(selected="latent"),
            int(latent),
            summary,
            # Bin labels are categories: without an explicit order the plot sorts them as strings.
            gr.BarPlot(value=_histogram_frame(histogram), sort=[label for label, _ in histogram] or None),
            top,
            random,
            logits,
        )

    # The default theme serves its fonts from the app itself (no Google Fonts request).
    with gr.Blocks(title=f"hfsae explorer: {explorer.name}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# hfsae explorer\n{explorer.name}: {explorer.n_latents:,} latents at `{explorer.sae.config.hook_point}`"
        )
        with gr.Tabs() as tabs:
            with gr.Tab("Text", id="text"):
                text_in = gr.Textbox(
                    label="Text",
                    lines=3,
                    placeholder="Type text to see which latents fire",
                    elem_id="text-input",
                )
                with gr.Row():
                    # A textbox, not a Number: empty must stay empty (the strongest latent), not become 0.
                    text_latent = gr.Textbox(
                        label="Latent (empty: the strongest in this text)",
                        value="",
                        elem_id="text-latent",
                    )
                    text_button = gr.Button("Show activations", variant="primary", elem_id="text-button")
                text_message = gr.Markdown(elem_id="text-message")
                text_tokens = gr.HighlightedText(
                    label="Tokens coloured by the latent's activation",
                    elem_id="text-tokens",
                    show_legend=False,
                    combine_adjacent=False,
                )
                text_table = gr.Dataframe(
                    headers=[
                        "position",
                        "token",
                        *[f"latent {i + 1}" for i in range(TOP_LATENTS_PER_TOKEN)],
                    ],
                    label="Each token's top latents: click a latent to open it",
                    interactive=False,
                    elem_id="text-table",
                )
            with gr.Tab("Latent", id="latent"):
                with gr.Row():
                    latent_in = gr.Number(
                        label=f"Latent (0–{explorer.n_latents - 1})",
                        precision=0,
                        value=0,
                        elem_id="latent-input",
                    )
                    latent_button = gr.Button("Open", variant="primary", elem_id="latent-button")
                latent_summary = gr.Markdown(elem_id="latent-summary")
                latent_histogram = gr.BarPlot(
                    x="activation",
                    y="count",
                    title="Activation histogram (firing tokens)",
                    elem_id="latent-histogram",
                    sort=None,
                )
                gr.Markdown("**Top activating contexts** (activation at the shaded peak)")
                latent_top = gr.HTML(elem_id="latent-top")
                gr.Markdown("**Random activating contexts** (activation · quantile among the latent's firings)")
                latent_random = gr.HTML(elem_id="latent-random")
                latent_logits = gr.Dataframe(
                    headers=["promoted", "logit", "suppressed", "logit"],
                    interactive=False,
                    label="Logit effects (decoder direction through the unembedding)",
                    elem_id="latent-logits",
                )
            with gr.Tab("Search", id="search"):
                with gr.Row():
                    search_in = gr.Textbox(label="Token or explanation text", elem_id="search-input")
                    search_by = gr.Radio(["token", "explanation"], value="token", label="Search by")
                    search_button = gr.Button("Search", variant="primary", elem_id="search-button")
                search_table = gr.Dataframe(
                    headers=[
                        "latent",
                        "density",
                        "max activation",
                        "matches",
                        "explanation",
                    ],
                    interactive=False,
                    label="Latents: click one to open it",
                    elem_id="search-table",
                )
            with gr.Tab("Steer", id="steer"):
                steer_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="steer-prompt")
                with gr.Row():
                    steer_latent = gr.Number(label="Latent", precision=0, value=0, elem_id="steer-latent")
                    steer_strength = gr.Slider(
                        -100,
                        100,
                        value=10,
                        step=0.5,
                        label="Strength (added × decoder direction)",
                    )
                    steer_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=24, step=1, label="New tokens")
                steer_button = gr.Button("Generate", variant="primary", elem_id="steer-button")
                steer_message = gr.Markdown()
                with gr.Row():
                    steer_plain = gr.Textbox(label="Unsteered", lines=6, elem_id="steer-plain")
                    steer_steered = gr.Textbox(label="Steered", lines=6, elem_id="steer-steered")
            with gr.Tab("Overview", id="overview"):
                gr.Markdown(explorer.overview(), elem_id="overview")

        latent_outputs = [
            tabs,
            latent_in,
            latent_summary,
            latent_histogram,
            latent_top,
            latent_random,
            latent_logits,
        ]

        def show_text(text, latent):
            highlighted, shown_latent, rows, message = explorer.text_view(text, latent)
            strongest = " (the strongest in this text)" if not str(latent or "").strip() else ""
            message = f"Colouring by **latent {shown_latent}**{strongest}. {message}".strip()
            return highlighted, rows, message

        text_inputs, text_outputs = (
            [text_in, text_latent],
            [text_tokens, text_table, text_message],
        )
        text_button.click(shown(show_text), text_inputs, text_outputs, api_name="text")
        text_in.submit(shown(show_text), text_inputs, text_outputs, api_name=False)

        def open_from_table(evt: gr.SelectData):
            latent = _latent_in_cell(evt.value)
            if latent is None and evt.row_value:
                # A click on the position or token opens the token's strongest latent.
                latent = next(
                    (_latent_in_cell(cell) for cell in evt.row_value[2:] if _latent_in_cell(cell) is not None),
                    None,
                )
            if latent is None:
                return [gr.skip()] * len(latent_outputs)
            return open_latent(latent)

        text_table.select(shown(open_from_table), None, latent_outputs, api_name=False)
        latent_button.click(shown(open_latent), [latent_in], latent_outputs, api_name="latent")
        latent_in.submit(shown(open_latent), [latent_in], latent_outputs, api_name=False)

        search_button.click(
            shown(explorer.search),
            [search_in, search_by],
            [search_table],
            api_name="search",
        )
        search_in.submit(
            shown(explorer.search),
            [search_in, search_by],
            [search_table],
            api_name=False,
        )

        def open_from_search(evt: gr.SelectData):
            if not evt.row_value:
                return [gr.skip()] * len(latent_outputs)
            return open_latent(int(evt.row_value[0]))

        search_table.select(shown(open_from_search), None, latent_outputs, api_name=False)
        steer_button.click(
            shown(explorer.steer),
            [steer_prompt, steer_latent, steer_strength, steer_tokens],
            [steer_plain, steer_steered, steer_message],
            api_name="steer",
        )
    return demo


def _latent_in_cell(cell) -> int | None:
    """The latent in a table cell like "123 (4.56)", or None."""
    text = str(cell).strip()
    head = text.split(" ", 1)[0]
    return int(head) if head.isdigit() and "(" in text else None


def _histogram_frame(histogram):
    import pandas as pd

    return pd.DataFrame(histogram, columns=["activation", "count"])


def launch(
    sae_name_or_path="builtin",
    analysis_path=None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    **launch_kwargs,
):
    """Build the explorer and serve it (blocks until interrupted unless prevent_thread_lock=True)."""
    demo = build_app(sae_name_or_path, analysis_path)
    demo.launch(server_name=host, server_port=port, share=share, **launch_kwargs)
    return demo


# ---- the `hfsae space` command -----------------------------------------------------------------------


@dataclass
class SpaceArgs:
    """Options of `hfsae space`."""

    sae: str = field(
        default=DEFAULT_SAE,
        metadata={"help": "The SAE: a folder, Hub repo or registry name (default: the folder `hfsae train` writes)."},
    )
    analysis: str | None = field(
        default=None,
        metadata={"help": "Its analysis: a folder or Hub dataset repo (default: <SAE folder>/analysis)."},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on."})
    port: int | None = field(
        default=None,
        metadata={"help": "Port to serve on (default: Gradio's, 7860 or the next free one)."},
    )


def run_space(args: SpaceArgs):
    """`hfsae space`: serve the explorer until interrupted."""
    if args.sae == DEFAULT_SAE and not Path(DEFAULT_SAE).is_dir():
        raise FileNotFoundError(
            f"No SAE folder {DEFAULT_SAE!r} here: train the built-in default with `hfsae train`, or name one with --sae."
        )
    return launch(args.sae, args.analysis, host=args.host, port=args.port)
