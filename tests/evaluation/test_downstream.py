"""Spliced CE, KL and CE recovered against manual forwards with the replaced activation."""

import pytest
import torch

from hfsae.activations import FIRST_POSITION_USED
from hfsae.evaluation.downstream import downstream_loss, kl_per_token, next_token_ce


def test_next_token_ce_scores_each_position_against_the_following_token():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    input_ids = torch.tensor([[2, 0, 1]])
    expected = torch.tensor([[-torch.log(torch.tensor(0.5)), -torch.log(torch.tensor(0.8))]])
    torch.testing.assert_close(next_token_ce(logits, input_ids), expected)


def test_kl_of_hand_made_distributions():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    expected = 0.5 * torch.log(p[0] / q[0]) + 0.5 * torch.log(p[1] / q[1])
    kl = kl_per_token(p.log()[None, None], q.log()[None, None])
    torch.testing.assert_close(kl, expected.reshape(1, 1))


def manual_ce(model, input_ids, embeddings):
    return next_token_ce(model(inputs_embeds=embeddings).logits, input_ids)[:, FIRST_POSITION_USED:].mean().item()


def test_spliced_ce_equals_a_forward_with_the_reconstruction_in_place_of_the_activation(tiny_llama, tiny_sae, tokens):
    # At layers.0.resid_pre the activation is the token embedding, so a manual forward passes the
    # reconstruction (or zeros) as inputs_embeds — after the first position, which stays clean and
    # whose prediction is not counted.
    loss = downstream_loss(tiny_sae, tiny_llama, tokens, hook_point="layers.0.resid_pre", batch_size=2)
    with torch.no_grad():
        embeddings = tiny_llama.get_input_embeddings()(tokens)
        reconstruction, zeros = embeddings.clone(), embeddings.clone()
        after_first = embeddings[:, FIRST_POSITION_USED:]
        reconstruction[:, FIRST_POSITION_USED:] = tiny_sae.decode(tiny_sae.encode(after_first))
        zeros[:, FIRST_POSITION_USED:] = 0
        clean = manual_ce(tiny_llama, tokens, embeddings)
        spliced = manual_ce(tiny_llama, tokens, reconstruction)
        zero = manual_ce(tiny_llama, tokens, zeros)
        kl = (
            kl_per_token(tiny_llama(inputs_embeds=embeddings).logits, tiny_llama(inputs_embeds=reconstruction).logits)
            [:, FIRST_POSITION_USED:-1]
            .mean()
            .item()
        )
    assert loss.ce_clean == pytest.approx(clean, rel=1e-5)
    assert loss.ce_spliced == pytest.approx(spliced, rel=1e-5)
    assert loss.delta_ce == pytest.approx(spliced - clean, abs=1e-5)
    assert loss.kl == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert loss.ce_zero == pytest.approx(zero, rel=1e-5)
    # A random model barely depends on its input, so the ratio divides small differences.
    assert loss.ce_loss_recovered == pytest.approx((zero - spliced) / (zero - clean), abs=1e-3)
    assert loss.n_tokens == tokens.shape[0] * (tokens.shape[1] - 1 - FIRST_POSITION_USED)


def test_a_perfect_reconstruction_recovers_all_of_the_loss(tiny_llama, tokens):
    class Identity:
        config = type("Config", (), {"hook_point": "layers.1.resid_pre", "target_hook_point": None})

        def encode(self, x):
            return x

        def decode(self, code, *, x=None):
            return code

    loss = downstream_loss(Identity(), tiny_llama, tokens)
    assert loss.delta_ce == pytest.approx(0.0, abs=1e-6)
    assert loss.kl == pytest.approx(0.0, abs=1e-6)
    assert loss.ce_loss_recovered == pytest.approx(1.0, abs=1e-5)


def test_an_sae_without_a_hook_point_asks_for_one(tiny_llama, tiny_sae, tokens):
    tiny_sae.config.hook_point = None
    with pytest.raises(ValueError, match="names no hook_point"):
        downstream_loss(tiny_sae, tiny_llama, tokens)
