"""SAELens TopK folders convert to TopKSAEs that reproduce SAELens's forward pass, and export back."""

import json

import pytest
import torch
from safetensors.torch import save_file

from hfsae.folder import SAEFolderError
from hfsae.hub.files import UnsupportedArchitectureError
from hfsae import TopKSAE
from hfsae.hub.build import build
from hfsae.hub.formats import Converted
from hfsae.hub.formats.saelens import hook_point_from_transformer_lens, to_saelens
from hub_formats import from_format

from hub_formats import assert_same_codes, dense_topk, random_activations, random_weights

K = 4


def saelens_forward(cfg: dict, tensors: dict, x: torch.Tensor):
    """SAELens's TopK SAE written from its conventions: sae.py process_sae_in, topk_sae.py encode/decode."""
    mode = cfg.get("normalize_activations", "none")
    if mode == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        centred = x - mu
        std = centred.std(dim=-1, keepdim=True)
        x_in = centred / (std + 1e-5)
    elif mode == "expected_average_only_in":
        x_in = x * cfg["norm_scaling_factor"]
    else:
        x_in = x
    if cfg.get("apply_b_dec_to_input", True):
        x_in = x_in - tensors["b_dec"]
    hidden = x_in @ tensors["W_enc"] + tensors["b_enc"]
    norms = tensors["W_dec"].norm(dim=-1)
    if cfg.get("rescale_acts_by_decoder_norm"):
        hidden = hidden * norms
    k = cfg.get("k") or cfg["activation_fn_kwargs"]["k"]
    z, indices, values = dense_topk(hidden, k)
    acts = z / norms if cfg.get("rescale_acts_by_decoder_norm") else z
    if "finetuning_scaling_factor" in tensors:
        acts = acts * tensors["finetuning_scaling_factor"]
    out = acts @ tensors["W_dec"] + tensors["b_dec"]
    if mode == "layer_norm":
        out = out * std + mu
    elif mode == "expected_average_only_in":
        # SAELens folds the factor on load (fold_activation_norm_scaling_factor): output in input units.
        out = out / cfg["norm_scaling_factor"]
    return out, indices, values


def saelens_tensors(seed: int = 0) -> dict:
    weights = random_weights(seed=seed)
    return {
        "W_enc": weights["W_enc"].T.contiguous(),  # SAELens: [d_in, d_sae]
        "b_enc": weights["b_enc"],
        "W_dec": weights["W_dec"],  # [d_sae, d_in], non-unit rows
        "b_dec": weights["b_pre"],
    }


def write_folder(path, cfg: dict, tensors: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, path / "sae_weights.safetensors")
    return path


V6_BASE = {"architecture": "topk", "d_in": 16, "d_sae": 64, "k": K, "dtype": "float32", "device": "cpu"}
CONVENTIONS = {
    "oai_mirror_layer_norm": {
        **V6_BASE,
        "apply_b_dec_to_input": True,
        "normalize_activations": "layer_norm",
        "metadata": {"hook_name": "blocks.8.hook_resid_post", "model_name": "gpt2-small", "sae_lens_version": "6.5.0"},
    },
    "no_b_dec_on_input_and_decoder_norm_rescaling": {
        **V6_BASE,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": True,
    },
    "pre_v6_topk_with_scaled_input_and_finetuned_scale": {
        "architecture": "standard",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "d_in": 16,
        "d_sae": 64,
        "hook_point": "blocks.3.hook_mlp_out",
        "apply_b_dec_to_input": True,
        "normalize_activations": "expected_average_only_in",
        "norm_scaling_factor": 0.37,
        "finetuning_scaling_factor": True,
    },
}


def tensors_for(convention: str) -> dict:
    tensors = saelens_tensors()
    if convention == "pre_v6_topk_with_scaled_input_and_finetuned_scale":
        tensors["finetuning_scaling_factor"] = 0.5 + torch.rand(64, generator=torch.Generator().manual_seed(3))
    return tensors


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_a_converted_saelens_sae_selects_the_same_latents_with_the_same_values(tmp_path, convention):
    cfg, tensors = CONVENTIONS[convention], tensors_for(convention)
    x = random_activations()
    _, indices, values = saelens_forward(cfg, tensors, x)

    sae = from_format("saelens", write_folder(tmp_path / convention, cfg, tensors))

    assert_same_codes(sae.encode(x), indices, values)


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_a_converted_saelens_sae_reproduces_saelens_reconstruction(tmp_path, convention):
    cfg, tensors = CONVENTIONS[convention], tensors_for(convention)
    x = random_activations()
    expected, _, _ = saelens_forward(cfg, tensors, x)

    sae = from_format("saelens", write_folder(tmp_path / convention, cfg, tensors))

    torch.testing.assert_close(sae(x).x_hat, expected)


