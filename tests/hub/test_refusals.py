"""Unsafe index entries, malformed foreign configs and non-finite conversions are refused in one line."""

import json

import pytest
import torch
from safetensors.torch import save_file

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.folder import SAEFolderError, index_entry, write_index
from hfsae.hub.convert import convert
from hfsae.hub.loading import load, load_many
from hub_formats import from_format

from hub_formats import random_weights


def saved_multi(tmp_path):
    root = tmp_path / "run"
    for layer in (2, 10):
        sae = TopKSAE(TopKSAEConfig(d_in=8, n_latents=32, k=2, hook_point=f"layers.{layer}.resid_post"))
        sae.save_pretrained(root / f"layers.{layer}.resid_post")
    return root


def test_a_training_style_index_loads_with_load_many_and_hookpoint(tmp_path):
    root = saved_multi(tmp_path)
    write_index(root, [index_entry(f"layers.{layer}.resid_post", load(root / f"layers.{layer}.resid_post").config)
                       for layer in (10, 2)])
    assert list(load_many(root)) == ["layers.2.resid_post", "layers.10.resid_post"]
    assert load(root, hookpoint="layers.10.resid_post").config.hook_point == "layers.10.resid_post"


@pytest.mark.parametrize("folder", ["../victim", "/abs/victim"])
def test_index_entries_leaving_the_folder_are_refused_and_convert_writes_nothing_outside(tmp_path, folder):
    root = saved_multi(tmp_path)
    (root / "index.json").write_text(json.dumps({"format": "hfsae-index", "version": 1, "saes": [{"folder": folder}]}))
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    with pytest.raises(SAEFolderError, match="is not allowed"):
        load_many(root)
    with pytest.raises(SAEFolderError, match="is not allowed"):
        convert(root, tmp_path / "out" / "dst", source_format="hfsae")
    assert victim.read_text() == "keep me" and not (tmp_path / "out").exists()


def saelens_dir(tmp_path, **changes):
    w = random_weights(d_in=8, n_latents=32)
    folder = tmp_path / "lens"
    folder.mkdir(exist_ok=True)
    save_file({"W_enc": w["W_enc"].T.contiguous(), "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_pre"]},
              folder / "sae_weights.safetensors")
    cfg = {"architecture": "topk", "d_in": 8, "d_sae": 32, "k": 2, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "metadata": {"hook_name": "blocks.1.hook_resid_post"}}
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps({key: value for key, value in cfg.items() if value != "DROP"}))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"d_in": "DROP"}, "lacks d_in"),
    ({"d_sae": "32"}, "d_sae must be a whole number"),
    ({"k": [2]}, "k must be a whole number"),
    ({"k": 0}, "k must be a whole number"),
    ({"metadata": {"hook_name": 5}}, "hook_name must be a string"),
    ({"normalize_activations": 3}, "normalize_activations must be a string"),
    ({"apply_b_dec_to_input": "yes"}, "apply_b_dec_to_input must be true or false"),
    ({"d_in": 9}, "cfg.json says d_in=9"),
])
def test_malformed_saelens_fields_are_one_line_errors(tmp_path, changes, message):
    with pytest.raises(SAEFolderError, match=message) as error:
        from_format("saelens", saelens_dir(tmp_path, **changes))
    assert "\n" not in str(error.value)


def test_zero_norm_decoder_rows_are_refused_instead_of_becoming_nan(tmp_path):
    folder = saelens_dir(tmp_path, rescale_acts_by_decoder_norm=True)
    tensors = {"W_enc": torch.randn(8, 32), "b_enc": torch.zeros(32), "W_dec": torch.randn(32, 8), "b_dec": torch.zeros(8)}
    tensors["W_dec"][3] = 0
    save_file(tensors, folder / "sae_weights.safetensors")
    with pytest.raises(SAEFolderError, match="zero norm"):
        from_format("saelens", folder)
    tensors["W_dec"][3] = float("nan")
    save_file(tensors, folder / "sae_weights.safetensors")
    with pytest.raises(SAEFolderError, match="non-finite"):
        from_format("saelens", folder)


@pytest.mark.parametrize("activation_state, message", [
    ([32], "activation_state_dict should be a dict"),
    ({"k": "many"}, r"activation_state_dict\['k'\] must be a whole number"),
    ({}, "lacks activation_state_dict"),
])
def test_odd_openai_activation_state_is_a_one_line_error(tmp_path, activation_state, message):
    path = tmp_path / "8.pt"
    torch.save({"encoder.weight": torch.randn(32, 8), "decoder.weight": torch.randn(8, 32), "pre_bias": torch.zeros(8),
                "latent_bias": torch.zeros(32), "activation": "TopK", "activation_state_dict": activation_state}, path)
    with pytest.raises(SAEFolderError, match=message):
        from_format("openai", path)
