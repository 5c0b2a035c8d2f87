"""Ablation sparsity: the formula on hand-made logit changes, and ablation against a manual forward."""

import pytest
import torch

from hfsae.activations import FIRST_POSITION_USED
from hfsae.evaluation.ablation import _ablated_logits, ablation_sparsity, sparsity


def test_one_moved_logit_has_the_minimum_sparsity_and_uniform_moves_the_maximum():
    single = torch.zeros(2, 5)
    single[1, 3] = -4.0
    uniform = torch.full((2, 5), 0.7)
    assert sparsity(single).item() == pytest.approx(1 / 10)
    assert sparsity(uniform).item() == pytest.approx(1.0)


def test_sparsity_of_a_hand_made_delta():
    delta = torch.tensor([[3.0, 0.0, -1.0], [0.0, 1.0, 1.0]])  # L1 = 6, L2² = 12
    assert sparsity(delta).item() == pytest.approx(36 / 12 / 6)
    # Batched over leading dimensions.
    torch.testing.assert_close(sparsity(torch.stack([delta, 2 * delta])), torch.tensor([0.5, 0.5]))


def test_an_ablated_row_equals_a_forward_without_that_latent_s_decoder_contribution(tiny_llama, tiny_sae, tokens):
    # At layers.0.resid_pre the activation is the embedding: the manual forward takes inputs_embeds,
    # with the reconstruction after the first position (which keeps its clean activation).
    ids, position = tokens[0, :8], 5
    with torch.no_grad():
        embeddings = tiny_llama.get_input_embeddings()(ids[None])
        code = tiny_sae.encode(embeddings)
        latents = code.indices[0, position, :2]
        logits = _ablated_logits(tiny_sae, tiny_llama, ids, "layers.0.resid_pre", position, latents)
        reconstruction = tiny_sae.decode(code)
        reconstruction[:, :FIRST_POSITION_USED] = embeddings[:, :FIRST_POSITION_USED]
        torch.testing.assert_close(
            logits[0], tiny_llama(inputs_embeds=reconstruction).logits[0, position:], atol=1e-5, rtol=1e-5
        )
        for row, slot in ((1, 0), (2, 1)):
            # layer_norm SAE: a latent adds value · W_dec[latent] · the token's input scale.
            contribution = (
                code.values[0, position, slot] * tiny_sae.W_dec[latents[slot]] * code.input_scale[0, position]
            )
            edited = reconstruction.clone()
            edited[0, position] -= contribution
            expected = tiny_llama(inputs_embeds=edited).logits[0, position:]
            torch.testing.assert_close(logits[row], expected, atol=1e-5, rtol=1e-5)


def test_ablation_sparsity_averages_one_value_per_active_latent_of_each_sampled_token(tiny_llama, tiny_sae, tokens):
    result = ablation_sparsity(tiny_sae, tiny_llama, tokens, hook_point="layers.0.resid_post", n_positions=3, horizon=2)
    assert len(result.values) == 3 * tiny_sae.config.k  # random SAE: every selected latent is positive here
    assert all(1 / (2 * 48) <= value <= 1 for value in result.values)
    assert result.mean == pytest.approx(sum(result.values) / len(result.values))


def test_a_horizon_longer_than_the_context_names_the_valid_range(tiny_llama, tiny_sae, tokens):
    counted = r"horizon must be in 1..11 \(the positions that count in a context of 12\); got horizon=20"
    with pytest.raises(ValueError, match=counted):
        ablation_sparsity(tiny_sae, tiny_llama, tokens, horizon=20)
