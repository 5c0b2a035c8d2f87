"""Loading by name or local path, multi-SAE folders, listing and conversion, all without a network."""

import json
import time

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.hub import HookPointNotInRepoError, SAEFolderError, UnknownSAEError, to_saelens
from hfsae.hub.convert import UnknownFormatError, convert
from hfsae.hub.loading import list_saes, load, load_many
from hfsae.hub.multi import save_many
from hfsae.hub.registry import registry

from hub_formats import random_activations


def make_sae(seed: int, hook_point: str = "layers.1.resid_post", normalize: str = "none") -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=16, n_latents=64, k=4, hook_point=hook_point, normalize=normalize))
    with torch.no_grad():
        sae.b_pre.normal_()
        sae.b_enc.normal_()
    return sae.eval()


def test_an_unknown_name_suggests_the_closest_registry_names():
    with pytest.raises(UnknownSAEError, match=r"Did you mean 'gpt2-small-v5-32k-resid-post-layer-8'"):
        load("gpt2-small-v5-32k-resid-post-layer-88")


def test_a_path_that_does_not_exist_says_so_instead_of_asking_the_hub():
    with pytest.raises(FileNotFoundError, match="that path does not exist"):
        load("./no/such/sae")


def test_the_registry_lists_every_openai_gpt2_small_v5_mirror_with_saelens_folder_names():
    entries = registry()
    oai = [entry for entry in entries.values() if entry.repo.startswith("jbloom/GPT2-Small-OAI-v5-")]
    assert len(oai) == 2 * 4 * 12  # sizes × sites × layers (docs/method.md §7)
    entry = entries["gpt2-small-v5-32k-resid-post-layer-8"]
    assert (entry.repo, entry.folder, entry.format) == (
        "jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs", "v5_32k_layer_8.pt", "saelens")
    assert entries["gpt2-small-v5-128k-mlp-out-layer-0"].folder == "v5_128k_layer_0"
    assert all(entry.provenance and entry.revision for entry in entries.values())


def test_listing_offline_shows_the_registry_at_once():
    started = time.monotonic()
    listed = list_saes()
    assert time.monotonic() - started < 2
    assert {item.source for item in listed} == {"registry"}
    assert len(listed) == len(registry())


def test_a_local_multi_sae_folder_loads_one_by_hook_point_and_all_at_once(tmp_path):
    saes = {"layers.1.resid_post": make_sae(0, "layers.1.resid_post"), "layers.2.mlp_out": make_sae(1, "layers.2.mlp_out")}
    save_many(saes, tmp_path / "multi")
    x = random_activations()

    one = TopKSAE.from_pretrained(tmp_path / "multi", hookpoint="layers.2.mlp_out")
    many = load_many(tmp_path / "multi")

    torch.testing.assert_close(one(x).x_hat, saes["layers.2.mlp_out"](x).x_hat)
    assert list(many) == ["layers.1.resid_post", "layers.2.mlp_out"]
    for name, sae in saes.items():
        torch.testing.assert_close(many[name](x).x_hat, sae(x).x_hat)
    index = json.loads((tmp_path / "multi" / "index.json").read_text())
    assert [entry["hook_point"] for entry in index["saes"]] == ["layers.1.resid_post", "layers.2.mlp_out"]


def test_a_multi_sae_folder_without_a_hook_point_names_its_saes(tmp_path):
    save_many({"a": make_sae(0), "b": make_sae(1)}, tmp_path / "multi")
    with pytest.raises(SAEFolderError, match=r"holds several SAEs \(a, b\)"):
        load(tmp_path / "multi")
    with pytest.raises(HookPointNotInRepoError, match="holds several SAEs for hook point 'layers.1.resid_post'"):
        load(tmp_path / "multi", hookpoint="layers.1.resid_post")


def test_corrupt_local_weights_are_an_error_naming_the_file(tmp_path):
    make_sae(0).save_pretrained(tmp_path / "sae")
    weights = tmp_path / "sae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-20])
    with pytest.raises(SAEFolderError, match=r"sae/model\.safetensors is not a readable safetensors file"):
        load(tmp_path / "sae")


def test_a_local_saelens_folder_loads_through_the_same_entry_point(tmp_path):
    sae = make_sae(2)
    to_saelens(sae, tmp_path / "lens")
    x = random_activations()
    torch.testing.assert_close(load(tmp_path / "lens")(x).x_hat, sae(x).x_hat)


def test_convert_writes_an_hfsae_folder_with_the_same_outputs(tmp_path):
    sae = make_sae(3, normalize="none")
    to_saelens(sae, tmp_path / "lens")
    x = random_activations()

    convert(tmp_path / "lens", tmp_path / "out", source_format="saelens")

    torch.testing.assert_close(TopKSAE.from_pretrained(tmp_path / "out")(x).x_hat, sae(x).x_hat)


def test_convert_turns_a_folder_of_saes_into_a_multi_sae_folder(tmp_path):
    saes = {"blocks.1": make_sae(4, "layers.1.resid_post"), "blocks.2": make_sae(5, "layers.2.resid_post")}
    for name, sae in saes.items():
        to_saelens(sae, tmp_path / "release" / name)
    x = random_activations()

    convert(tmp_path / "release", tmp_path / "out", source_format="saelens")
    loaded = load_many(tmp_path / "out")

    assert sorted(loaded) == ["blocks.1", "blocks.2"]
    torch.testing.assert_close(loaded["blocks.2"](x).x_hat, saes["blocks.2"](x).x_hat)


def test_convert_exports_hfsae_to_saelens_and_back(tmp_path):
    sae = make_sae(6)
    sae.save_pretrained(tmp_path / "ours")
    x = random_activations()

    convert(tmp_path / "ours", tmp_path / "lens", source_format="hfsae", target_format="saelens")

    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    torch.testing.assert_close(load(tmp_path / "lens")(x).x_hat, sae(x).x_hat)


def test_convert_refuses_to_overwrite_and_unknown_formats(tmp_path):
    make_sae(7).save_pretrained(tmp_path / "ours")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        convert(tmp_path / "ours", tmp_path / "taken", source_format="hfsae", target_format="saelens")
    with pytest.raises(UnknownFormatError, match="Unknown source format 'safetensors'; choose one of: hfsae, saelens"):
        convert(tmp_path / "ours", tmp_path / "new", source_format="safetensors")
    with pytest.raises(UnknownFormatError, match="holds no SAE in sparsify format"):
        convert(tmp_path / "ours", tmp_path / "new", source_format="sparsify")
    assert not (tmp_path / "new").exists()
