"""Probe loss: the best single-latent 1-D logistic probe per binary task, averaged over tasks (docs/method.md §4).

For each task every latent gets its own logistic regression p = σ(w·z + b) on that latent's
activation z alone, fitted by damped Newton steps for all latents at once; the task's score is the
lowest cross-entropy among them. The same fit over the raw activation channels (the residual
stream itself) is the baseline the paper compares with (best raw channel ≈ 0.600 on its tasks).
Losses are measured on the examples the probes were fitted on: with two parameters per probe,
overfitting is negligible at a few thousand examples.

SAE codes are sparse, so the fit is too: an example where a latent is zero contributes σ(b) only,
so each Newton step costs O(non-zero entries + latents) rather than O(examples · latents).

Tasks are `ProbeTask`s: token contexts with a label per token (1, 0, or -1 for "ignore"); a
per-sequence task puts its label on every token and is probed on the mean activation over the
sequence. `task_from_dataset` turns any labelled `datasets.Dataset` (text + int label, or a list
of per-token labels) into one. `builtin_probe_tasks` derives a small suite from the built-in
corpus of Python's own documentation and source, chosen to cover the kinds of knowledge a
residual stream carries:

- `python_source` (per sequence): is the context Python source or documentation prose? Genre.
- `python_keyword` (per token, source contexts): is the token a Python keyword? Lexical identity.
- `inside_parentheses` (per token): is there an unclosed "(" before the token in the context?
  Needs state tracked across tokens, which no single token reveals.
- `next_token_newline` (per token): does the next token start with a newline? A prediction, as
  the paper's tasks include; the label is not visible in the input.
- `capitalised_word` (per token, prose contexts): does the token start a capitalised word?
  Orthography, a feature every tokenizer splits differently.
"""

from __future__ import annotations

import ast
import dataclasses
import keyword
import math
import random
from dataclasses import dataclass

import torch

from hfsae.activations import FIRST_POSITION_USED, capture

# Ridge on the standardised weight: keeps the Newton steps finite on separable data (a latent that
# equals the label), where the unregularised optimum lies at infinity. Costs ~1e-2 nats there.
L2 = 1e-4


@dataclass
class ProbeTask:
    """A binary task: token contexts and a label for each token (1, 0, or -1 to ignore the token)."""

    name: str
    input_ids: torch.Tensor  # [contexts, seq] int64
    labels: torch.Tensor  # [contexts, seq] int64 in {-1, 0, 1}
    per_sequence: bool = False
    """Probe the mean activation over each sequence's labelled tokens against its (single) label."""
    description: str = ""


@dataclass
class ProbeFit:
    """One 1-D logistic probe per feature: p = σ(weight · feature + bias), and its mean cross-entropy."""

    loss: torch.Tensor  # [features] nats, without the ridge term
    weight: torch.Tensor  # [features], on the feature's own scale
    bias: torch.Tensor  # [features]


@dataclass
class ProbeResult:
    """A task's best probe on the SAE's latents and on the raw activation channels (the baseline)."""

    task: str
    loss: float
    latent: int
    baseline_loss: float
    channel: int
    n_examples: int
    positive_fraction: float


# ---- fitting ---------------------------------------------------------------------------------------


