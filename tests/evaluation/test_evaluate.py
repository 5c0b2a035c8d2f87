"""evaluate() end to end on a tiny model and the built-in text, and the files it writes."""

import json

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.evaluation.evaluate import EvalConfig, evaluate, write_eval_results
from hfsae.evaluation.metrics import fvu

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
    assert data["n_tokens"] == 256 and data["n_downstream_tokens"] == 4 * 31
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


def test_evaluated_fvu_is_the_fvu_of_the_held_out_activations(tiny_lm, tiny_tokenizer, small_sae, tmp_path):
    from hfsae.activations.hook_points import capture
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
        x = capture(model, input_ids, ["layers.1.resid_post"])["layers.1.resid_post"].reshape(-1, 32)
        expected = fvu(x, small_sae.decode(small_sae.encode(x))).item()
    assert results.n_tokens == 256 and results.dataset == str(documents)
    assert results.fvu == pytest.approx(expected, rel=1e-5)
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


def test_given_texts_are_packed_into_contexts_separated_by_end_of_text(tiny_lm, tiny_tokenizer, small_sae):
    from hfsae.evaluation.evaluate import _packed

    rows = _packed(["abc", "defgh"], tiny_tokenizer, context_size=4, wanted=5)
    ids = tiny_tokenizer("abcdefgh")["input_ids"]
    assert rows == [ids[:3] + [tiny_tokenizer.eos_token_id], ids[3:7]]
    results = evaluate(
        small_sae,
        model=tiny_lm("llama"),
        tokenizer=tiny_tokenizer,
        texts=["some text " * 10],
        skip=["downstream", "ablation", "n2g", "probes"],
        quiet=True,
        **SMALL,
    )
    assert results.n_tokens == 3 * 32  # 101 tokens with the separator: 3 full contexts of 32
