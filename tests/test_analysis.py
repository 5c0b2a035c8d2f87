"""Latent analysis: streaming accumulators against brute force, logit effects, and a whole pass on a tiny LM."""

import math

import numpy as np
import pytest
import torch

from hfsae import SparseCode, TopKSAE, TopKSAEConfig
from hfsae.activations.hook_points import capture
from hfsae.analysis import (
    ActivationHistograms,
    AnalysisError,
    TopExamples,
    load_analysis,
    logit_effects,
)

FIRING = 1e-3


def random_codes(n_batches, contexts, seq, k, n_latents, seed):
    """A stream of codes [contexts, seq, k] with distinct latents per token and some non-firing values."""
    generator = torch.Generator().manual_seed(seed)
    codes = []
    for _ in range(n_batches):
        scores = torch.rand(contexts, seq, n_latents, generator=generator)
        indices = scores.topk(k, dim=-1).indices
        values = torch.rand(contexts, seq, k, generator=generator) * 5
        values[torch.rand(contexts, seq, k, generator=generator) < 0.2] = 0.0
        codes.append(SparseCode(indices, values))
    return codes


def dense(code, n_latents):
    return code.to_dense(n_latents)  # [contexts, seq, n_latents]


def test_top_examples_keep_the_strongest_firing_of_each_context_across_batches():
    n_latents, n_examples = 7, 4
    codes = random_codes(n_batches=5, contexts=3, seq=6, k=3, n_latents=n_latents, seed=0)
    top = TopExamples(n_latents, n_examples, before=2, after=1)
    for code in codes:
        token_ids = torch.arange(code.indices.shape[0] * code.indices.shape[1]).view(code.indices.shape[:2])
        top.update_(code, token_ids, code.values, code.values > FIRING)

    # Brute force: the largest activation per (latent, context), contexts numbered across batches.
    per_context = torch.cat([dense(code, n_latents).amax(dim=1) for code in codes])  # [all contexts, n_latents]
    for latent in range(n_latents):
        firing = per_context[:, latent][per_context[:, latent] > FIRING]
        expected = firing.sort(descending=True).values[:n_examples]
        kept = top.values[latent][top.keys[latent] > -math.inf].sort(descending=True).values
        torch.testing.assert_close(kept, expected)


def test_top_example_windows_hold_the_latents_activation_at_every_token():
    n_latents = 5
    (code,) = random_codes(n_batches=1, contexts=4, seq=9, k=2, n_latents=n_latents, seed=1)
    token_ids = torch.randint(0, 1000, (4, 9), generator=torch.Generator().manual_seed(0))
    before, after = 3, 2
    top = TopExamples(n_latents, 3, before=before, after=after)
    top.update_(code, token_ids, code.values, code.values > FIRING)

    codes_dense = dense(code, n_latents)
    for latent in range(n_latents):
        for example in range(3):
            if top.keys[latent, example] == -math.inf:
                continue
            # Find the example's context and peak by its token window (token ids are unique per context here).
            peak_token = int(top.token_ids[latent, example, before])
            context, position = [int(i) for i in (token_ids == peak_token).nonzero()[0]]
            for offset in range(-before, after + 1):
                slot = before + offset
                if 0 <= position + offset < 9:
                    assert int(top.token_ids[latent, example, slot]) == int(token_ids[context, position + offset])
                    expected = codes_dense[context, position + offset, latent]
                    torch.testing.assert_close(
                        top.activations[latent, example, slot].float(),
                        expected,
                        atol=1e-2,
                        rtol=1e-3,
                    )
                else:
                    assert int(top.token_ids[latent, example, slot]) == -1
            assert float(top.values[latent, example]) == pytest.approx(float(codes_dense[context, position, latent]))


def test_random_keys_sample_each_firing_context_with_equal_probability():
    # One latent firing once in each of 10 contexts with very different activations; keep 2 of them.
    indices = torch.zeros(10, 1, 1, dtype=torch.int64)
    values = torch.linspace(0.5, 50.0, 10).view(10, 1, 1)
    token_ids = torch.arange(10).view(10, 1)
    picked = torch.zeros(10)
    trials = 1000
    generator = torch.Generator().manual_seed(0)
    for _ in range(trials):
        reservoir = TopExamples(1, 2, before=0, after=0)
        for half in (
            slice(0, 5),
            slice(5, 10),
        ):  # two batches: the merge must stay uniform
            part = SparseCode(indices[half], values[half])
            reservoir.update_(
                part,
                token_ids[half],
                torch.rand(part.values.shape, generator=generator),
                part.values > 0,
            )
        picked[reservoir.token_ids[0, :, 0].long()] += 1
    # Each context is kept with probability 2/10; the binomial standard deviation is ~0.013.
    assert torch.allclose(picked / trials, torch.full((10,), 0.2), atol=0.05)


