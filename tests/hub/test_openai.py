"""OpenAI .pt state dicts convert to TopKSAEs that reproduce OpenAI's own forward pass."""

import pytest
import torch
import torch.nn.functional as F

from hfsae.folder import SAEFolderError
from hfsae.hub.files import UnsupportedArchitectureError
from hfsae.hub.formats.openai import hook_point_from_filename
from hub_formats import from_format

from hub_formats import assert_same_codes, dense_topk, random_activations, random_weights

K = 4


def openai_state_dict(seed: int = 0) -> dict:
    """A v5-style state dict (docs/method.md §7): decoder.weight is [d, n], plus statistics and activation entries."""
    weights = random_weights(seed=seed)
    n_latents = weights["W_enc"].shape[0]
    return {
        "pre_bias": weights["b_pre"],
        "encoder.weight": weights["W_enc"],
        "latent_bias": weights["b_enc"],
        "decoder.weight": weights["W_dec"].T.contiguous(),
        "stats_last_nonzero": torch.zeros(n_latents, dtype=torch.long),
        "latents_activation_frequency": torch.rand(n_latents),
        "latents_mean_square": torch.rand(n_latents),
        "activation": "TopK",
        "activation_state_dict": {"k": K, "postact_fn": "ReLU"},
    }


def openai_forward(state: dict, x: torch.Tensor):
    """OpenAI's Autoencoder: LN(eps=1e-5 added to the unbiased std), pre_bias, TopK then ReLU, decode · std + mean."""
    mu = x.mean(dim=-1, keepdim=True)
    centred = x - mu
    std = centred.std(dim=-1, keepdim=True)
    x_norm = centred / (std + 1e-5)
    preactivations = F.linear(x_norm - state["pre_bias"], state["encoder.weight"], state["latent_bias"])
    z, indices, values = dense_topk(preactivations, state["activation_state_dict"]["k"])
    x_hat = (F.linear(z, state["decoder.weight"]) + state["pre_bias"]) * std + mu
    return x_hat, indices, values


def test_a_converted_openai_sae_selects_openais_latents_with_openais_values(tmp_path):
    state = openai_state_dict()
    torch.save(state, tmp_path / "8.pt")
    x = random_activations()
    _, indices, values = openai_forward(state, x)

    sae = from_format("openai", tmp_path / "8.pt")

    assert sae.config.normalize == "layer_norm" and sae.config.k == K
    assert_same_codes(sae.encode(x), indices, values)


def test_a_converted_openai_sae_reproduces_openais_reconstruction(tmp_path):
    state = openai_state_dict()
    torch.save(state, tmp_path / "8.pt")
    x = random_activations()
    expected, _, _ = openai_forward(state, x)

    torch.testing.assert_close(from_format("openai", tmp_path / "8.pt")(x).x_hat, expected)


def test_the_hook_point_is_read_from_openais_folder_layout(tmp_path):
    assert hook_point_from_filename("v5_32k/resid_post_mlp/8.pt") == "layers.8.resid_post"
    assert hook_point_from_filename("v5_32k/resid_delta_attn/3.pt") == "layers.3.attn_out"
    assert hook_point_from_filename("weights/sae.pt") is None


def test_a_pickle_that_would_run_code_is_refused_and_the_file_named(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"encoder.weight": torch.zeros(2, 2), "payload": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(SAEFolderError, match=r"evil\.pt holds more than tensors"):
        from_format("openai", path)


def test_a_truncated_pt_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "8.pt"
    torch.save(openai_state_dict(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SAEFolderError, match=r"8\.pt"):
        from_format("openai", path)


def test_a_relu_sae_is_an_unsupported_architecture(tmp_path):
    state = openai_state_dict()
    state["activation"] = "ReLU"
    torch.save(state, tmp_path / "relu.pt")
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'ReLU'"):
        from_format("openai", tmp_path / "relu.pt")