def test_saelens_metadata_becomes_the_hfsae_hook_point_and_base_model(tmp_path):
    cfg = CONVENTIONS["oai_mirror_layer_norm"]
    sae = from_format("saelens", write_folder(tmp_path / "sae", cfg, saelens_tensors()))
    assert (sae.config.hook_point, sae.config.base_model) == ("layers.8.resid_post", "openai-community/gpt2")
    assert hook_point_from_transformer_lens("blocks.0.hook_attn_out") == "layers.0.attn_out"


@pytest.mark.parametrize("normalize", ["none", "dataset_scale"])
def test_an_exported_sae_runs_the_same_under_saelens_conventions(tmp_path, normalize):
    weights = random_weights(seed=5)
    extra = {"dataset_scale": 0.25} if normalize == "dataset_scale" else {}
    sae = build(TopKSAE, Converted(**weights, fields={"k": K, "normalize": normalize, "hook_point": "layers.2.resid_post", **extra}))
    x = random_activations()

    folder = to_saelens(sae, tmp_path / "exported")
    cfg = json.loads((folder / "cfg.json").read_text())
    from safetensors.torch import load_file

    expected, indices, values = saelens_forward(cfg, load_file(folder / "sae_weights.safetensors"), x)

    output = sae(x)
    torch.testing.assert_close(output.x_hat, expected)
    assert_same_codes(output.code, indices, values)
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"


def test_export_then_import_gives_back_the_same_sae(tmp_path):
    sae = build(TopKSAE, Converted(**random_weights(seed=6), fields={"k": K, "normalize": "layer_norm"}))
    x = random_activations()
    back = from_format("saelens", to_saelens(sae, tmp_path / "exported"))
    torch.testing.assert_close(back(x).x_hat, sae(x).x_hat)



@pytest.mark.parametrize(
    "options, named",
    [({"architecture": "batchtopk"}, "architecture='batchtopk'"), ({"d_out": 12, "target_hook_point": "layers.0.mlp_out"}, "a transcoder")],
)
def test_export_refuses_variants_saelens_would_load_as_plain_topk(tmp_path, options, named):
    from hfsae import TopKSAEConfig

    sae = TopKSAE(TopKSAEConfig(d_in=8, n_latents=32, k=4, **options))
    with pytest.raises(UnsupportedArchitectureError, match=f"plain TopK SAEs only; this is {named}"):
        to_saelens(sae, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()

@pytest.mark.parametrize(
    "cfg, message",
    [
        ({**V6_BASE, "architecture": "jumprelu"}, "unsupported architecture jumprelu"),
        ({**V6_BASE, "architecture": "standard", "activation_fn": "relu"}, r"unsupported architecture standard \(activation relu\)"),
        ({**V6_BASE, "normalize_activations": "constant_norm_rescale"}, "'constant_norm_rescale' has no hfsae equivalent"),
    ],
)
def test_saes_hfsae_cannot_reproduce_are_refused_with_the_reason(tmp_path, cfg, message):
    folder = write_folder(tmp_path / "sae", cfg, saelens_tensors())
    with pytest.raises(UnsupportedArchitectureError, match=message):
        from_format("saelens", folder)


def test_a_corrupt_weights_file_is_an_error_naming_it(tmp_path):
    folder = write_folder(tmp_path / "sae", CONVENTIONS["oai_mirror_layer_norm"], saelens_tensors())
    (folder / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(SAEFolderError, match=r"sae_weights\.safetensors is not a readable safetensors file"):
        from_format("saelens", folder)


def test_a_missing_tensor_is_named(tmp_path):
    tensors = saelens_tensors()
    del tensors["b_dec"]
    folder = write_folder(tmp_path / "sae", CONVENTIONS["oai_mirror_layer_norm"], tensors)
    with pytest.raises(SAEFolderError, match="lacks the tensor"):
        from_format("saelens", folder)


def test_gemma_2_and_3_attention_and_mlp_hooks_map_to_the_post_norms_output_as_transformer_lens_takes_them():
    assert hook_point_from_transformer_lens("blocks.5.hook_mlp_out", "gemma-2-2b") == (
        "model.layers.5.post_feedforward_layernorm:output")
    assert hook_point_from_transformer_lens("blocks.5.hook_attn_out", "google/gemma-3-1b-pt") == (
        "model.layers.5.post_attention_layernorm:output")
    assert hook_point_from_transformer_lens("blocks.5.hook_mlp_out", "gpt2-small") == "layers.5.mlp_out"
    assert hook_point_from_transformer_lens("blocks.5.hook_resid_post", "gemma-2-2b") == "layers.5.resid_post"
