"""sparsify folders convert to TopKSAEs that reproduce sparsify's forward pass."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hfsae.hub.files import UnsupportedArchitectureError
from hub_formats import from_format

from hub_formats import assert_same_codes, random_activations, random_weights

K = 4


def sparsify_forward(cfg: dict, tensors: dict, x: torch.Tensor):
    """sparsify's SparseCoder: ReLU(encoder(x − b_dec)), then top-k, then a sum of W_dec rows plus b_dec."""
    preactivations = F.relu(F.linear(x - tensors["b_dec"], tensors["encoder.weight"], tensors["encoder.bias"]))
    values, indices = preactivations.topk(cfg["k"], dim=-1, sorted=False)
    x_hat = (values[..., None] * tensors["W_dec"][indices]).sum(dim=-2) + tensors["b_dec"]
    return x_hat, indices, values


def write_folder(path, cfg, tensors):
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, path / "sae.safetensors")
    return path


def sparsify_checkpoint(tmp_path, **cfg_changes):
    weights = random_weights(seed=2)
    tensors = {
        "encoder.weight": weights["W_enc"],
        "encoder.bias": weights["b_enc"],
        "W_dec": weights["W_dec"],
        "b_dec": weights["b_pre"],
    }
    cfg = {"expansion_factor": 4, "normalize_decoder": False, "num_latents": 64, "k": K, "multi_topk": False,
           "skip_connection": False, "d_in": 16, **cfg_changes}
    return write_folder(tmp_path / "layers.6", cfg, tensors), cfg, tensors


def test_a_converted_sparsify_sae_reproduces_sparsifys_reconstruction_and_codes(tmp_path):
    folder, cfg, tensors = sparsify_checkpoint(tmp_path)
    x = random_activations()
    expected, indices, values = sparsify_forward(cfg, tensors, x)

    sae = from_format("sparsify", folder)
    output = sae(x)

    torch.testing.assert_close(output.x_hat, expected)
    assert_same_codes(output.code, indices, values)
    assert sae.config.hook_point == "layers.6.resid_post"


@pytest.mark.parametrize(
    "change, message",
    [({"activation": "groupmax"}, "activation 'groupmax'"), ({"signed": True}, "signed latents")],
)
def test_sparsify_variants_hfsae_cannot_reproduce_are_refused(tmp_path, change, message):
    folder, _, _ = sparsify_checkpoint(tmp_path, **change)
    with pytest.raises(UnsupportedArchitectureError, match=f"unsupported architecture with {message}"):
        from_format("sparsify", folder)
