"""hfsae.features / steer / ablate / clamp / splice / steering_sweep on tiny random transformers models.

References are computed by hand from the public SAE API (encode, decode, W_dec) and
hfsae.activations.capture, never through the code under test.
"""

import copy

import pytest
import torch

import hfsae
from hfsae import TopKSAE, TopKSAEConfig
from hfsae.activations import capture
from hfsae.interventions import InterventionError, SteeringSweep, plot_sweep

HOOK_POINT = "layers.1.resid_post"


def make_sae(normalize="none", hook_point=HOOK_POINT, seed=0):
    torch.manual_seed(seed)
    return TopKSAE(TopKSAEConfig(d_in=32, n_latents=64, k=4, hook_point=hook_point, normalize=normalize)).eval()


@pytest.fixture(scope="module")
def model(tiny_lm):
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(1)
    return torch.randint(0, 256, (2, 12))


def logits_with_replaced(model, ids, fn, hook_point=HOOK_POINT):
    """Reference: logits with the hook-point activation x [batch, seq, d] replaced by fn(x) (via a plain torch hook)."""
    from hfsae.activations import resolve

    point = resolve(model, hook_point)
    handle = point.module.register_forward_hook(lambda m, a, out: (fn(out[0]), *out[1:]) if isinstance(out, tuple) else fn(out))
    try:
        return model(ids).logits
    finally:
        handle.remove()


@torch.no_grad()
@pytest.mark.parametrize("normalize", ["none", "layer_norm"])
def test_steer_adds_strength_times_the_unit_decoder_direction_after_the_first_position(model, ids, normalize):
    sae = make_sae(normalize)
    unit = sae.W_dec[5] / sae.W_dec[5].norm()

    def expected(x):
        out = x.clone()
        out[:, 1:] += 3.0 * unit
        return out

    with hfsae.steer(model, sae, {5: 3.0}):
        got = model(ids).logits
    torch.testing.assert_close(got, logits_with_replaced(model, ids, expected))


@torch.no_grad()
def test_relative_strength_scales_with_each_tokens_activation_norm(model, ids):
    sae = make_sae()
    unit = sae.W_dec[7] / sae.W_dec[7].norm()

    def expected(x):
        return x + 0.5 * x.norm(dim=-1, keepdim=True) * unit

    with hfsae.steer(model, sae, {7: 0.5}, relative=True, positions=slice(0, None)):
        got = model(ids).logits
    torch.testing.assert_close(got, logits_with_replaced(model, ids, expected))


@torch.no_grad()
@pytest.mark.parametrize("normalize", ["none", "layer_norm"])
def test_ablate_removes_only_the_named_latents_and_keeps_the_error_term(model, ids, normalize):
    sae = make_sae(normalize)
    acts = capture(model, ids, HOOK_POINT)[HOOK_POINT]
    latent = int(sae.encode(acts[:, 1:]).indices[0, 0, 0])  # one that fires

    def expected(x):
        code = sae.encode(x[:, 1:])
        kept = code.values * (code.indices != latent)
        edited = sae.decode(hfsae.SparseCode(code.indices, kept, code.input_mean, code.input_scale))
        return torch.cat([x[:, :1], x[:, 1:] - sae.decode(code) + edited], dim=1)

    with hfsae.ablate(model, sae, [latent]):
        got = model(ids).logits
    torch.testing.assert_close(got, logits_with_replaced(model, ids, expected))
    assert not torch.equal(got, model(ids).logits)


@torch.no_grad()
def test_ablating_a_latent_that_never_fired_changes_nothing_bit_for_bit(model, ids):
    sae = make_sae("layer_norm")
    acts = capture(model, ids, HOOK_POINT)[HOOK_POINT]
    fired = set(sae.encode(acts).indices.flatten().tolist())
    silent = next(latent for latent in range(64) if latent not in fired)
    with hfsae.ablate(model, sae, [silent]) as ablation:
        got = model(ids).logits
    assert ablation.calls == 1
    assert torch.equal(got, model(ids).logits)


