"""evaluate() end to end on a tiny model and the built-in text, and the files it writes."""

import json

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.activations import FIRST_POSITION_USED, capture, positions_used, token_contexts
from hfsae.evaluation.evaluate import EvalConfig, evaluate, write_eval_results
from hfsae.modeling import fvu

REQUIRED_KEYS = {
    "fvu", "explained_variance", "l0", "dead_fraction", "cosine", "ce_clean", "ce_spliced", "delta_ce", "kl",
    "ce_zero", "ce_loss_recovered", "progressive", "ablation_sparsity", "n2g_precision", "n2g_recall",
    "probe_loss", "probe_loss_baseline", "n_tokens",
}  # fmt: skip

SMALL = {
    "n_tokens": 256, "n_downstream_tokens": 128, "ablation_positions": 1, "ablation_horizon": 2, "n2g_latents": 2,
    "n2g_examples": 2, "n2g_max_suffix": 4, "probe_contexts": 8, "context_size": 32,
}  # fmt: skip


@pytest.fixture()
def small_sae():
    torch.manual_seed(0)
    config = TopKSAEConfig(
        d_in=32, n_latents=64, k=4, hook_point="layers.1.resid_post", base_model="tiny", normalize="layer_norm"
    )
    return TopKSAE(config).eval()


@pytest.mark.slow  # ~12 s alone: reads the whole built-in corpus twice (text split and probe suite)
def test_evaluate_writes_every_metric_and_the_n2g_explanations(tiny_lm, tiny_tokenizer, small_sae, tmp_path):
    results = evaluate(small_sae, model=tiny_lm("llama"), tokenizer=tiny_tokenizer, quiet=True, **SMALL)
    path = write_eval_results(tmp_path, results)
    data = json.loads(path.read_text())
    assert REQUIRED_KEYS <= set(data)
    # Whole contexts of 31 counted positions: 9 hold ≥ 256 tokens, 5 hold ≥ 128 (30 predictions each).
    assert data["n_tokens"] == 9 * 31 and data["n_downstream_tokens"] == 5 * 30
    assert data["l0"] <= 4 and data["explained_variance"] == pytest.approx(1 - data["fvu"])
    assert set(data["progressive"]) == {"1", "2", "4", "8", "16"}
    assert data["progressive"]["4"] == pytest.approx(data["fvu"], rel=1e-6)
    recovered = (data["ce_zero"] - data["ce_spliced"]) / (data["ce_zero"] - data["ce_clean"])
    assert data["ce_loss_recovered"] == pytest.approx(recovered)
    assert {p["task"] for p in data["probes"]} <= {"python_source", "python_keyword", "inside_parentheses",
                                                    "next_token_newline", "capitalised_word"}  # fmt: skip
    assert data["probe_loss"] == pytest.approx(sum(p["loss"] for p in data["probes"]) / len(data["probes"]))
    explanations = json.loads((tmp_path / "n2g_explanations.json").read_text())
    assert len(explanations) == 2 and all("patterns" in e for e in explanations)
    assert not list(tmp_path.glob("*.tmp"))