def _fit(x, targets, spread, reduce, n_examples, n_positives, *, l2, max_iterations, tolerance):
    """Damped Newton on (w, b) of every feature at once.

    x, targets: the stored entries (already scaled) and their labels; `spread` takes a per-feature
    vector to the entries, `reduce` sums entries per feature. Entries not stored are zeros: their
    logit is b alone, so they enter through counts only.
    """
    zeros = n_examples - reduce(torch.ones_like(x))
    zero_positives = n_positives - reduce(targets * torch.ones_like(x))
    prior = min(max(n_positives / n_examples, 1e-6), 1 - 1e-6)
    n_features = zeros.shape[0]
    w = torch.zeros(n_features, dtype=torch.float64)
    b = torch.full((n_features,), math.log(prior / (1 - prior)), dtype=torch.float64)

    def objective(w, b):
        z = spread(w) * x + spread(b)
        data = reduce(torch.nn.functional.softplus(z) - targets * z)
        data = data + zeros * torch.nn.functional.softplus(b) - zero_positives * b
        return data / n_examples + 0.5 * l2 * w.pow(2)

    current = objective(w, b)
    for _ in range(max_iterations):
        s = torch.sigmoid(spread(w) * x + spread(b))
        residual, curvature = s - targets, s * (1 - s)
        s_zero = torch.sigmoid(b)
        grad_w = reduce(residual * x) / n_examples + l2 * w
        grad_b = (reduce(residual) + zeros * s_zero - zero_positives) / n_examples
        h_ww = reduce(curvature * x * x) / n_examples + l2
        h_wb = reduce(curvature * x) / n_examples
        h_bb = (reduce(curvature) + zeros * s_zero * (1 - s_zero)) / n_examples + 1e-12
        det = (h_ww * h_bb - h_wb * h_wb).clamp_min(1e-300)
        step_w = (h_bb * grad_w - h_wb * grad_b) / det
        step_b = (h_ww * grad_b - h_wb * grad_w) / det
        # Damped Newton: each feature takes the first of the halving steps that lowers its loss,
        # or stays where it is. The full step almost always does, so one evaluation is typical.
        updated_w, updated_b, updated = w.clone(), b.clone(), current.clone()
        pending = torch.ones(n_features, dtype=torch.bool)
        for t in (1.0, 0.5, 0.25, 0.125, 0.0625):
            trial_w, trial_b = w - t * step_w, b - t * step_b
            trial = objective(trial_w, trial_b)
            accept = pending & (trial < current)
            updated_w[accept], updated_b[accept], updated[accept] = trial_w[accept], trial_b[accept], trial[accept]
            pending &= ~accept
            if not pending.any():
                break
        converged = (current - updated).max().item() < tolerance
        w, b, current = updated_w, updated_b, updated
        if converged:
            break
    return w, b, current - 0.5 * l2 * w.pow(2)


def fit_probes(
    rows: torch.Tensor,
    columns: torch.Tensor,
    values: torch.Tensor,
    labels: torch.Tensor,
    n_features: int,
    *,
    l2: float = L2,
    max_iterations: int = 30,
    tolerance: float = 1e-7,
) -> ProbeFit:
    """Fit a 1-D logistic regression on each feature of a sparse matrix given as COO entries.

    rows, columns, values: [entries] (example, feature, value), each (row, column) at most once;
    absent entries are zero. labels: [examples] in {0, 1}. Returns per-feature fits [n_features].
    Features are rescaled to unit root-mean-square before fitting (the ridge `l2` acts on that
    scale); weights are returned on the original scale.
    """
    labels = labels.double()
    n_examples = labels.shape[0]
    if n_examples == 0:
        raise ValueError("A probe needs at least one labelled example; the task has none.")
    rows, columns, values = rows.long(), columns.long(), values.double()

    def reduce(entry_values):
        return torch.zeros(n_features, dtype=torch.float64).index_add_(0, columns, entry_values)

    def spread(per_feature):
        return per_feature[columns]

    scale = (reduce(values.pow(2)) / n_examples).sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    w, b, loss = _fit(
        values / scale[columns], labels[rows], spread, reduce, n_examples, labels.sum().item(),
        l2=l2, max_iterations=max_iterations, tolerance=tolerance,
    )  # fmt: skip
    return ProbeFit(loss=loss.float(), weight=(w / scale).float(), bias=b.float())


def fit_dense_probes(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    l2: float = L2,
    max_iterations: int = 30,
    tolerance: float = 1e-7,
) -> ProbeFit:
    """`fit_probes` on a dense matrix features: [examples, features], labels: [examples] in {0, 1}."""
    labels = labels.double()
    n_examples = labels.shape[0]
    if n_examples == 0:
        raise ValueError("A probe needs at least one labelled example; the task has none.")
    features = features.double()
    scale = features.pow(2).mean(dim=0).sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    w, b, loss = _fit(
        features / scale, labels[:, None], lambda v: v[None, :], lambda v: v.sum(dim=0), n_examples,
        labels.sum().item(), l2=l2, max_iterations=max_iterations, tolerance=tolerance,
    )  # fmt: skip
    return ProbeFit(loss=loss.float(), weight=(w / scale).float(), bias=b.float())


# ---- examples from a task ----------------------------------------------------------------------------


