"""hfsae.locate: the declared hook point against its neighbours, on a tiny random Llama."""

import torch

from hfsae import TopKSAE, TopKSAEConfig, locate
from hfsae.activations.hook_points import capture
from hfsae.activations.positions import positions_used
from hfsae.locate import candidate_sites

K = 20  # of d 32: enough that the site's own subspace beats its neighbours' in a random model


def subspace_sae(acts: torch.Tensor, hook_point: str) -> TopKSAE:
    """An SAE that reconstructs exactly the top-K principal subspace of `acts` [tokens, d]: latents ±v per direction."""
    mean = acts.mean(0)
    directions = torch.linalg.svd(acts - mean, full_matrices=False).Vh[:K]
    sae = TopKSAE(TopKSAEConfig(d_in=acts.shape[1], n_latents=2 * K, k=K, hook_point=hook_point))
    with torch.no_grad():
        basis = torch.cat([directions, -directions])
        sae.W_enc.copy_(basis)
        sae.W_dec.copy_(basis)
        sae.b_enc.zero_()
        sae.b_pre.copy_(mean)
    return sae.eval()


def seeded_llama():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=300, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64)
    return AutoModelForCausalLM.from_config(config).eval()


def test_the_declared_site_wins_and_a_wrong_declaration_gets_a_warning_naming_the_right_one():
    model = seeded_llama()
    ids = torch.randint(0, 200, (16, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acts = positions_used(capture(model, ids, ["layers.1.resid_post"])["layers.1.resid_post"])
    sae = subspace_sae(acts, "layers.1.resid_post")
    right = locate(sae, model, input_ids=ids)
    assert right.best == "layers.1.resid_post" and right.warning is None
    with torch.no_grad():  # each FVU as hfsae defines it: ‖x − x_hat‖² / ‖x − mean(x)‖², over all tokens
        for site, fvu in right.fits:
            x = positions_used(capture(model, ids, [site])[site]).double()
            expected = ((x - sae(x.float()).x_hat.double()) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
            assert abs(fvu - expected.item()) < 1e-5, site

    sae.config.hook_point = "layers.0.attn_out"
    wrong = locate(sae, model, input_ids=ids)
    assert wrong.best == "layers.1.resid_post"
    assert wrong.warning.startswith("layers.1.resid_post fits clearly better")
    assert "at layers.0.attn_out" in wrong.warning


def test_candidates_are_the_neighbours_the_model_has_and_a_post_mlp_norm_where_there_is_one(tiny_lm):
    from transformers import AutoConfig, AutoModelForCausalLM

    llama = candidate_sites(tiny_lm("llama"), "layers.0.resid_post")
    assert llama[0] == "layers.0.resid_post" and "layers.1.resid_post" in llama
    assert not any(site.startswith("layers.-1") or "post_feedforward" in site for site in llama)
    config = AutoConfig.for_model("gemma2", vocab_size=300, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, head_dim=8)
    gemma2 = AutoModelForCausalLM.from_config(config).eval()
    sites = candidate_sites(gemma2, "layers.1.mlp_out")
    assert "model.layers.1.post_feedforward_layernorm:output" in sites
    ids = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        acts = capture(gemma2, ids, ["layers.1.mlp_out", "model.layers.1.post_feedforward_layernorm:output"])
    assert not torch.allclose(acts["layers.1.mlp_out"], acts["model.layers.1.post_feedforward_layernorm:output"])