def test_evaluated_fvu_is_the_trainers_fvu_on_the_same_tokens_without_their_first_positions(
    tiny_lm, tiny_tokenizer, small_sae, tmp_path
):
    from hfsae.evaluation.evaluate import _contexts

    documents = tmp_path / "docs.jsonl"
    documents.write_text("".join(json.dumps({"text": f"document {i}: " + "some words " * 20}) + "\n" for i in range(8)))
    model = tiny_lm("llama")
    skip = ["downstream", "ablation", "n2g", "probes"]
    results = evaluate(
        small_sae,
        model=model,
        tokenizer=tiny_tokenizer,
        quiet=True,
        dataset=str(documents),
        split="all",
        skip=skip,
        **SMALL,
    )
    input_ids = _contexts(results.config, str(documents), tiny_tokenizer, 32)
    with torch.no_grad():
        acts = capture(model, input_ids, ["layers.1.resid_post"])["layers.1.resid_post"]  # [contexts, 32, d]
        x = acts[:, 1:].reshape(-1, 32).double()  # the trainer's rows: position 0 of each context dropped
        x_hat = small_sae.decode(small_sae.encode(x.float())).double()
        by_hand = ((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()).item()
        all_positions = acts.reshape(-1, 32)
        with_first = fvu(small_sae.decode(small_sae.encode(all_positions)).double(), all_positions.double()).item()
    assert FIRST_POSITION_USED == 1 and torch.equal(positions_used(acts), acts[:, 1:].reshape(-1, 32))
    assert results.n_tokens == x.shape[0] == 9 * 31 and results.dataset == str(documents)
    assert results.fvu == pytest.approx(by_hand, rel=1e-6)
    assert results.fvu == pytest.approx(fvu(x_hat, x).item(), rel=1e-6)  # hfsae.modeling.fvu, as in training
    assert with_first != pytest.approx(results.fvu, rel=1e-5)  # counting position 0 gives another number
    assert results.delta_ce is None and results.probe_loss is None and results.n2g_precision is None


def test_too_little_held_out_text_says_how_much_there_is(tiny_lm, tiny_tokenizer, small_sae, tmp_path):
    documents = tmp_path / "docs.jsonl"
    documents.write_text(json.dumps({"text": "short"}) + "\n")
    with pytest.raises(ValueError, match=r"gives 0 context\(s\) of 32 tokens; evaluation needs at least 2"):
        evaluate(
            small_sae, model=tiny_lm("llama"), tokenizer=tiny_tokenizer, dataset=str(documents), split="all", **SMALL
        )


def test_an_unknown_option_or_metric_group_names_the_valid_ones(small_sae, tiny_lm, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"Unknown evaluation options \['n_token'\]; valid options are dataset"):
        evaluate(small_sae, model=tiny_lm("llama"), tokenizer=tiny_tokenizer, n_token=5)
    with pytest.raises(ValueError, match=r"Unknown metric groups to skip: \['probe'\]; choose among downstream"):
        EvalConfig(skip=["probe"])


def test_an_sae_without_a_base_model_asks_for_one(small_sae):
    small_sae.config.base_model = None
    with pytest.raises(ValueError, match="names no base_model; pass model= and tokenizer="):
        evaluate(small_sae)


def test_given_texts_are_packed_by_the_one_token_packer(tiny_lm, tiny_tokenizer, small_sae):
    from hfsae.evaluation.evaluate import _contexts

    texts = ["some text " * 10, "more words " * 10]
    input_ids = _contexts(EvalConfig(n_tokens=62), "unused", tiny_tokenizer, 32, texts)
    expected = [ids for _, ids in token_contexts(texts, tiny_tokenizer, 32)][:2]  # 2 contexts hold 62 counted tokens
    assert input_ids.tolist() == expected
    results = evaluate(
        small_sae,
        model=tiny_lm("llama"),
        tokenizer=tiny_tokenizer,
        texts=texts,
        skip=["downstream", "ablation", "n2g", "probes"],
        quiet=True,
        **SMALL,
    )
    assert results.n_tokens == 6 * 31  # 212 tokens with the separators: 6 full contexts of 32


def test_every_skippable_group_of_the_metric_table_has_a_runner_and_every_key_reaches_eval_results():
    from hfsae.evaluation.evaluate import GROUP_RUNNERS, EvalResults
    from hfsae.evaluation.metrics import ReconstructionMetrics
    from hfsae.metric_table import METRICS, SKIPPABLE_GROUPS, metric_values

    assert set(GROUP_RUNNERS) == set(SKIPPABLE_GROUPS)
    reconstruction = ReconstructionMetrics(
        fvu=0.25, explained_variance=0.75, l0=4.0, dead_fraction=0.5, cosine=0.9, progressive={2: 0.5, 4: 0.25}, n_tokens=10
    )
    results = EvalResults(metrics=metric_values({"reconstruction": reconstruction}), n_tokens=10)
    assert results.fvu == 0.25 and results.progressive == {2: 0.5, 4: 0.25}
    assert results.delta_ce is None and results.probe_loss is None  # their groups did not run
    data = results.to_dict()
    assert [key for key in data if key in {m.key for m in METRICS}] == [m.key for m in METRICS]
    assert data["progressive"] == {"2": 0.5, "4": 0.25} and data["cosine"] == 0.9 and data["kl"] is None
    with pytest.raises(AttributeError, match="no_such_metric"):
        results.no_such_metric


def test_a_per_k_metric_gives_one_point_per_k_prime_in_numeric_order_and_an_absent_metric_none():
    from hfsae.metric_table import METRIC_BY_KEY

    progressive, fvu = METRIC_BY_KEY["progressive"], METRIC_BY_KEY["fvu"]
    assert progressive.points({"progressive": {"16": 0.1, "2": 0.3}}) == [("fvu_k2", "FVU at k'=2", 0.3), ("fvu_k16", "FVU at k'=16", 0.1)]
    assert fvu.points({"fvu": 0.2}) == [("fvu", "FVU", 0.2)] and fvu.points({}) == []
