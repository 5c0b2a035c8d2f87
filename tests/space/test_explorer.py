"""The explorer's views, computed without a browser, against the SAE and model they show."""

import pytest
import torch

from hfsae import explorer_views
from hfsae.activations.hook_points import capture, splice
from hfsae.explorer import MAX_TEXT_CHARS, MAX_TEXT_TOKENS, ExplorerError, explanation_text

from .conftest import EXPLAINED_LATENT, HOOK_POINT


def dense_code(explorer, text):
    input_ids = explorer.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        x = capture(explorer.model, input_ids, [HOOK_POINT])[HOOK_POINT][0]
        return explorer.sae.encode(x).to_dense(explorer.n_latents)  # [seq, n_latents]


def test_text_view_colours_tokens_by_the_chosen_latents_activation(explorer):
    text = "The lazy dog sleeps."
    codes = dense_code(explorer, text)
    latent = int(codes.sum(0).argmax())
    highlighted, shown, _, message = explorer_views.text_view(explorer, text, latent)
    scale = max(float(codes[:, latent].max()), explorer.row(latent)["max_activation"])
    assert shown == latent and message == ""
    assert "".join(token for token, _ in highlighted) == text
    torch.testing.assert_close(
        torch.tensor([score for _, score in highlighted]),
        codes[:, latent] / scale,
        atol=1e-4,
        rtol=0,
    )


def test_text_view_without_a_latent_shows_the_strongest_one_and_lists_each_tokens_top_latents(
    explorer,
):
    text = "def add(a, b):"
    codes = dense_code(explorer, text)
    _, shown, rows, _ = explorer_views.text_view(explorer, text, None)
    assert shown == int(codes.flatten().argmax()) % explorer.n_latents
    assert len(rows) == len(codes)
    for row, code in zip(rows, codes):
        expected = code.topk(3).indices.tolist()
        assert [int(cell.split(" ")[0]) for cell in row[2:]] == expected


def test_long_text_is_cut_with_a_message(explorer):
    highlighted, _, _, message = explorer_views.text_view(explorer, "ab" * MAX_TEXT_TOKENS, None)
    assert len(highlighted) == MAX_TEXT_TOKENS
    assert f"only the first {MAX_TEXT_TOKENS} are shown" in message