@torch.no_grad()
def test_clamp_sets_a_latent_to_its_value_whether_it_fired_or_not(model, ids):
    sae = make_sae()

    def expected(x):
        code = sae.encode(x[:, 1:])
        current = (code.values * (code.indices == 9)).sum(-1, keepdim=True)  # 0 where latent 9 is not in the top k
        return torch.cat([x[:, :1], x[:, 1:] + (2.5 - current) * sae.W_dec[9]], dim=1)

    with hfsae.clamp(model, sae, {9: 2.5}):
        got = model(ids).logits
    torch.testing.assert_close(got, logits_with_replaced(model, ids, expected), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_splice_replaces_the_activation_with_the_reconstruction(model, ids):
    sae = make_sae("layer_norm")

    def expected(x):
        return torch.cat([x[:, :1], sae.decode(sae.encode(x[:, 1:]))], dim=1)

    with hfsae.splice(model, sae):
        got = model(ids).logits
    torch.testing.assert_close(got, logits_with_replaced(model, ids, expected))


@torch.no_grad()
def test_nested_interventions_compose_and_the_model_is_bit_identical_after_exit_and_after_an_error(model, ids):
    sae, other = make_sae(), make_sae(hook_point="layers.0.resid_post", seed=1)
    before = model(ids).logits
    hooks_before = registered_hooks(model)  # transformers keeps hooks of its own once hidden states were asked for
    with hfsae.steer(model, sae, {1: 4.0}):
        with hfsae.clamp(model, other, {2: 1.0}), hfsae.ablate(model, sae, [3]):
            both = model(ids).logits
        steered = model(ids).logits
    assert not torch.equal(both, steered) and not torch.equal(steered, before)
    with pytest.raises(KeyError):
        with hfsae.steer(model, sae, {1: 4.0}), hfsae.splice(model, other):
            model(ids)
            raise KeyError("boom")
    assert torch.equal(model(ids).logits, before)
    assert registered_hooks(model) == hooks_before


def registered_hooks(model) -> dict[str, tuple[list, list]]:
    """Every module's forward and forward-pre hooks, by module name."""
    return {name: (list(module._forward_hooks.values()), list(module._forward_pre_hooks.values()))
            for name, module in model.named_modules()}


@torch.no_grad()
def test_steering_generate_with_a_kv_cache_edits_generated_positions_as_a_full_forward_does(model, ids):
    sae = make_sae()
    prompt = ids[:1, :6]
    with hfsae.steer(model, sae, {4: 6.0}, positions=slice(8, None)) as steering:
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                             pad_token_id=0)
    assert steering.calls == 5 and steering.edited == 2  # prompt + 4 cached steps; positions 8 and 9 steered
    # Reference: greedy decoding without a cache, steering positions ≥ 8 of the whole sequence each step.
    unit = sae.W_dec[4] / sae.W_dec[4].norm()

    def steered_from_8(x):
        out = x.clone()
        out[:, 8:] += 6.0 * unit
        return out

    sequence = prompt
    for _ in range(5):
        logits = logits_with_replaced(model, sequence, steered_from_8)
        sequence = torch.cat([sequence, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, sequence)


def test_an_intervention_that_never_took_effect_raises_on_exit(model, ids):
    sae = make_sae()
    with pytest.raises(InterventionError, match="never ran"):
        with hfsae.steer(model, sae, {1: 1.0}):
            pass
    with pytest.raises(InterventionError, match="changed nothing"):
        with torch.no_grad(), hfsae.ablate(model, sae, [1], positions=[100]):
            model(ids)


def test_bad_arguments_get_one_line_errors(model):
    sae = make_sae()
    with pytest.raises(ValueError, match="0–63"):
        hfsae.steer(model, sae, {64: 1.0})
    with pytest.raises(ValueError, match="finite"):
        hfsae.clamp(model, sae, {1: float("nan")})
    with pytest.raises(ValueError, match="non-empty mapping"):
        hfsae.steer(model, sae, {})
    with pytest.raises(ValueError, match="positions"):
        hfsae.ablate(model, sae, [1], positions=[-1])
    with pytest.raises(hfsae.activations.HookPointError):
        with hfsae.splice(model, sae, hook_point="layers.9.resid_post"):
            pass
    with pytest.raises(ValueError, match="hook_point"):
        hfsae.splice(model, make_sae(hook_point=None))


@torch.no_grad()
def test_features_match_the_code_of_each_text_for_several_saes_in_one_forward(model, tiny_tokenizer):
    first, second = make_sae(), make_sae("layer_norm", hook_point="layers.2.mlp_out", seed=2)
    texts = ["hello world", "a much longer text than the first one", "x"]
    by_sae = hfsae.features([first, second], model, tiny_tokenizer, texts, batch_size=2, dense=True)
    for sae, results in zip((first, second), by_sae):
        point = sae.config.hook_point
        for text, feats in zip(texts, results):
            ids = tiny_tokenizer(text, return_tensors="pt")["input_ids"]
            code = sae.encode(capture(model, ids, point)[point][0])
            assert feats.tokens == [tiny_tokenizer.decode([i]) for i in ids[0].tolist()]
            torch.testing.assert_close(feats.dense, code.to_dense(64), atol=1e-5, rtol=1e-5)
            assert (feats.values[:, :-1] >= feats.values[:, 1:]).all()  # strongest first
            torch.testing.assert_close(feats.values.sum(-1), code.values.sum(-1), atol=1e-5, rtol=1e-5)
    (top1,) = hfsae.features(first, model, tiny_tokenizer, "hello", top=1)
    assert top1.indices.shape == (5, 1) and top1.dense is None


@torch.no_grad()
def test_steering_sweep_measures_activation_kl_and_delta_ce_against_hand_computed_values(model, tiny_tokenizer,
                                                                                         tmp_path):
    from hfsae.evaluation.downstream import kl_per_token, next_token_ce

    sae = make_sae()
    heldout = ["The quick brown fox jumps over the lazy dog."]
    sweep = hfsae.steering_sweep(model, sae, tiny_tokenizer, 4, [0.0, 20.0], prompts=["hi"], heldout=heldout,
                                 max_new_tokens=6)
    zero, strong = sweep.points
    assert (zero.kl, zero.delta_ce) == (0.0, 0.0) and zero.activation == zero.text_activation
    ids = tiny_tokenizer(heldout[0], return_tensors="pt")["input_ids"]
    unit = sae.W_dec[4] / sae.W_dec[4].norm()
    clean = model(ids).logits
    steered = logits_with_replaced(model, ids, lambda x: torch.cat([x[:, :1], x[:, 1:] + 20.0 * unit], dim=1))
    assert strong.kl == pytest.approx(float(kl_per_token(clean, steered)[:, 1:-1].mean()), rel=1e-4)
    expected_delta = float(next_token_ce(steered, ids)[:, 1:].mean() - next_token_ce(clean, ids)[:, 1:].mean())
    assert strong.delta_ce == pytest.approx(expected_delta, rel=1e-4, abs=1e-6)
    assert strong.activation > zero.activation  # the steered direction is read back by the encoder
    assert [row[0] for row in sweep.rows()] == [0.0, 20.0] and len(SteeringSweep.HEADERS) == len(sweep.rows()[0])
    assert plot_sweep(sweep, tmp_path / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "qwen2", "gemma"])
