"""TopK transcoders: read one activation, predict another; forward against dense torch, splicing, save and load."""


import pytest
import torch
from safetensors.torch import load_file

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.activations import FIRST_POSITION_USED, capture, splice
from hfsae.evaluation.downstream import downstream_loss, replaced_after_first
from hfsae.evaluation.metrics import omitted_metrics, reconstruction_metrics


def make(d_in=12, d_out=20, seed=0, **options) -> TopKSAE:
    torch.manual_seed(seed)
    config = TopKSAEConfig(d_in=d_in, d_out=d_out, n_latents=48, k=4, target_hook_point="layers.0.mlp_out", **options)
    sae = TopKSAE(config)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)  # b_pre, b_enc and W_skip away from 0
    return sae


def dense_prediction(sae, x, *, subtract=False):
    """The reference: ReLU(TopK(W_enc x + b_enc)) decoded, + b_pre, + W_skip x (sparsify's transcoder)."""
    pre = (x - sae.b_pre if subtract else x) @ sae.W_enc.T + sae.b_enc
    top = pre.topk(sae.config.k, dim=1)
    z = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    y_hat = z @ sae.W_dec + sae.b_pre
    return y_hat if sae.W_skip is None else y_hat + x @ sae.W_skip.T


@pytest.mark.parametrize("skip_connection", [False, True])
def test_the_forward_predicts_the_target_and_matches_dense_autograd(skip_connection):
    sae = make(skip_connection=skip_connection)
    x, y = torch.randn(30, 12), torch.randn(30, 20)
    dead = torch.zeros(48, dtype=torch.bool)  # AuxK on, nothing dead: the loss is the FVU of the target
    output = sae(x, target=y, dead_mask=dead)
    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    y_hat = dense_prediction(sae, x)
    loss = (y - y_hat).pow(2).sum(-1).mean() / (y - y.mean(0)).pow(2).sum(-1).mean()
    loss.backward()
    torch.testing.assert_close(output.x_hat, y_hat.detach())
    torch.testing.assert_close(output.loss, loss)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)
    assert (sae.W_skip is not None) == skip_connection and sae.W_dec.shape == (48, 20)


def test_encoding_subtracts_the_decoder_bias_only_when_configured():
    sae = make(d_out=12, encoder_subtracts_decoder_bias=True)
    x = torch.randn(6, 12)
    with torch.no_grad():
        torch.testing.assert_close(sae(x).x_hat, dense_prediction(sae, x, subtract=True))
        sae.config.encoder_subtracts_decoder_bias = None  # the transcoder convention: x itself
        torch.testing.assert_close(sae(x).x_hat, dense_prediction(sae, x))


def test_without_a_target_the_forward_predicts_and_measures_nothing():
    sae = make()
    output = sae(torch.randn(5, 12))
    assert output.x_hat.shape == (5, 20) and output.loss is None and output.fvu is None


def test_bad_targets_and_a_missing_skip_input_are_one_line_errors():
    sae = make(skip_connection=True)
    x = torch.randn(5, 12)
    with pytest.raises(ValueError, match="d_out=20 at layers.0.mlp_out"):
        sae(x, target=torch.randn(5, 12))
    with pytest.raises(ValueError, match="target has 4 rows"):
        sae(x, target=torch.randn(4, 20))
    with pytest.raises(ValueError, match="skip connection"):
        sae.decode(sae.encode(x))


def test_a_transcoder_saves_and_loads_with_its_skip_weights(tmp_path):
    sae = make(skip_connection=True)
    sae.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == {"W_enc", "b_enc", "W_dec", "b_pre", "W_skip"}
    loaded = TopKSAE.from_pretrained(tmp_path)
    assert loaded.config.target_hook_point == "layers.0.mlp_out" and loaded.config.output_size == 20
    x = torch.randn(7, 12)
    torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat)


def test_reconstruction_metrics_measure_the_target_and_omit_ablation_with_its_reason():
    sae = make()
    x = torch.randn(40, 12)
    y = dense_prediction(sae, x).detach() + 0.1 * torch.randn(40, 20)
    metrics, _ = reconstruction_metrics(sae, x, y)
    y_hat = dense_prediction(sae, x).detach()
    expected = ((y - y_hat).pow(2).sum(-1).mean() / (y - y.mean(0)).pow(2).sum(-1).mean()).item()
    assert metrics.fvu == pytest.approx(expected, rel=1e-5)
    assert metrics.progressive  # per-token TopK: progressive recovery applies
    assert "transcoder" in omitted_metrics(sae.config)["ablation_sparsity"]


def test_the_downstream_loss_splices_the_prediction_from_the_same_forward_in_place_of_the_target(tiny_lm, tiny_texts, tiny_tokenizer):
    model = tiny_lm("llama")
    ids = torch.tensor([tiny_tokenizer(tiny_texts[0]).input_ids[:24], tiny_tokenizer(tiny_texts[2]).input_ids[:24]])
    # W_skip = 1, everything else 0: the prediction is the MLP's input, spliced in as its output.
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_out=32, n_latents=64, k=4, hook_point="model.layers.1.mlp:input",
                                target_hook_point="layers.1.mlp_out", skip_connection=True))  # fmt: skip
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_skip.copy_(torch.eye(32))
    mlp_input = capture(model, ids, ["model.layers.1.mlp:input"])["model.layers.1.mlp:input"]
    with splice(model, "layers.1.mlp_out", replaced_after_first(lambda _: mlp_input[:, FIRST_POSITION_USED:])):
        expected = torch.nn.functional.cross_entropy(model(ids).logits[:, FIRST_POSITION_USED:-1].transpose(1, 2), ids[:, FIRST_POSITION_USED + 1:])
    loss = downstream_loss(sae, model, ids, hook_point=sae.config.hook_point)
    assert loss.ce_spliced == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        sae.W_skip.zero_()  # predicts 0 everywhere: exactly the zero-ablated target
    loss = downstream_loss(sae, model, ids, hook_point=sae.config.hook_point)
    assert loss.ce_spliced == pytest.approx(loss.ce_zero, rel=1e-6) and loss.ce_zero != pytest.approx(loss.ce_clean)
