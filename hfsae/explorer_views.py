"""The explorer's views: what each tab of the app shows, as plain Python values computed from an `Explorer`.

Each view is a function of the explorer (hfsae.explorer holds the SAE, model, analysis and the reads
of them), so the views are tested without a browser: Text (a text's tokens coloured by a latent,
and each token's top latents), Latent (one latent's statistics, contexts, logit effects and N2G
explanation), Search (latents by token or explanation), Compare (the latents that differ most
between two texts) and Overview (the SAE's metrics). Steer runs the model and lives on the
explorer itself (`Explorer.steer`).
"""

import html

import torch

from .configuration import ARCHITECTURES
from .explorer import Explorer, ExplorerError, explanation_text, visible
from .metric_table import METRICS
from .modeling import FIRING_THRESHOLD
from .nested import flatten

TOP_LATENTS_PER_TOKEN = 3
# Inline styles: Gradio 6 takes custom CSS only at launch(), and the contexts must look right however the app is served.
CONTEXT_STYLE = (
    "font-family: var(--font-mono); font-size: 0.9em; line-height: 1.9; white-space: nowrap; overflow-x: auto"
)
LABEL_STYLE = "color: var(--body-text-color-subdued); margin-right: 0.8em; display: inline-block; min-width: 6.5em"


def _number(value, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) and spec == ".4g":
        return f"{value:,}"  # counts (tokens, steps) read best whole
    return format(value, spec)


# ---- Text ----------------------------------------------------------------------------------------------


def text_view(explorer: Explorer, text: str, latent=None):
    """(highlighted [(token, score in [0, 1])], the latent shown, per-token rows, message).

    Without a latent, the one with the largest activation in the text is shown. Each row is
    [position, token, then "latent (activation)" for the token's top latents].
    """
    input_ids, message = explorer.tokenize(text)
    code = explorer.code_of(input_ids)
    tokens = explorer.token_strings(input_ids)
    if latent is None or not str(latent).strip():
        latent = int(code.indices.view(-1)[code.values.view(-1).argmax()])
    latent = explorer.check_latent(latent)
    activations = (code.values * (code.indices == latent)).sum(-1)  # [seq]
    row = explorer.row(latent)
    max_activation = float(row["max_activation"]) if row else 0.0
    scale = max(float(activations.max()), max_activation, FIRING_THRESHOLD)
    highlighted = [(token, round(float(a) / scale, 4)) for token, a in zip(tokens, activations)]
    rows = []
    for position, token in enumerate(tokens):
        order = code.values[position].argsort(descending=True)[:TOP_LATENTS_PER_TOKEN]
        cells = [
            f"{int(code.indices[position, j])} ({float(code.values[position, j]):.2f})"
            for j in order
            if code.values[position, j] > FIRING_THRESHOLD
        ]
        rows.append([position, visible(token), *cells, *[""] * (TOP_LATENTS_PER_TOKEN - len(cells))])
    return highlighted, latent, rows, message


# ---- Latent --------------------------------------------------------------------------------------------


def latent_view(explorer: Explorer, latent):
    """(markdown summary, histogram rows [(bin, count)], top contexts HTML, random contexts HTML, logit rows)."""
    latent = explorer.check_latent(latent)
    row = explorer.row(latent)
    lines = [f"## Latent {latent}"]
    if row is None:
        lines.append("_No analysis dataset for this SAE: run `hfsae analyze` to see its statistics and contexts._")
    else:
        density = row["density"]
        every = f" (1 in {1 / density:,.0f} tokens)" if density > 0 else ""
        n_tokens = explorer.analysis_settings.get("n_tokens")
        lines.append(
            f"**Density** {density:.4%}{every} · **mean activation** {row['mean_activation']:.3f} · "
            f"**max activation** {row['max_activation']:.3f}" + (f" · over {n_tokens:,} tokens" if n_tokens else "")
        )
        if density == 0:
            lines.append("_This latent never fired in the analysed text (dead)._")
    explanation = explorer.explanations.get(latent)
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
    top = _contexts(row, "top") if row else ""
    random = _contexts(row, "random") if row else ""
    return "\n\n".join(lines), histogram, top, random, logit_rows(explorer, latent, row)


def _contexts(row: dict, prefix: str) -> str:
    """Examples as HTML, one line each: a label, then the tokens shaded by activation / the latent's max."""
    scale = max(float(row["max_activation"]), FIRING_THRESHOLD)
    quantiles = row.get("random_quantiles") if prefix == "random" else None
    lines = []
    for number, (tokens, activations) in enumerate(zip(row[f"{prefix}_tokens"], row[f"{prefix}_token_activations"])):
        label = f"{row[f'{prefix}_activations'][number]:.2f}"
        if quantiles:
            label += f" · q{quantiles[number]:.2f}"
        spans = "".join(
            f'<span class="token" style="white-space: pre; border-radius: 2px; background-color: '
            f'rgba(239, 68, 60, {min(a / scale, 1.0):.3f})" title="{a:.3f}">{html.escape(visible(token))}</span>'
            for token, a in zip(tokens, activations)
        )
        lines.append(
            f'<div class="context" style="{CONTEXT_STYLE}"><span style="{LABEL_STYLE}">{label}</span>{spans}</div>'
        )
    if not lines:
        return "<p><em>No firing in the analysed text.</em></p>"
    return "".join(lines)