def task_examples(task: ProbeTask) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool [examples, contexts·seq] sparse averaging matrix, labels [examples]) for a task.

    Each example is one labelled token, or, for a per-sequence task, the mean over one context's
    labelled tokens (never the first positions, `FIRST_POSITION_USED`); multiplying the pool by
    per-token activations [contexts·seq, d] gives the
    examples' activations.
    """
    labels = task.labels.clone()
    labels[:, :FIRST_POSITION_USED] = -1  # the first-position rule of every metric (hfsae.activations)
    labels = labels.reshape(-1)
    positions = (labels >= 0).nonzero().squeeze(1)
    if task.per_sequence:
        context_of = positions // task.labels.shape[1]
        contexts, example_of = context_of.unique(return_inverse=True)
        counts = torch.bincount(example_of).double()
        weights = 1.0 / counts[example_of]
        example_labels = torch.zeros(len(contexts), dtype=torch.long).scatter_(0, example_of, labels[positions])
    else:
        example_of = torch.arange(len(positions))
        weights = torch.ones(len(positions), dtype=torch.float64)
        example_labels = labels[positions]
    pool = torch.sparse_coo_tensor(
        torch.stack([example_of, positions]), weights, (len(example_labels), labels.numel()), check_invariants=False
    ).coalesce()
    return pool, example_labels


def sparse_examples(pool: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, n_latents: int):
    """COO (rows, columns, values) of pool @ dense code, with the code given as indices, values [tokens, k]."""
    pool_rows, pool_tokens = pool.indices()
    k = indices.shape[1]
    rows = pool_rows.repeat_interleave(k)
    columns = indices[pool_tokens].reshape(-1)
    entries = (pool.values()[:, None] * values[pool_tokens].double()).reshape(-1)
    summed = torch.sparse_coo_tensor(
        torch.stack([rows, columns]), entries, (pool.shape[0], n_latents), check_invariants=False
    ).coalesce()
    return summed.indices()[0], summed.indices()[1], summed.values()


# ---- tasks from data ------------------------------------------------------------------------------------


def task_from_dataset(
    dataset,
    tokenizer,
    *,
    name: str,
    text_column: str = "text",
    label_column: str = "label",
    context_size: int = 64,
) -> ProbeTask:
    """A ProbeTask from a labelled `datasets.Dataset`: text + an int label (per sequence) or a list (per token).

    A per-token label list must have one entry per token of `tokenizer(text)` without special
    tokens (-1 marks tokens to ignore); texts are truncated to `context_size` tokens.
    """
    for column in (text_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(
                f"Probe dataset {name!r} has no column {column!r}; its columns are {dataset.column_names}. "
                f"Pass text_column= / label_column= to name the right ones."
            )
    rows_ids, rows_labels, per_sequence = [], [], None
    for i, (text, label) in enumerate(zip(dataset[text_column], dataset[label_column])):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:context_size]
        is_sequence_label = not isinstance(label, (list, tuple))
        if per_sequence is None:
            per_sequence = is_sequence_label
        elif per_sequence != is_sequence_label:
            raise ValueError(f"Probe dataset {name!r} mixes per-sequence and per-token labels (row {i}); use one kind.")
        token_labels = [int(label)] * len(ids) if is_sequence_label else [int(v) for v in label][:context_size]
        if len(token_labels) != len(ids):
            raise ValueError(
                f"Probe dataset {name!r} row {i} has {len(label)} token labels for {len(ids)} tokens; "
                f"give one label per token of the tokenizer's output (-1 to ignore a token)."
            )
        if any(v not in (-1, 0, 1) for v in token_labels):
            raise ValueError(f"Probe dataset {name!r} row {i}: labels must be 0, 1 or -1 (ignore); got {label!r}.")
        rows_ids.append(ids)
        rows_labels.append(token_labels)
    return ProbeTask(name, *_pad(rows_ids, rows_labels, tokenizer), per_sequence=bool(per_sequence))


def _pad(rows_ids, rows_labels, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    # Right padding: a causal LM's activations at real tokens never see the padding after them.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max((len(ids) for ids in rows_ids), default=0)
    input_ids = torch.full((len(rows_ids), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows_ids), width), -1, dtype=torch.long)
    for i, (ids, token_labels) in enumerate(zip(rows_ids, rows_labels)):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, : len(ids)] = torch.tensor(token_labels, dtype=torch.long)
    return input_ids, labels


def _is_python_source(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


def builtin_probe_tasks(
    tokenizer,
    texts: list[str] | None = None,
    *,
    n_contexts: int = 48,
    context_size: int = 64,
    seed: int = 0,
) -> list[ProbeTask]:
    """The built-in probe suite (see the module docstring) on n_contexts contexts, half source, half prose.

    texts defaults to `hfsae.activations.builtin.builtin_texts()`; a text counts as Python source when
    it parses as Python. Each context is a window of one text, so its genre is known.
    """
    if texts is None:
        from hfsae.activations.builtin import builtin_texts

        texts = builtin_texts()
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    windows = {True: [], False: []}
    for i in order:
        if all(len(found) >= n_contexts // 2 for found in windows.values()):
            break
        text = texts[i]
        source = _is_python_source(text)
        if len(windows[source]) >= n_contexts // 2:
            continue
        # One window per text: tokenising the first 20k characters of a long file is enough.
        ids = tokenizer(text[:20_000], add_special_tokens=False)["input_ids"]
        if len(ids) < context_size:
            continue
        start = random.Random(seed * 1_000_003 + i).randrange(len(ids) - context_size + 1)
        windows[source].append(ids[start : start + context_size])
    if not windows[True] or not windows[False]:
        raise ValueError(
            f"The built-in probe suite needs both Python source and prose texts of at least {context_size} "
            f"tokens; found {len(windows[True])} source and {len(windows[False])} prose windows in {len(texts)} texts."
        )
    contexts = windows[True] + windows[False]
    is_source = [True] * len(windows[True]) + [False] * len(windows[False])
    input_ids = torch.tensor(contexts, dtype=torch.long)
    strings = _token_strings(tokenizer, input_ids)
    return [
        ProbeTask(
            name,
            input_ids,
            torch.tensor(labels, dtype=torch.long),
            per_sequence=name == "python_source",
            description=why,
        )
        for name, why, labels in _builtin_labels(strings, is_source)
    ]


def _token_strings(tokenizer, input_ids: torch.Tensor) -> list[list[str]]:
    unique = input_ids.unique().tolist()
    text_of = dict(zip(unique, tokenizer.batch_decode([[i] for i in unique])))
    return [[text_of[i] for i in row] for row in input_ids.tolist()]


def _builtin_labels(strings: list[list[str]], is_source: list[bool]):
    keywords = set(keyword.kwlist)
    source, kw, paren, newline, capital = [], [], [], [], []
    for row, code in zip(strings, is_source):
        source.append([int(code)] * len(row))
        kw.append([int(token.strip() in keywords) if code else -1 for token in row])
        depth, inside = 0, []
        for token in row:
            inside.append(int(depth > 0))
            depth = max(0, depth + token.count("(") - token.count(")"))
        paren.append(inside)
        newline.append([int(following.startswith("\n")) for following in row[1:]] + [-1])
        capital.append([int(token.lstrip()[:1].isupper()) if not code else -1 for token in row])
    return [
        ("python_source", "Python source vs documentation prose (genre of the whole context)", source),
        ("python_keyword", "the token is a Python keyword (source contexts only)", kw),
        ("inside_parentheses", "an unclosed '(' precedes the token in the context", paren),
        ("next_token_newline", "the next token starts with a newline", newline),
        ("capitalised_word", "the token starts with a capital letter (prose contexts only)", capital),
    ]


# ---- probing an SAE ---------------------------------------------------------------------------------------


def _activations(model, input_ids: torch.Tensor, hook_point: str, batch_size: int) -> torch.Tensor:
    """Activations at hook_point for every token of input_ids [contexts, seq] → [contexts·seq, d]."""
    device = next(model.parameters()).device
    chunks = [capture(model, ids.to(device), [hook_point])[hook_point].cpu() for ids in input_ids.split(batch_size)]
    return torch.cat(chunks).reshape(input_ids.numel(), -1).float()


@torch.no_grad()
def evaluate_probes(
    sae,
    model,
    tasks: list[ProbeTask],
    *,
    hook_point: str | None = None,
    batch_size: int = 16,
) -> list[ProbeResult]:
    """The best single-latent probe and best single raw channel for each task (tasks with one class are skipped)."""
    hook_point = hook_point or sae.config.hook_point
    cache: dict[int, tuple] = {}  # the built-in tasks share their contexts: one forward for all
    results = []
    for task in tasks:
        pool, labels = task_examples(task)
        positive_fraction = labels.float().mean().item() if len(labels) else 0.0
        if not 0 < positive_fraction < 1:
            continue
        if id(task.input_ids) not in cache:
            x = _activations(model, task.input_ids, hook_point, batch_size)
            code = sae.encode(x.to(sae.device))
            cache[id(task.input_ids)] = (
                x,
                dataclasses.replace(code, indices=code.indices.cpu(), values=code.values.cpu()),
            )
        x, code = cache[id(task.input_ids)]
        rows, columns, values = sparse_examples(pool, code.indices, code.values, sae.config.n_latents)
        latents = fit_probes(rows, columns, values, labels, sae.config.n_latents)
        channels = fit_dense_probes(torch.sparse.mm(pool, x.double()), labels)
        results.append(
            ProbeResult(
                task=task.name,
                loss=latents.loss.min().item(),
                latent=int(latents.loss.argmin()),
                baseline_loss=channels.loss.min().item(),
                channel=int(channels.loss.argmin()),
                n_examples=len(labels),
                positive_fraction=positive_fraction,
            )
        )
    return results
