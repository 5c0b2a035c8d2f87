"""TopKSAE against a dense re-implementation of docs/method.md §1–2, and its save/load and errors."""

import json

import pytest
import torch
from transformers import AutoModel

import hfsae
from hfsae import SparseCode, TopKSAE, TopKSAEConfig, modeling
from hfsae.folder import SAEFolderError
from hfsae.modeling import FIRING_THRESHOLD, fired_latents, fvu, geometric_median


def make_sae(seed=0, **overrides):
    config = dict(d_in=13, n_latents=50, k=4, k_aux=6)
    config.update(overrides)
    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(**config))
    with torch.no_grad():  # away from the tied init, so that every parameter matters
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        sae.W_dec.mul_(torch.rand(sae.config.n_latents, 1) + 0.5)
        if sae.b_enc is not None:
            sae.b_enc.normal_(0, 0.2)
        sae.b_pre.normal_(0, 0.5)
    return sae


def nmse(x_hat, x):
    return ((x - x_hat) ** 2).sum(-1).mean() / ((x - x.mean(0)) ** 2).sum(-1).mean()


def dense_reference_loss(sae, x, dead_mask=None):
    """The paper's losses written densely with plain torch autograd: the oracle of forward()."""
    c = sae.config
    if c.normalize == "layer_norm":
        mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True) + 1e-5
        x = (x - mean) / std
    elif c.normalize == "unit_norm":
        x = x - x.mean(-1, keepdim=True)
        x = x / x.norm(dim=-1, keepdim=True)
    elif c.normalize == "dataset_scale":
        x = x * c.dataset_scale
    pre = (x - sae.b_pre) @ sae.W_enc.T + (sae.b_enc if sae.b_enc is not None else 0)

    def topk_code(scores, k):
        mask = torch.zeros_like(pre).scatter_(1, scores.topk(k, dim=1).indices, 1.0)
        return (pre * mask).relu()

    x_hat = topk_code(pre, c.k) @ sae.W_dec + sae.b_pre
    loss = fvu = nmse(x_hat, x)
    if c.multi_topk_coef > 0:
        loss = loss + c.multi_topk_coef * nmse(topk_code(pre, c.multi_topk_factor * c.k) @ sae.W_dec + sae.b_pre, x)
    aux = None
    if dead_mask is not None:
        k_aux = min(c.k_aux_effective, int(dead_mask.sum()))
        residual = (x - x_hat).detach()
        aux = nmse(topk_code(pre.masked_fill(~dead_mask, float("-inf")), k_aux) @ sae.W_dec, residual)
        loss = loss + c.aux_k_coef * aux
    return loss, fvu, aux


def parameter_grads(sae, loss):
    return torch.autograd.grad(loss, [p for p in sae.parameters()])


@pytest.mark.parametrize("aux_path", ["dense", "sparse"])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"normalize": "layer_norm", "multi_topk_coef": 0.125},
        {"normalize": "unit_norm", "latent_bias": False},
        {"normalize": "dataset_scale", "dataset_scale": 0.7, "k": 1},
    ],
)
def test_forward_losses_and_gradients_equal_the_dense_reference(monkeypatch, aux_path, backend, overrides):
    # AuxK runs densely over the dead latents when they are few, sparsely otherwise: test both.
    monkeypatch.setattr(modeling, "AUX_DENSE_MAX_RATIO", 1000 if aux_path == "dense" else 0)
    sae = make_sae(**overrides)
    sae.ops_backend = backend
    x = torch.randn(9, 13) * 2 + 1
    dead = torch.zeros(50, dtype=torch.bool)
    dead[::4] = True

    out = sae(x, dead_mask=dead)
    ref_loss, ref_fvu, ref_aux = dense_reference_loss(sae, x, dead)

    torch.testing.assert_close(out.fvu, ref_fvu)
    torch.testing.assert_close(out.aux_loss, ref_aux)
    torch.testing.assert_close(out.loss, ref_loss)
    for got, expected in zip(parameter_grads(sae, out.loss), parameter_grads(sae, ref_loss)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("aux_path", ["dense", "sparse"])
def test_auxk_alone_leaves_dense_weight_gradients_equal_to_the_reference(monkeypatch, aux_path):
    # AuxK's gradient reaches W_enc / W_dec as sparse rows; with no main-path gradient to add them to,
    # .grad must still come out dense, for the optimizers.
    monkeypatch.setattr(modeling, "AUX_DENSE_MAX_RATIO", 1000 if aux_path == "dense" else 0)
    sae = make_sae()
    x = torch.randn(9, 13)
    dead = torch.zeros(50, dtype=torch.bool)
    dead[::4] = True
    sae(x, dead_mask=dead).aux_loss.backward()
    expected = torch.autograd.grad(dense_reference_loss(sae, x, dead)[2], [sae.W_enc, sae.W_dec])
    for weight, want in zip((sae.W_enc, sae.W_dec), expected):
        assert weight.grad.layout == torch.strided
        torch.testing.assert_close(weight.grad, want, rtol=1e-4, atol=1e-5)


def test_batch_of_one_with_k_one():
    sae = make_sae(k=1)
    x = torch.randn(1, 13)
    out = sae(x)
    torch.testing.assert_close(out.loss, dense_reference_loss(sae, x)[0])


def test_decode_of_encode_equals_forward_reconstruction_for_any_leading_shape():
    sae = make_sae(normalize="layer_norm")
    x = torch.randn(2, 3, 13)
    code = sae.encode(x)
    assert code.indices.shape == (2, 3, 4)
    torch.testing.assert_close(sae.decode(code), sae(x).x_hat)


def test_layer_norm_reconstruction_is_in_the_input_scale():
    sae = make_sae(normalize="layer_norm")
    x = torch.randn(5, 13) * 10 + 3
    code = sae.encode(x)
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
    expected = (code.to_dense(50) @ sae.W_dec + sae.b_pre) * std + mean  # std without eps, as OpenAI decodes
    torch.testing.assert_close(sae.decode(code), expected)


def test_progressive_k_at_inference_keeps_the_largest_latents():
    sae = make_sae()
    x = torch.randn(4, 13)
    small, large = sae.encode(x, k=2), sae.encode(x, k=8)
    torch.testing.assert_close(small.values, large.values[:, :2])


def test_without_dead_latents_aux_loss_is_zero():
    sae = make_sae()
    out = sae(torch.randn(6, 13), dead_mask=torch.zeros(50, dtype=torch.bool))
    assert out.aux_loss.item() == 0.0


def test_tied_init_gives_unit_norm_decoder_rows_equal_to_the_encoder():
    sae = TopKSAE(TopKSAEConfig(d_in=7, n_latents=20, k=3))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(20))
    assert torch.equal(sae.W_enc, sae.W_dec)
    assert sae.b_enc.abs().sum() == 0 and sae.b_pre.abs().sum() == 0


