"""Steering on the built-in model (SmolLM2-135M) with the SAE `hfsae train` writes by default."""

import pytest
import torch

import hfsae

DOG_TEXTS = [
    "My dog loves to play fetch in the park. Dogs are loyal pets and puppies bark at strangers.",
    "The puppy wagged its tail and the dog barked at the cat. We walk our dogs every morning.",
]


@pytest.mark.slow
@torch.no_grad()
def test_steering_a_dog_latent_raises_its_activation_on_the_generated_text(builtin_lm, default_sae_dir):
    from hfsae.activations import builtin_texts

    model, tokenizer = builtin_lm
    sae = hfsae.load(default_sae_dir)

    def mean_code(texts):
        codes = hfsae.features(sae, model, tokenizer, texts, dense=True, max_length=64)
        return torch.cat([feats.dense[1:] for feats in codes]).mean(0)

    # The latent most specific to the dog texts: strong there, rare on general text.
    general = [text[:400] for text in builtin_texts()[:20]]
    latent = int((mean_code(DOG_TEXTS) / (mean_code(general) + 0.01)).argmax())
    prompts = ["I went outside and", "My favourite thing is", "The weather today is"]
    sweep = hfsae.steering_sweep(model, sae, tokenizer, latent, [0.0, 0.5], relative=True, prompts=prompts,
                                 max_new_tokens=24)
    plain, steered = sweep.points
    assert steered.text_activation > plain.text_activation, (plain.continuations, steered.continuations)
    assert steered.activation > plain.activation
    assert steered.kl > 0 and plain.kl == 0
    # The model is unchanged afterwards.
    ids = tokenizer("I went outside and", return_tensors="pt")["input_ids"]
    before = model(ids).logits
    with hfsae.ablate(model, sae, [latent]), hfsae.steer(model, sae, {latent: 4.0}):
        model(ids)
    assert torch.equal(model(ids).logits, before)
