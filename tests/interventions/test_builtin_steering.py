"""Steering on the built-in model (SmolLM2-135M) with the SAE `hfsae train` writes by default."""

import pytest
import torch

import hfsae
from hfsae.interventions import SteeringSweep

DOG_TEXTS = [
    "My dog loves to play fetch in the park. Dogs are loyal pets and puppies bark at strangers.",
    "The puppy wagged its tail and the dog barked at the cat. We walk our dogs every morning.",
]
PROMPTS = ["I went outside and", "My favourite thing is", "The weather today is"]


@torch.no_grad()
def dog_latent(sae, model, tokenizer) -> int:
    """The latent most active on the dog texts beyond three times its mean on general text."""
    from hfsae.activations import builtin_texts

    def mean_code(texts):
        codes = hfsae.features(sae, model, tokenizer, texts, dense=True, max_length=64)
        return torch.cat([feats.dense[1:] for feats in codes]).mean(0)

    general = [text[:400] for text in builtin_texts()[:40]]
    return int((mean_code(DOG_TEXTS) - 3 * mean_code(general)).argmax())


def check_steering_grows_with_strength(sae, model, tokenizer) -> SteeringSweep:
    """Steering the dog latent at 0, 0.25 and 1 × ‖x‖: the latent read while steering and the KL to the
    unsteered model grow with strength. (Whether the generated text itself carries the latent depends on
    the SAE: docs/interventions.md reports a run where it does and one where it does not.)"""
    latent = dog_latent(sae, model, tokenizer)
    sweep = hfsae.steering_sweep(model, sae, tokenizer, latent, [0.0, 0.25, 1.0], relative=True, prompts=PROMPTS,
                                 max_new_tokens=24)
    plain, mild, strong = sweep.points
    assert plain.activation == plain.text_activation  # strength 0: the same reading with and without the hook
    assert plain.activation < mild.activation < strong.activation
    assert plain.kl == 0 < mild.kl < strong.kl
    return sweep


@pytest.mark.slow
def test_steering_the_builtin_model_grows_the_latent_and_kl_with_strength_and_leaves_it_unchanged(
    builtin_lm, default_sae_dir
):
    model, tokenizer = builtin_lm
    sae = hfsae.load(default_sae_dir)
    check_steering_grows_with_strength(sae, model, tokenizer)
    # The model is unchanged afterwards.
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = model(ids).logits
        with hfsae.ablate(model, sae, [0, 1, 2]), hfsae.steer(model, sae, {3: 4.0}):
            assert not torch.equal(model(ids).logits, before)
        assert torch.equal(model(ids).logits, before)