def test_decoder_gradient_projection_then_renormalisation_keeps_rows_unit_norm():
    sae = make_sae()
    sae.normalize_decoder_()
    sae(torch.randn(8, 13)).loss.backward()
    sae.project_decoder_grad_()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-6
    with torch.no_grad():
        sae.W_dec -= 0.1 * sae.W_dec.grad
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(50))


def test_geometric_median_minimises_the_sum_of_distances_as_scipy_finds():
    from scipy.optimize import minimize

    points = torch.randn(300, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) ** 3
    total_distance = lambda m: float((points - torch.as_tensor(m)).norm(dim=1).sum())  # noqa: E731
    expected = minimize(total_distance, points.mean(0).numpy(), method="Nelder-Mead",
                        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}).x
    torch.testing.assert_close(geometric_median(points, tolerance=1e-12, iterations=2000),
                               torch.as_tensor(expected), atol=1e-4, rtol=0)


def test_init_b_pre_sets_the_geometric_median_of_the_normalised_sample():
    sae = make_sae(normalize="dataset_scale", dataset_scale=2.0)
    sample = torch.randn(200, 13) + 5
    sae.init_b_pre_(sample)
    torch.testing.assert_close(sae.b_pre.detach(), geometric_median(sample * 2.0))


def test_save_then_load_gives_a_bit_identical_model(tmp_path):
    sae = make_sae(normalize="layer_norm", hook_point="layers.3.resid_post", base_model="tiny")
    sae.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, TopKSAE) and loaded.config.hook_point == "layers.3.resid_post"
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    x = torch.randn(5, 13)
    assert torch.equal(sae(x).x_hat, loaded(x).x_hat)


def test_an_input_of_the_wrong_width_names_both_widths():
    with pytest.raises(ValueError, match=r"d_in=13.*\(3, 12\) \(last dimension 12\)"):
        make_sae().encode(torch.randn(3, 12))


def test_non_finite_input_is_refused():
    x = torch.randn(3, 13)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        make_sae()(x)


def test_a_code_outside_the_dictionary_is_refused():
    code = SparseCode(indices=torch.tensor([[0, 50]]), values=torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        make_sae().decode(code)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"k": 50}, "k must be in 1..49"),
        ({"n_latents": 0}, "n_latents must be a positive integer"),
        ({"normalize": "batch_norm"}, "normalize must be one of"),
        ({"aux_k_coef": -1.0}, "non-negative"),
        ({"aux_k_coef": float("inf")}, r"aux_k_coef must be a finite number; got aux_k_coef=inf"),
        ({"multi_topk_coef": float("nan")}, r"multi_topk_coef must be a finite number; got multi_topk_coef=nan"),
        ({"k": 4.5}, r"k must be an integer; got k=4\.5"),
        ({"k": True}, r"k must be an integer; got k=True"),
        ({"d_in": 4.0}, r"d_in must be an integer; got d_in=4\.0"),
        ({"n_latents": "50"}, r"n_latents must be an integer; got n_latents='50'"),
    ],
)
def test_bad_configs_raise_value_errors_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        TopKSAEConfig(**{"d_in": 4, "n_latents": 50, **overrides})