@torch.no_grad()
def logit_rows(explorer: Explorer, latent: int, row: dict | None = None, n_tokens: int = 10) -> list[list]:
    """[promoted token, logit, suppressed token, logit] rows, from the analysis or computed now."""
    if row is not None and "promoted_tokens" in row:
        promoted, promoted_logits = row["promoted_tokens"], row["promoted_logits"]
        suppressed, suppressed_logits = row["suppressed_tokens"], row["suppressed_logits"]
    else:
        head = explorer.model.get_output_embeddings()
        if head is None or head.weight.shape[1] != explorer.sae.config.d_in:
            return []
        logits = head.weight.float() @ explorer.sae.W_dec[latent].float()
        top, bottom = logits.topk(n_tokens), logits.topk(n_tokens, largest=False)
        promoted, promoted_logits = explorer.token_strings(top.indices), top.values.tolist()
        suppressed, suppressed_logits = explorer.token_strings(bottom.indices), bottom.values.tolist()
    return [
        [visible(p), round(pl, 3), visible(s), round(sl, 3)]
        for p, pl, s, sl in zip(promoted, promoted_logits, suppressed, suppressed_logits)
    ]


# ---- Search --------------------------------------------------------------------------------------------


def search(explorer: Explorer, query: str, by: str = "token", limit: int = 50) -> list[list]:
    """Latents matching query: by "token" (the token at the peak of their top contexts) or by
    "explanation" (N2G explanation text). Rows [latent, density, max activation, matches, explanation]."""
    query = (query or "").strip()
    if not query:
        raise ExplorerError("Type a token or a piece of explanation to search for.")
    if by not in ("token", "explanation"):
        raise ExplorerError(f"Search by 'token' or 'explanation'; got {by!r}.")
    wanted = query.lower()
    if by == "token":
        if explorer.analysis is None:
            raise ExplorerError("Searching by token needs the analysis dataset: run `hfsae analyze`.")
        matches = explorer.token_index.get(wanted, {})
    else:
        matches = {latent: 1 for latent, key in explorer.explanation_keys.items() if wanted in key}
    rows = [
        [
            latent,
            explorer.density[latent] if explorer.density else None,
            explorer.max_activation[latent] if explorer.max_activation else None,
            count,
            explorer.explanation_texts.get(latent, ""),
        ]
        for latent, count in matches.items()
    ]
    rows.sort(key=lambda r: (-r[3], -(r[2] or 0.0)))
    return [[r[0], _number(r[1], ".3%"), _number(r[2]), r[3], r[4]] for r in rows[:limit]]


# ---- Compare -------------------------------------------------------------------------------------------


def compare(explorer: Explorer, texts_a: str, texts_b: str, limit: int = 20) -> tuple[list[list], str]:
    """The latents whose mean activation per token differs most between two texts (or two sets of
    texts separated by blank lines): rows [latent, mean in A, mean in B, B − A, explanation], and a message."""
    mean_a, count_a = explorer.mean_code(texts_a, "in A")
    mean_b, count_b = explorer.mean_code(texts_b, "in B")
    difference = mean_b - mean_a
    order = difference.abs().argsort(descending=True)[:limit]
    rows = [
        [int(latent), round(float(mean_a[latent]), 4), round(float(mean_b[latent]), 4),
         round(float(difference[latent]), 4), explorer.explanation_texts.get(int(latent), "")]
        for latent in order if difference[latent] != 0
    ]
    message = f"Mean activation per token over {count_a} tokens in A and {count_b} in B; click a latent to open it."
    return rows, message


# ---- Overview ------------------------------------------------------------------------------------------


def overview(explorer: Explorer) -> str:
    """Markdown: what the SAE is, its metrics (eval_results.json, training_metrics.json) and the analysis."""
    config = explorer.sae.config
    sections = [
        f"## {explorer.name}",
        (
            f"{ARCHITECTURES[config.architecture].summary}"
            + (f", a transcoder to `{config.target_hook_point}`" if config.is_transcoder else "")
            + f": **{config.n_latents:,} latents**, **k = {config.k}**, reading `{config.hook_point}` "
            f"of `{config.base_model}` (d_in {config.d_in}, normalize `{config.normalize}`)."
        ),
    ]
    if explorer.eval_results:
        rows = _evaluation_rows(explorer.eval_results)
        sections.append(f"### Evaluation\n\n| metric | value | better |\n|---|---|---|\n{rows}")
    if explorer.training_metrics:
        rows = "\n".join(f"| {name} | {_number(value)} |" for name, value in flatten(explorer.training_metrics).items())
        sections.append(f"### Training\n\n| metric | value |\n|---|---|\n{rows}")
    if not (explorer.eval_results or explorer.training_metrics):
        sections.append("_No eval_results.json or training_metrics.json beside this SAE: run `hfsae eval`._")
    if explorer.density is not None:
        density = torch.tensor(explorer.density)
        n_tokens = explorer.analysis_settings.get("n_tokens")
        sections.append(
            "### Analysis\n\n"
            + (f"{n_tokens:,} tokens analysed · " if isinstance(n_tokens, int) else "")
            + f"dead latents {float((density == 0).float().mean()):.2%} · "
            f"median density {float(density.median()):.4%}"
        )
    return "\n\n".join(sections)


def _evaluation_rows(eval_results: dict) -> str:
    """The metrics of eval_results.json as table rows, labelled and ordered by hfsae.metric_table."""
    omitted = eval_results.get("omitted") or {}
    rows = []
    for metric in METRICS:
        if metric.key in omitted:
            rows.append((metric.label, f"omitted: {omitted[metric.key]}", ""))
        else:
            rows += [(label, _number(value), metric.better or "") for _, label, value in metric.points(eval_results)]
    return "\n".join(f"| {label} | {value} | {better} |" for label, value, better in rows)
