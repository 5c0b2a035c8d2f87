"""Classes 5, 6 and 7: a weight file is checked against config.json before anything is allocated, non-finite
weights are never saved and refused on load, and a push checks everything before its first request."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.cli import main
from hfsae.folder import NonFiniteWeightsError, SAEFolderError


def saved_sae(folder, **config):
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(**{"d_in": 16, "n_latents": 64, "k": 4, **config}))
    sae.save_pretrained(folder)
    return sae


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("n_latents", [500_000, 10**12])
def test_a_config_edited_to_a_huge_n_latents_is_refused_from_the_header_before_allocating(tmp_path, n_latents):
    saved_sae(tmp_path / "sae")
    edit_config(tmp_path / "sae", n_latents=n_latents)
    # 10**12 latents would need 64 TB: reaching the shape check at all shows nothing was allocated first.
    with pytest.raises(SAEFolderError, match=rf"W_dec has shape \(64, 16\) where config.json \(d_in=16, "
                                             rf"n_latents={n_latents}\) needs \({n_latents}, 16\)"):  # fmt: skip
        TopKSAE.from_pretrained(tmp_path / "sae")


def test_eval_of_a_config_with_10_to_the_12_latents_is_a_one_line_error(tmp_path, capsys):
    saved_sae(tmp_path / "sae")
    edit_config(tmp_path / "sae", n_latents=10**12)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "sae"), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("hfsae: error:") and "needs (1000000000000, 16)" in error and "bug" not in error


def test_a_weight_file_of_nul_bytes_is_a_one_line_error(tmp_path, capsys):
    saved_sae(tmp_path / "sae")
    (tmp_path / "sae" / "model.safetensors").write_bytes(b"\0" * 1024)
    with pytest.raises(SAEFolderError, match=r"model.safetensors is not a readable safetensors file"):
        TopKSAE.from_pretrained(tmp_path / "sae")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "sae"), "--quiet"]) == 1
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_an_sae_with_a_nan_weight_is_refused_on_load_naming_the_tensor(tmp_path):
    saved_sae(tmp_path / "sae")
    weights = load_file(tmp_path / "sae" / "model.safetensors")
    weights["b_pre"][3] = float("nan")
    save_file(weights, tmp_path / "sae" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NonFiniteWeightsError, match=r"model.safetensors holds NaN or infinite values in b_pre"):
        TopKSAE.from_pretrained(tmp_path / "sae")


def test_an_sae_with_an_infinite_weight_is_never_saved_nor_pushed(tmp_path):
    sae = saved_sae(tmp_path / "good")
    with torch.no_grad():
        sae.W_enc[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match="The SAE to save holds NaN or infinite values in W_enc"):
        sae.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    # The test session is offline: any request would fail with another error, so these refusals come first.
    with pytest.raises(NonFiniteWeightsError, match="The SAE to push holds NaN"):
        sae.push_to_hub("org/sae")


@pytest.mark.parametrize("folder, reason", [(".git", "hidden"), ("layers.1/.cache", "hidden"),
                                            ("../escape", r"'\.\.' part"), ("/abs", "absolute")])  # fmt: skip
def test_push_into_a_bad_folder_is_refused_before_any_request(tmp_path, folder, reason):
    sae = saved_sae(tmp_path / "sae")
    with pytest.raises(SAEFolderError, match=rf"SAE folder name .* is not allowed \(.*{reason}"):
        sae.push_to_hub("org/saes", folder=folder)


def test_push_many_with_a_bad_name_is_refused_before_any_request(tmp_path):
    from hfsae.hub.push import push_many

    sae = saved_sae(tmp_path / "sae")
    with pytest.raises(SAEFolderError, match="is not allowed"):
        push_many({"layers.1": sae, ".git": sae}, "org/saes")


def test_push_folder_with_a_bad_path_in_repo_is_refused_before_any_request(tmp_path):
    from hfsae.hub.push import push_folder

    saved_sae(tmp_path / "sae")
    with pytest.raises(SAEFolderError, match="is not allowed"):
        push_folder(tmp_path / "sae", "org/sae", path_in_repo="../up")