def test_a_bad_config_json_fails_on_load_with_the_same_message(tmp_path):
    make_sae().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["k"] = 500
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="k must be in"):
        TopKSAE.from_pretrained(tmp_path)


def test_a_corrupt_weight_file_is_named_in_the_error(tmp_path):
    make_sae().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SAEFolderError, match=r"model\.safetensors is not a readable safetensors file"):
        TopKSAE.from_pretrained(tmp_path)


def test_a_missing_weight_file_is_named_in_the_error(tmp_path):
    make_sae().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    for load in (TopKSAE.from_pretrained, hfsae.load, hfsae.load_many):
        with pytest.raises(FileNotFoundError, match=r"has a config\.json but no model\.safetensors"):
            load(tmp_path)


def test_load_many_refuses_a_folder_whose_weights_are_missing_rather_than_leaving_it_out(tmp_path):
    for layer in (2, 10):
        make_sae(layer).save_pretrained(tmp_path / f"layers.{layer}")
    assert list(hfsae.load_many(tmp_path)) == ["layers.2", "layers.10"]
    (tmp_path / "layers.10" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"layers\.10 has a config\.json but no model\.safetensors"):
        hfsae.load_many(tmp_path)
    assert hfsae.load(tmp_path, hookpoint="layers.2").W_dec.shape == (50, 13)  # one SAE named: the others may be broken


def test_fvu_is_the_fraction_of_variance_unexplained():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean [2, 1]: total squared deviation 2 per token
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 2.0]])  # squared error 1 on the first token only
    assert fvu(x_hat, x).item() == pytest.approx(0.5 / 2)
    assert fvu(x_hat, x, variance=4.0).item() == pytest.approx(0.5 / 4)
    assert fvu(x, x).item() == 0


def test_fired_latents_counts_only_values_above_the_threshold():
    indices = torch.tensor([[0, 1], [1, 2]])
    values = torch.tensor([[1.0, FIRING_THRESHOLD], [2 * FIRING_THRESHOLD, 0.0]])
    assert fired_latents(indices, values, 4).tolist() == [True, True, False, False]


def test_an_empty_batch_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"input of shape \(0, 13\) holds no rows"):
        make_sae().encode(torch.randn(0, 13))


def test_k_at_inference_must_be_an_integer_in_range():
    with pytest.raises(ValueError, match=r"k must be an integer in 1\.\.50; got k=2\.0"):
        make_sae().encode(torch.randn(2, 13), k=2.0)


def edit_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    save_file(edit(tensors), folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(config)))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: {k: v for k, v in t.items() if k != "W_dec"}, r"model\.safetensors does not hold .*: it lacks W_dec\."),
        (lambda t: {}, r"model\.safetensors does not hold .*: it lacks W_dec, W_enc, b_enc, b_pre\."),
        (lambda t: t | {"extra": torch.zeros(2)}, r"model\.safetensors does not hold .*unexpected tensors extra"),
    ],
)
def test_weights_missing_or_foreign_tensors_are_refused(tmp_path, edit, message):
    make_sae().save_pretrained(tmp_path)
    edit_weights(tmp_path, edit)
    for load in (TopKSAE.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(SAEFolderError, match=message):
            load(tmp_path)


def test_weights_shaped_unlike_config_json_are_refused(tmp_path):
    make_sae().save_pretrained(tmp_path)
    edit_config(tmp_path, lambda config: config | {"d_in": 12})
    with pytest.raises(SAEFolderError, match=r"W_dec has shape \(50, 13\) where config\.json \(d_in=12, n_latents=50\) needs \(50, 12\)"):
        TopKSAE.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", r"config\.json should hold a JSON object; it holds a list"),
        (json.dumps({"model_type": "llama", "hidden_size": 13}), r"config\.json describes a model of type 'llama', not a TopK SAE"),
    ],
)
def test_a_config_json_that_is_no_sae_config_is_refused(tmp_path, content, message):
    make_sae().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(SAEFolderError, match=message):
        TopKSAE.from_pretrained(tmp_path)
    with pytest.raises(SAEFolderError, match=message):
        TopKSAEConfig.from_pretrained(tmp_path)


def test_a_llama_model_folder_is_not_loaded_as_an_sae(tmp_path, tiny_lm):
    tiny_lm("llama").save_pretrained(tmp_path)
    with pytest.raises(SAEFolderError, match=r"type 'llama', not a TopK SAE"):
        TopKSAE.from_pretrained(tmp_path)


def test_a_shape_mismatch_can_still_be_ignored_as_in_transformers(tmp_path):
    make_sae().save_pretrained(tmp_path)
    edit_config(tmp_path, lambda config: config | {"d_in": 12})
    sae = TopKSAE.from_pretrained(tmp_path, ignore_mismatched_sizes=True)
    assert sae.W_dec.shape == (50, 12)
