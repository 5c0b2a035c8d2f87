"""N2G: the trie on hand-made patterns, pattern building with hand-made latents, scoring, and the SAE wiring."""

import json

import pytest
import torch

from hfsae.activations.hook_points import capture
from hfsae.evaluation.n2g import (
    N2GExplanation,
    Pattern,
    PatternTrie,
    explain,
    latent_activations,
    n2g_evaluate,
    precision_recall,
    sae_activation_fn,
    score,
)

A, B, PAD = 5, 7, 0


def rule_fn(rule):
    """An activation_fn from a rule on (token ids, position): 2.0 where the rule holds, else 0."""

    def activation_fn(input_ids, positions):
        return torch.tensor([2.0 if rule(row.tolist(), int(p)) else 0.0 for row, p in zip(input_ids, positions)])

    return activation_fn


def b_after_a(ids, p):
    return ids[p] == B and p >= 1 and ids[p - 1] == A


def b_two_after_a(ids, p):
    return ids[p] == B and p >= 2 and ids[p - 2] == A


def heldout_text(seed=0):
    ids = torch.randint(1, 10, (20, 30), generator=torch.Generator().manual_seed(seed))
    ids[:, 10], ids[:, 11] = A, B  # make sure the patterns occur
    ids[:, 20], ids[:, 22] = A, B
    return ids


def actual(rule, input_ids):
    return torch.tensor([[2.0 if rule(row, p) else 0.0 for p in range(len(row))] for row in input_ids.tolist()])


def test_the_trie_matches_a_pattern_ending_at_each_position_with_wildcards():
    trie = PatternTrie()
    trie.insert(Pattern((A, None, B), activation=2.0))
    trie.insert(Pattern((3,), activation=1.0))
    assert trie.predict([1, A, 3, B, A, B, 3]).tolist() == [0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 1.0]


def test_a_latent_firing_on_b_right_after_a_gets_the_pattern_a_b_and_perfect_precision_and_recall():
    examples = [([1, 2, A, B], 2.0), ([9, A, B], 2.0)]
    patterns = explain(rule_fn(b_after_a), examples, pad_token_id=PAD)
    assert [p.token_ids for p in patterns] == [(A, B), (A, B)]
    heldout = heldout_text()
    explanation = score(N2GExplanation(0, patterns), heldout, actual(b_after_a, heldout))
    assert explanation.precision == 1.0 and explanation.recall == 1.0


def test_a_token_whose_replacement_does_not_matter_becomes_a_wildcard():
    patterns = explain(rule_fn(b_two_after_a), [([4, A, 3, B], 2.0)], pad_token_id=PAD)
    assert [p.token_ids for p in patterns] == [(A, None, B)]
    heldout = heldout_text(1)
    explanation = score(N2GExplanation(0, patterns), heldout, actual(b_two_after_a, heldout))
    assert explanation.precision == 1.0 and explanation.recall == 1.0


def test_a_pattern_too_narrow_for_the_latent_loses_recall_not_precision():
    # The latent fires on every B; the only example shows B after A, and the truncation keeps just "B".
    def any_b(ids, p):
        return ids[p] == B

    patterns = explain(rule_fn(any_b), [([1, A, B], 2.0)], pad_token_id=PAD)
    assert [p.token_ids for p in patterns] == [(B,)]
    narrow = N2GExplanation(0, [Pattern((A, B), 2.0)])
    heldout = heldout_text(2)
    score(narrow, heldout, actual(any_b, heldout))
    expected_recall = actual(b_after_a, heldout).gt(0).sum().item() / actual(any_b, heldout).gt(0).sum().item()
    assert narrow.precision == 1.0 and narrow.recall == pytest.approx(expected_recall)


def test_precision_and_recall_are_none_when_nothing_is_predicted_or_fires():
    predicted = torch.tensor([True, True, False, False])
    fires = torch.tensor([True, False, True, False])
    assert precision_recall(predicted, fires) == (0.5, 0.5)
    assert precision_recall(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)) == (None, None)


def test_an_explanation_serialises_to_json_with_wildcards_shown_as_stars():
    class Tokenizer:
        def decode(self, ids):
            return {A: "A", B: "B"}[ids[0]]

    explanation = N2GExplanation(3, [Pattern((A, None, B), 2.0)], precision=1.0, recall=0.5)
    data = json.loads(json.dumps(explanation.to_dict(Tokenizer())))
    assert data == {
        "latent": 3,
        "precision": 1.0,
        "recall": 0.5,
        "patterns": [{"token_ids": [A, None, B], "activation": 2.0, "tokens": ["A", "*", "B"]}],
    }


def test_the_sae_activation_fn_reads_the_latent_from_the_code_at_each_row_s_position(tiny_llama, tiny_sae, tokens):
    with torch.no_grad():
        code = tiny_sae.encode(capture(tiny_llama, tokens, ["layers.0.resid_post"])["layers.0.resid_post"])
        latent = int(code.indices[1, 4, 0])
        fn = sae_activation_fn(tiny_sae, tiny_llama, "layers.0.resid_post", latent)
        got = fn(tokens, torch.tensor([4, 4, 7]))
    expected = latent_activations(code.indices, code.values, latent)[[0, 1, 2], [4, 4, 7]]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got[1] > 0


def test_n2g_on_an_sae_explains_latents_that_fire_in_the_first_half(tiny_llama, tiny_sae):
    tokens = torch.randint(1, 48, (6, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        code = tiny_sae.encode(capture(tiny_llama, tokens, ["layers.0.resid_post"])["layers.0.resid_post"])
    result = n2g_evaluate(tiny_sae, tiny_llama, tokens, code, pad_token_id=0, n_latents_explained=3, max_suffix=4)
    assert len(result.explanations) == 3
    for explanation in result.explanations:
        harvest = latent_activations(code.indices[:3], code.values[:3], explanation.latent)
        assert harvest.max() > 0
        # Each pattern's activation is one of the latent's top activations in the first half.
        top = set(harvest.flatten().topk(4).values.tolist())
        assert all(any(abs(p.activation - t) < 1e-6 for t in top) for p in explanation.patterns)
    json.dumps([e.to_dict() for e in result.explanations])