class RecordingTokenizer:
    """A real tokenizer that also records the length of every text it is asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def __call__(self, text, **options):
        self.lengths.append(len(text))
        return self.tokenizer(text, **options)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_huge_text_is_cut_by_characters_before_the_tokenizer_sees_it(explorer, monkeypatch):
    recording = RecordingTokenizer(explorer.tokenizer)
    monkeypatch.setattr(explorer, "tokenizer", recording)
    highlighted, _, _, message = explorer_views.text_view(explorer, "x" * 16_000_000, None)
    assert recording.lengths == [MAX_TEXT_CHARS]
    assert len(highlighted) == MAX_TEXT_TOKENS and "only the first" in message


@pytest.mark.parametrize("latent", [-1, 64, None])
def test_a_latent_out_of_range_names_the_valid_range(explorer, latent):
    with pytest.raises(ExplorerError, match="0–63"):
        explorer_views.latent_view(explorer, latent)


@pytest.mark.parametrize("latent", ["inf", float("inf"), "-inf", float("nan"), "nan", "1e400", 2.5, "three"])
def test_a_latent_that_is_not_a_whole_number_is_refused_with_the_valid_range(explorer, latent):
    with pytest.raises(ExplorerError, match="whole number in 0–63"):
        explorer_views.latent_view(explorer, latent)


def test_latent_view_shows_the_analysis_rows_histogram_and_contexts(explorer):
    density = torch.tensor(explorer.analysis["density"])
    latent = int(density.argmax())
    row = explorer.row(latent)
    summary, histogram, top, random, logits = explorer_views.latent_view(explorer, latent)
    assert f"## Latent {latent}" in summary and f"{row['density']:.4%}" in summary
    last_filled = max(i for i, count in enumerate(row["histogram_counts"]) if count)
    assert [count for _, count in histogram] == row["histogram_counts"][: last_filled + 1]
    centres = [float(label) for label, _ in histogram]
    assert centres == sorted(centres) and centres[-1] < row["max_activation"] * 1.1
    assert top.count('class="context"') == len(row["top_activations"])
    assert random.count('class="context"') == len(row["random_activations"])
    assert "rgba(239, 68, 60, 1.000)" in top  # the strongest example's peak is fully shaded
    assert [r[0] for r in logits] == row["promoted_tokens"]


def test_latent_view_shows_the_n2g_explanation_with_precision_and_recall(explorer):
    summary, *_ = explorer_views.latent_view(explorer, EXPLAINED_LATENT)
    assert "`f · * · x`" in summary and "precision 0.9" in summary and "recall 0.5" in summary


def test_logit_effects_without_an_analysis_are_computed_from_the_decoder_row(explorer):
    latent = 7
    logits = explorer.model.get_output_embeddings().weight @ explorer.sae.W_dec[latent]
    rows = explorer_views.logit_rows(explorer, latent, row=None)
    torch.testing.assert_close(
        torch.tensor([r[1] for r in rows]),
        logits.topk(10).values.detach(),
        atol=1e-3,
        rtol=0,
    )
    torch.testing.assert_close(
        torch.tensor([r[3] for r in rows]),
        (-(-logits).topk(10).values).detach(),
        atol=1e-3,
        rtol=0,
    )


def test_search_by_token_finds_latents_whose_top_contexts_peak_on_it(explorer):
    row = max(explorer.analysis, key=lambda r: r["density"])
    token = row["top_tokens"][0][row["top_peak"][0]]
    expected = sum(t[p].strip().lower() == token.strip().lower() for t, p in zip(row["top_tokens"], row["top_peak"]))
    results = {r[0]: r[3] for r in explorer_views.search(explorer, token, "token")}
    assert results[row["latent"]] == expected


class UnreadableDataset:
    def __getitem__(self, key):
        raise AssertionError(f"search read the dataset ({key!r}) instead of its index")


def test_search_by_token_reads_the_index_built_at_load_and_matches_a_scan_of_every_row(explorer, monkeypatch):
    rows = list(explorer.analysis)
    tokens = {t[p] for row in rows for t, p in zip(row["top_tokens"], row["top_peak"]) if t[p].strip()}
    monkeypatch.setattr(explorer, "analysis", UnreadableDataset())
    for token in sorted(tokens)[:20]:
        wanted = token.strip().lower()
        expected = {}
        for row in rows:
            count = sum(t[p].strip().lower() == wanted for t, p in zip(row["top_tokens"], row["top_peak"]))
            if count:
                expected[row["latent"]] = count
        found = {r[0]: r[3] for r in explorer_views.search(explorer, token, "token", limit=explorer.n_latents)}
        assert found == expected


def test_search_by_explanation_finds_the_explained_latent(explorer):
    assert [r[0] for r in explorer_views.search(explorer, "· x", "explanation")] == [EXPLAINED_LATENT]
    assert explorer_views.search(explorer, "no such pattern", "explanation") == []


def test_an_empty_search_asks_for_a_query(explorer):
    with pytest.raises(ExplorerError, match="Type a token"):
        explorer_views.search(explorer, "  ", "token")


def test_steering_equals_generation_with_the_unit_decoder_row_added_after_the_first_position(explorer):
    latent, strength = 3, 25.0
    unsteered, steered, rows, _ = explorer.steer("hello", latent, strength, 6)
    input_ids = explorer.tokenizer("hello", return_tensors="pt")["input_ids"]

    def generate():
        out = explorer.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=explorer.tokenizer.eos_token_id,
            use_cache=False,  # every step sees the whole sequence, so positions are plain slices
        )
        return explorer.tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)

    row = explorer.sae.W_dec[latent].detach()
    direction = row / row.norm()  # normalize="none": decoding adds exactly this row per unit of value

    def add_after_first(x):
        return torch.cat([x[:, :1], x[:, 1:] + strength * direction], dim=1)

    with torch.no_grad(), splice(explorer.model, HOOK_POINT, add_after_first):
        expected_steered = generate()
    with torch.no_grad():
        expected_unsteered = generate()
    assert (unsteered, steered) == (expected_unsteered, expected_steered)
    assert steered != unsteered
    # The measured rows: strength 0 changes nothing; the steered strength moves the held-out predictions.
    assert [row[0] for row in rows] == [0.0, strength]
    assert rows[0][3:] == [0.0, 0.0] and rows[1][3] > 0


def test_compare_ranks_latents_by_the_difference_of_their_mean_activation(explorer):
    from hfsae.activations import capture

    text_a, text_b = "def add(a, b): return a + b", "The quick brown fox\n\njumps over the lazy dog"
    rows, message = explorer_views.compare(explorer, text_a, text_b, limit=5)

    @torch.no_grad()
    def mean(texts):
        codes = []
        for text in texts:
            ids = explorer.tokenizer(text, return_tensors="pt")["input_ids"]
            acts = capture(explorer.model, ids, HOOK_POINT)[HOOK_POINT][0, 1:]
            codes.append(explorer.sae.encode(acts).to_dense(explorer.n_latents))
        return torch.cat(codes).mean(0)

    difference = mean(["The quick brown fox", "jumps over the lazy dog"]) - mean([text_a])
    expected = difference.abs().topk(5).indices.tolist()
    assert [row[0] for row in rows] == expected
    assert [row[3] for row in rows] == pytest.approx([float(difference[i]) for i in expected], abs=1e-3)
    assert "A" in message and "B" in message
    with pytest.raises(ExplorerError, match="blank line"):
        explorer_views.compare(explorer, "  ", text_b)


def test_compare_shows_the_explanation_of_an_explained_latent(explorer):
    rows, _ = explorer_views.compare(explorer, "f(x)", "hello", limit=explorer.n_latents)
    shown = {row[0]: row[4] for row in rows}
    assert all(text == explorer.explanation_texts.get(latent, "") for latent, text in shown.items())


@pytest.mark.parametrize(
    ("strength", "new_tokens", "refused"),
    [(float("inf"), 6, "strength"), ("nan", 6, "strength"), (1.0, float("inf"), "new tokens"), (1.0, "many", "new tokens")],
)
def test_steering_refuses_a_strength_or_length_that_is_not_a_finite_number(explorer, strength, new_tokens, refused):
    with pytest.raises(ExplorerError, match=f"{refused} must be a finite number"):
        explorer.steer("hello", 3, strength, new_tokens)


def test_overview_lists_the_metrics_files_and_the_analysis(explorer):
    overview = explorer_views.overview(explorer)
    # Evaluation: labels and order of hfsae.metric_table, progressive one row per k'.
    evaluation = overview[overview.index("### Evaluation") : overview.index("### Training")]
    rows = [line.split("|")[1].strip() for line in evaluation.splitlines() if line.startswith("|")][2:]
    assert rows == ["FVU", "L0", "FVU at k'=2", "FVU at k'=4"]
    assert "| FVU | 0.125 | lower |" in evaluation and "| FVU at k'=4 | 0.125 | lower |" in evaluation
    assert "| dead_fraction | 0.02 |" in overview and "| tokens | 10,000 |" in overview
    assert "tokens analysed" in overview and "64 latents" in overview


def test_explanation_text_joins_patterns_with_wildcards():
    entry = {"patterns": [{"tokens": ["def", "*", "\n"]}, {"token_ids": [4, None]}]}
    assert explanation_text(entry) == "def · * · ↵ | <4> · *"
    assert explanation_text(None) == ""


def test_an_analysis_for_another_sae_size_is_refused(sae_folder, tiny_lm, tiny_tokenizer, tmp_path):
    from hfsae import TopKSAE, TopKSAEConfig
    from hfsae.explorer import Explorer

    other = TopKSAE(TopKSAEConfig(d_in=32, n_latents=128, k=4, hook_point=HOOK_POINT))
    with pytest.raises(ValueError, match="has 64 latents but the SAE has 128"):
        Explorer.load(
            other,
            sae_folder / "analysis",
            model=tiny_lm("llama"),
            tokenizer=tiny_tokenizer,
        )