@pytest.mark.parametrize("hook_point", ["layers.1.resid_pre", "layers.1.mlp_out"])
def test_interventions_work_on_every_tiny_family(tiny_lm, ids, family, hook_point):
    model = copy.deepcopy(tiny_lm(family))
    sae = make_sae(hook_point=hook_point)
    with torch.no_grad():
        before = model(ids).logits
        with hfsae.steer(model, sae, {0: 5.0}):
            assert not torch.equal(model(ids).logits, before)
        assert torch.equal(model(ids).logits, before)


def test_the_steer_command_prints_the_sweep_steering_sweep_measures_and_saves_its_plot(
    tiny_lm, tiny_tokenizer, tmp_path, capsys
):
    from hfsae.activations import load_language_model
    from hfsae.cli import main

    tiny_lm("llama").save_pretrained(tmp_path / "lm")
    tiny_tokenizer.save_pretrained(tmp_path / "lm")
    sae = make_sae()
    sae.config.base_model = str(tmp_path / "lm")
    sae.save_pretrained(tmp_path / "sae")
    heldout = "Sparse autoencoders find features in the residual stream."
    options = ["--latent", "3", "--prompt", "hi", "--max-new-tokens", "4", "--heldout", heldout]
    assert main(["steer", str(tmp_path / "sae"), *options, "--sweep", "0", "12", "--plot", str(tmp_path / "s.png")]) == 0
    printed = capsys.readouterr().out.splitlines()
    table = [[float(cell) for cell in line.split(" | ")] for line in printed if line[:1].isdigit()]
    model, tokenizer = load_language_model(str(tmp_path / "lm"), quiet=True)
    expected = hfsae.steering_sweep(model, TopKSAE.from_pretrained(tmp_path / "sae"), tokenizer, 3, [0, 12],
                                    prompts=["hi"], heldout=[heldout], max_new_tokens=4)
    assert sum(table, []) == pytest.approx(sum(expected.rows(), []), abs=1e-4)
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["steer", str(tmp_path / "sae"), *options, "--strength", "12"]) == 0
    assert repr(expected.points[1].continuations[0]) in capsys.readouterr().out
    assert main(["steer", str(tmp_path / "sae"), "--prompt", "hi"]) == 1
    assert "--latent" in capsys.readouterr().err