def test_streaming_histograms_equal_a_histogram_of_all_values_on_the_final_bins():
    n_latents, n_bins = 6, 8
    generator = torch.Generator().manual_seed(3)
    histograms = ActivationHistograms(n_latents, n_bins)
    all_latents, all_values = [], []
    for scale in (
        0.1,
        1.0,
        30.0,
        2.0,
    ):  # growing maxima force several doublings at once
        latents = torch.randint(0, n_latents, (50,), generator=generator)
        values = torch.rand(50, generator=generator) * scale + 1e-3
        histograms.update_(latents, values)
        all_latents.append(latents)
        all_values.append(values)
    latents, values = torch.cat(all_latents), torch.cat(all_values)
    for latent in range(n_latents):
        mine = values[latents == latent].numpy()
        edges = np.linspace(0, float(histograms.upper[latent]), n_bins + 1)
        expected, _ = np.histogram(mine, bins=edges)
        assert histograms.counts[latent].tolist() == expected.tolist()
        assert mine.max() <= histograms.upper[latent] < 2 * mine.max() * 1.001


def test_quantiles_interpolate_the_cumulative_histogram():
    histograms = ActivationHistograms(1, 4)
    histograms.counts[0] = torch.tensor([2, 0, 1, 1])
    histograms.upper[0] = 4.0
    quantiles = histograms.quantiles(torch.tensor([0]), torch.tensor([[0.5, 2.0, 2.5, 4.0]]))
    # 0.5 is half-way through bin 0 (2 of 4 firings): 1/4; 2.0 starts bin 2: 2/4; 2.5: 2.5/4; 4.0: all.
    torch.testing.assert_close(quantiles, torch.tensor([[0.25, 0.5, 0.625, 1.0]]))


def test_an_odd_number_of_histogram_bins_is_refused():
    with pytest.raises(AnalysisError, match="even number ≥ 2; got 5"):
        ActivationHistograms(3, 5)


def test_logit_effects_in_chunks_equal_the_dense_product():
    generator = torch.Generator().manual_seed(0)
    W_dec, W_U = (
        torch.randn(37, 8, generator=generator),
        torch.randn(50, 8, generator=generator),
    )
    promoted, promoted_logits, suppressed, suppressed_logits = logit_effects(W_dec, W_U, n_tokens=5, chunk_size=10)
    logits = W_dec @ W_U.T
    torch.testing.assert_close(promoted_logits, logits.topk(5, dim=1).values)
    torch.testing.assert_close(suppressed_logits, -(-logits).topk(5, dim=1).values)
    assert torch.equal(promoted, logits.topk(5, dim=1).indices)
    assert torch.equal(suppressed, (-logits).topk(5, dim=1).indices)


# ---- a whole pass on a tiny LM --------------------------------------------------------------------

def tiny_sae(hook_point="layers.1.resid_post", **overrides):
    torch.manual_seed(0)
    config = TopKSAEConfig(
        d_in=32,
        n_latents=64,
        k=4,
        hook_point=hook_point,
        base_model="tiny",
        **overrides,
    )
    return TopKSAE(config).eval()


