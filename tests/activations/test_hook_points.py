"""Hook points: naming across architectures, capture with early stopping, splicing."""

import pytest
import torch

from hfsae.activations.hook_points import (
    HookPointError,
    capture,
    decoder_layers,
    resolve,
    splice,
    valid_hook_points,
)

FAMILIES = ["gpt2", "llama", "gpt_neox", "qwen2", "gemma"]
N_LAYERS = 3


def random_ids(batch=2, seq=9, seed=0):
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def full_hidden_states(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_layers_are_found_from_the_config_layer_count(tiny_lm, family):
    model = tiny_lm(family)
    layers = decoder_layers(model)
    assert len(layers) == N_LAYERS
    assert len({type(layer) for layer in layers}) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_stream_captured_with_early_stopping_equals_the_full_hidden_states(tiny_lm, family):
    model, ids = tiny_lm(family), random_ids()
    hidden_states = full_hidden_states(model, ids)  # [embeddings, layer 0 out, ..., final norm(last)]
    names = [f"layers.{i}.resid_pre" for i in range(N_LAYERS)] + [f"layers.{i}.resid_post" for i in range(N_LAYERS - 1)]
    with torch.no_grad():
        captured = capture(model, ids, names)
    for i in range(N_LAYERS):
        torch.testing.assert_close(captured[f"layers.{i}.resid_pre"], hidden_states[i])
    for i in range(N_LAYERS - 1):
        torch.testing.assert_close(captured[f"layers.{i}.resid_post"], hidden_states[i + 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_last_layer_output_is_the_hidden_state_before_the_final_norm(tiny_lm, family):
    model, ids = tiny_lm(family), random_ids()
    last = f"layers.{N_LAYERS - 1}.resid_post"
    final_norm = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}.get(family, "model.norm")
    with torch.no_grad():
        captured = capture(model, ids, [last, f"{final_norm}:output"], stop_early=False)
        renormed = model.get_submodule(final_norm)(captured[last])
    torch.testing.assert_close(renormed, full_hidden_states(model, ids)[-1])
    torch.testing.assert_close(captured[f"{final_norm}:output"], full_hidden_states(model, ids)[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_early_stopping_skips_the_layers_after_the_deepest_hook_point(tiny_lm, family):
    model, ids = tiny_lm(family), random_ids()
    ran = []
    handles = [
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(decoder_layers(model))
    ]
    try:
        with torch.no_grad():
            capture(model, ids, ["layers.1.attn_out", "layers.0.resid_post"])
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0]  # layer 1 started (its attention ran) but never finished; layer 2 never ran


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_and_mlp_outputs_add_up_to_the_layer_update(tiny_lm, family):
    # All five families add both block outputs to the residual stream (GPT-NeoX in parallel; its
    # dropouts are the identity in eval mode).
    model, ids = tiny_lm(family), random_ids()
    names = ["layers.1.resid_pre", "layers.1.attn_out", "layers.1.mlp_out", "layers.1.resid_post"]
    with torch.no_grad():
        acts = capture(model, ids, names)
    expected = acts["layers.1.resid_pre"] + acts["layers.1.attn_out"] + acts["layers.1.mlp_out"]
    torch.testing.assert_close(acts["layers.1.resid_post"], expected)


def test_a_raw_module_path_captures_its_output_by_default_and_its_input_on_request(tiny_lm):
    model, ids = tiny_lm("llama"), random_ids()
    with torch.no_grad():
        acts = capture(model, ids, ["model.layers.1.mlp", "model.layers.1.mlp:input", "layers.1.mlp_out"])
        layer = decoder_layers(model)[1]
        expected_input = layer.post_attention_layernorm(
            capture(model, ids, ["layers.1.resid_pre"])["layers.1.resid_pre"]
            + capture(model, ids, ["layers.1.attn_out"])["layers.1.attn_out"]
        )
    torch.testing.assert_close(acts["model.layers.1.mlp"], acts["layers.1.mlp_out"])
    torch.testing.assert_close(acts["model.layers.1.mlp:input"], expected_input)


def test_resolve_reports_kind_module_and_layer(tiny_lm):
    model = tiny_lm("gpt2")
    point = resolve(model, "layers.2.attn_out")
    assert (point.kind, point.layer, point.module) == ("output", 2, model.transformer.h[2].attn)
    point = resolve(model, "transformer.h.1.mlp.c_fc:input")
    assert (point.kind, point.layer, point.module) == ("input", 1, model.transformer.h[1].mlp.c_fc)
    assert resolve(model, "transformer.wte").layer is None


def test_a_layer_past_the_last_one_names_the_valid_range(tiny_lm):
    with pytest.raises(HookPointError, match=r"has 3 layers \(0–2\); got layer 5"):
        resolve(tiny_lm("llama"), "layers.5.resid_post")


def test_an_unknown_hook_point_lists_the_valid_names_and_the_nearest(tiny_lm):
    with pytest.raises(
        HookPointError,
        match=r"layers\.\{0–2\}\.\{resid_pre,resid_post,attn_out,mlp_out\}.*"
        r"Nearest: .*model\.layers\.1\.mlp",
    ):
        resolve(tiny_lm("llama"), "model.layers.1.mpl")


def test_an_unknown_suffix_is_rejected(tiny_lm):
    with pytest.raises(HookPointError, match=r"':input' or ':output', not ':middle'"):
        resolve(tiny_lm("llama"), "model.layers.1.mlp:middle")


def test_valid_hook_points_resolve_and_include_every_layer_site(tiny_lm):
    model = tiny_lm("gpt_neox")
    names = valid_hook_points(model)
    for i in range(N_LAYERS):
        for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
            assert f"layers.{i}.{site}" in names
    assert "gpt_neox.layers.0.attention" in names
    for name in names[:20]:
        resolve(model, name)


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_after_capture_even_when_the_forward_fails(tiny_lm):
    model = tiny_lm("llama")
    before = hook_count(model)
    with pytest.raises(IndexError):
        capture(model, torch.full((1, 4), 10_000), ["layers.1.resid_post"])  # id past the vocabulary
    assert hook_count(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_splicing_the_identity_leaves_the_logits_unchanged(tiny_lm, family):
    model, ids = tiny_lm(family), random_ids()
    before = hook_count(model)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        for name in ["layers.1.resid_pre", "layers.1.resid_post", "layers.1.attn_out"]:
            with splice(model, name, lambda x: x.clone()):
                torch.testing.assert_close(model(input_ids=ids).logits, expected)
    assert hook_count(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_splicing_the_output_of_a_layer_equals_splicing_the_input_of_the_next(tiny_lm, family):
    model, ids = tiny_lm(family), random_ids()
    shift = lambda x: x * 0.5 + 1.0
    with torch.no_grad():
        with splice(model, "layers.0.resid_post", shift):
            after_output = model(input_ids=ids).logits
        with splice(model, "layers.1.resid_pre", shift):
            after_input = model(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(after_output, after_input)
    assert not torch.allclose(after_output, plain)


def test_a_spliced_activation_is_what_the_next_hook_point_sees(tiny_lm):
    model, ids = tiny_lm("qwen2"), random_ids()
    with torch.no_grad(), splice(model, "layers.0.resid_post", torch.zeros_like):
        acts = capture(model, ids, ["layers.1.resid_pre"])
    assert torch.count_nonzero(acts["layers.1.resid_pre"]) == 0


def test_splicing_a_tuple_output_replaces_its_first_element(tiny_lm):
    # Llama's attention returns (output, weights) and the layer unpacks both: the splice must keep
    # the tuple, and the layer must then add only the MLP output to the residual stream.
    model, ids = tiny_lm("llama"), random_ids()
    names = ["layers.0.resid_pre", "layers.0.mlp_out", "layers.0.resid_post"]
    with torch.no_grad(), splice(model, "layers.0.attn_out", torch.zeros_like):
        acts = capture(model, ids, names)
    torch.testing.assert_close(acts["layers.0.resid_post"], acts["layers.0.resid_pre"] + acts["layers.0.mlp_out"])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_embed_tokens_is_the_token_embeddings_output(tiny_lm, family):
    model, ids = tiny_lm(family), random_ids()
    assert "embed_tokens" in valid_hook_points(model)
    point = resolve(model, "embed_tokens")
    assert point.module is model.get_input_embeddings() and point.kind == "output"
    with torch.no_grad():
        captured = capture(model, ids, ["embed_tokens"])["embed_tokens"]
    torch.testing.assert_close(captured, model.get_input_embeddings()(ids))
    if family == "llama":  # Llama adds nothing to the embeddings before layer 0
        torch.testing.assert_close(captured, full_hidden_states(model, ids)[0])
