"""Export to sparsify: the folder loads with sparsify's own SparseCoder.load_from_disk and computes what hfsae does."""

import json

import pytest
import torch
from sparsify import SparseCoder

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.hub.build import build
from hfsae.cli import main
from hfsae.hub.files import UnsupportedArchitectureError
from hfsae.hub.formats import Converted
from hfsae.hub.formats.sparsify import to_sparsify
from hub_formats import assert_same_codes, from_format, random_activations, random_weights

D, N, K = 16, 64, 6


def random_sae(config: TopKSAEConfig, seed: int) -> TopKSAE:
    """An SAE with every parameter random, so that a dropped bias or skip term changes the outputs."""
    sae = TopKSAE(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / D**0.5)
    return sae


def assert_sparsify_matches(sae: TopKSAE, folder, x: torch.Tensor) -> SparseCoder:
    theirs = SparseCoder.load_from_disk(folder)
    with torch.no_grad():
        code = sae.encode(x)
        expected = sae.decode(code, x=x)
        encoded = theirs.encode(x)
        assert_same_codes(code, encoded.top_indices, encoded.top_acts)
        torch.testing.assert_close(theirs(x).sae_out, expected)  # decode + b_dec (+ W_skip x)
        torch.testing.assert_close(theirs.decode(encoded.top_acts, encoded.top_indices) + _skip(theirs, x), expected)
    return theirs


def _skip(coder: SparseCoder, x: torch.Tensor) -> torch.Tensor | float:
    return 0.0 if coder.W_skip is None else x @ coder.W_skip.mT


@pytest.mark.parametrize("normalize", ["none", "dataset_scale"])
def test_an_exported_sae_gives_the_same_latents_and_reconstruction_in_sparsify(tmp_path, normalize):
    extra = {"dataset_scale": 0.25} if normalize == "dataset_scale" else {}
    sae = build(TopKSAE, Converted(**random_weights(seed=5), fields={"k": K, "normalize": normalize, **extra}))
    folder = to_sparsify(sae, tmp_path / "layers.2")
    coder = assert_sparsify_matches(sae, folder, random_activations())
    assert not coder.cfg.transcode and coder.W_skip is None
    assert json.loads((folder / "cfg.json").read_text())["num_latents"] == N


@pytest.mark.parametrize("skip_connection", [False, True])
def test_an_exported_transcoder_encodes_its_input_and_adds_the_skip_term_in_sparsify(tmp_path, skip_connection):
    config = TopKSAEConfig(
        d_in=D, n_latents=N, k=K, hook_point="layers.1.resid_pre", target_hook_point="layers.1.mlp_out",
        skip_connection=skip_connection,
    )
    sae = random_sae(config, seed=7)
    coder = assert_sparsify_matches(sae, to_sparsify(sae, tmp_path / "layers.1.mlp"), random_activations())
    assert coder.cfg.transcode and (coder.W_skip is not None) == skip_connection


def test_an_sae_without_encoder_bias_exports_a_zero_bias(tmp_path):
    sae = random_sae(TopKSAEConfig(d_in=D, n_latents=N, k=K, latent_bias=False), seed=8)
    assert_sparsify_matches(sae, to_sparsify(sae, tmp_path / "exported"), random_activations())


def test_exported_folders_read_back_into_hfsae_as_the_same_sae(tmp_path):
    sae = random_sae(TopKSAEConfig(d_in=D, n_latents=N, k=K, target_hook_point="layers.0.mlp_out", skip_connection=True), seed=9)
    x = random_activations()
    back = from_format("sparsify", to_sparsify(sae, tmp_path / "layers.0.mlp"))
    with torch.no_grad():
        torch.testing.assert_close(back.decode(back.encode(x), x=x), sae.decode(sae.encode(x), x=x))


def test_hfsae_convert_to_sparsify_writes_a_folder_sparsify_loads(tmp_path):
    sae = build(TopKSAE, Converted(**random_weights(seed=10), fields={"k": K, "hook_point": "layers.3.resid_post"}))
    sae.save_pretrained(tmp_path / "hfsae")
    status = main(["convert", "--src", str(tmp_path / "hfsae"), "--dst", str(tmp_path / "out"), "--from", "hfsae", "--to", "sparsify"])
    assert status == 0
    assert_sparsify_matches(sae, tmp_path / "out", random_activations())


@pytest.mark.parametrize(
    "options, named",
    [
        ({"architecture": "batchtopk"}, "inference='threshold'"),
        ({"normalize": "layer_norm"}, "normalize='layer_norm'"),
        ({"normalize": "unit_norm"}, "normalize='unit_norm'"),
        ({"d_out": 12, "target_hook_point": "layers.0.mlp_out"}, "d_out=12 != d_in=16"),
        ({"encoder_subtracts_decoder_bias": False}, "encoder_subtracts_decoder_bias=False for an SAE"),
        ({"target_hook_point": "layers.0.mlp_out", "encoder_subtracts_decoder_bias": True},
         "encoder_subtracts_decoder_bias=True for a transcoder"),
    ],
)
def test_export_refuses_by_name_what_sparsify_cannot_compute(tmp_path, options, named):
    sae = TopKSAE(TopKSAEConfig(d_in=D, n_latents=N, k=K, **options))
    with pytest.raises(UnsupportedArchitectureError, match=f"sparsify cannot represent this SAE: .*{named}"):
        to_sparsify(sae, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()