@pytest.fixture(scope="module")
def tiny_analysis(analyze_tiny, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tiny-analysis")
    sae = tiny_sae()
    dataset = analyze_tiny(
        sae, n_top_examples=3, n_random_examples=2, context_before=5, context_after=2, output_dir=tmp_path / "analysis"
    )
    return sae, dataset, tmp_path / "analysis"


def brute_force_codes(sae, model, tokenizer, texts, n_contexts, context_size):
    from hfsae.activations import token_contexts

    contexts = [ids for _, ids in token_contexts(texts, tokenizer, context_size)][:n_contexts]
    input_ids = torch.tensor(contexts)
    with torch.no_grad():
        x = capture(model, input_ids, ["layers.1.resid_post"])["layers.1.resid_post"]
        codes = sae.encode(x).to_dense(sae.config.n_latents)  # [contexts, seq, n_latents]
    return input_ids, codes[:, 1:]  # the first position is left out of the statistics


def test_analysis_densities_and_maxima_equal_a_dense_pass_over_the_same_tokens(
    tiny_analysis, tiny_lm, tiny_tokenizer, tiny_texts
):
    sae, dataset, _ = tiny_analysis
    n_contexts = math.ceil(400 / 31)
    _, codes = brute_force_codes(sae, tiny_lm("llama"), tiny_tokenizer, tiny_texts, n_contexts, 32)
    firing = codes > FIRING
    expected_density = firing.float().mean(dim=(0, 1))
    expected_max = codes.amax(dim=(0, 1))
    expected_mean = codes.sum(dim=(0, 1)) / firing.sum(dim=(0, 1)).clamp_min(1)
    assert len(dataset) == 64
    torch.testing.assert_close(torch.tensor(dataset["density"]), expected_density)
    torch.testing.assert_close(torch.tensor(dataset["max_activation"]), expected_max)
    torch.testing.assert_close(
        torch.tensor(dataset["mean_activation"], dtype=torch.float32),
        expected_mean,
        rtol=1e-4,
        atol=1e-5,
    )
    counts = torch.tensor([sum(row) for row in dataset["histogram_counts"]])
    assert torch.equal(counts, firing.sum(dim=(0, 1)))


def test_analysis_top_contexts_read_back_as_the_text_around_the_peak(tiny_analysis, tiny_tokenizer):
    _, dataset, _ = tiny_analysis
    row = max(dataset, key=lambda row: row["density"])
    for tokens, ids, activations, peak, value in zip(
        row["top_tokens"],
        row["top_token_ids"],
        row["top_token_activations"],
        row["top_peak"],
        row["top_activations"],
    ):
        assert "".join(tokens) == tiny_tokenizer.decode(ids)
        assert len(activations) == len(ids)
        assert activations[peak] == pytest.approx(value, rel=1e-2)
    assert row["top_activations"] == sorted(row["top_activations"], reverse=True)
    assert row["top_activations"][0] == pytest.approx(row["max_activation"])


def test_analysis_random_samples_carry_quantiles_and_logit_effects_read_the_unembedding(
    tiny_analysis, tiny_lm, tiny_tokenizer
):
    sae, dataset, _ = tiny_analysis
    row = max(dataset, key=lambda row: row["density"])
    assert len(row["random_quantiles"]) == len(row["random_activations"]) == 2
    assert all(0.0 <= q <= 1.0 for q in row["random_quantiles"])
    assert row["random_quantiles"] == sorted(row["random_quantiles"], reverse=True)
    logits = sae.W_dec[row["latent"]].detach() @ tiny_lm("llama").get_output_embeddings().weight.detach().T
    best = logits.topk(10).indices.tolist()
    assert row["promoted_tokens"] == [tiny_tokenizer.decode([i]) for i in best]
    torch.testing.assert_close(torch.tensor(row["promoted_logits"]), logits.topk(10).values)


def test_an_analysis_saved_to_parquet_loads_back_identical(tiny_analysis):
    _, dataset, folder = tiny_analysis
    loaded, settings = load_analysis(folder)
    assert loaded.to_dict() == dataset.to_dict()
    assert settings["hook_point"] == "layers.1.resid_post"
    assert settings["n_tokens"] == 13 * 31


def test_analysis_of_an_sae_without_hook_point_says_what_is_missing(analyze_tiny, tmp_path):
    with pytest.raises(AnalysisError, match="names no hook_point"):
        analyze_tiny(tiny_sae(hook_point=None), output_dir=tmp_path)


def test_analysis_of_an_sae_not_loaded_from_a_folder_asks_for_an_output_dir(analyze_tiny):
    with pytest.raises(AnalysisError, match="pass output_dir="):
        analyze_tiny(tiny_sae())


def test_analysis_writes_next_to_the_model_folder_by_default(analyze_tiny, tmp_path):
    tiny_sae().save_pretrained(tmp_path / "sae")
    analyze_tiny(TopKSAE.from_pretrained(tmp_path / "sae"), n_tokens=64)
    assert (tmp_path / "sae" / "analysis" / "latents.parquet").is_file()


def test_loading_a_missing_analysis_names_the_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="latents.parquet"):
        load_analysis(tmp_path)
