"""Push to and load from a Hub over real HTTP (the fake Hub in hub_server.py), with the real client."""

import time
import uuid

import pytest
import torch

pytestmark = pytest.mark.slow  # each test starts Python subprocesses that import torch and transformers

MAKE_SAE = """
from hfsae import TopKSAE, TopKSAEConfig
def make_sae(seed, hook_point="layers.1.resid_post", n_latents=64):
    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=16, n_latents=n_latents, k=4, hook_point=hook_point, base_model="tiny/model"))
    with torch.no_grad():
        sae.b_pre.normal_(); sae.b_enc.normal_()
    return sae
x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
"""


def new_repo() -> str:
    return f"hfsae-tests/sae-{uuid.uuid4().hex[:8]}"


def test_push_then_load_into_a_fresh_cache_gives_identical_outputs(hub):
    repo = new_repo()
    pushed = hub.run(MAKE_SAE + f"""
sae = make_sae(0)
info = sae.push_to_hub({repo!r})
emit({{"x_hat": sae(x).x_hat.tolist(), "commit": info.oid}})
""", cache="pusher")
    loaded = hub.run(MAKE_SAE + f"""
from hfsae.hub.loading import load
sae = load({repo!r})
emit({{"x_hat": sae(x).x_hat.tolist()}})
""", cache="fresh")
    assert loaded["x_hat"] == pushed["x_hat"]


def test_the_pushed_card_is_ours_and_the_repo_holds_config_and_weights(hub):
    repo = new_repo()
    files = hub.run(MAKE_SAE + f"""
from huggingface_hub import HfApi, hf_hub_download
make_sae(0).push_to_hub({repo!r})
card = open(hf_hub_download({repo!r}, "README.md")).read()
emit({{"files": sorted(HfApi().list_repo_files({repo!r})), "card": card}})
""")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files["files"])
    assert "library_name: hfsae" in files["card"]
    assert "library_name: transformers" not in files["card"]


def test_a_pinned_revision_loads_the_weights_of_that_commit(hub):
    repo = new_repo()
    result = hub.run(MAKE_SAE + f"""
from hfsae import TopKSAE
first = make_sae(1).push_to_hub({repo!r}).oid
second_sae = make_sae(2)
second_sae.push_to_hub({repo!r})
pinned = TopKSAE.from_pretrained({repo!r}, revision=first)
emit({{"pinned": pinned(x).x_hat.tolist(), "first": make_sae(1)(x).x_hat.tolist(),
       "main": TopKSAE.from_pretrained({repo!r})(x).x_hat.tolist(), "second": second_sae(x).x_hat.tolist()}})
""")
    assert result["pinned"] == result["first"]
    assert result["main"] == result["second"] != result["first"]


def test_a_multi_sae_repo_loads_by_hook_point_and_all_at_once(hub):
    repo = new_repo()
    pushed = hub.run(MAKE_SAE + f"""
from hfsae.hub import push_many
saes = {{"layers.1.resid_post": make_sae(3, "layers.1.resid_post"), "layers.2.resid_post": make_sae(4, "layers.2.resid_post")}}
push_many(saes, {repo!r})
extra = make_sae(5, "layers.3.mlp_out")
extra.push_to_hub({repo!r}, folder="layers.3.mlp_out")     # a later push adds a folder, keeps the others
emit({{name: sae(x).x_hat.tolist() for name, sae in [*saes.items(), ("layers.3.mlp_out", extra)]}})
""", cache="pusher")
    loaded = hub.run(MAKE_SAE + f"""
from hfsae import TopKSAE
from hfsae.hub.loading import load_many
one = TopKSAE.from_pretrained({repo!r}, hookpoint="layers.2.resid_post")
many = load_many({repo!r})
emit({{"one": one(x).x_hat.tolist(), "many": {{name: sae(x).x_hat.tolist() for name, sae in many.items()}}}})
""", cache="fresh")
    assert loaded["one"] == pushed["layers.2.resid_post"]
    assert loaded["many"] == pushed


def test_an_unknown_hook_point_names_the_ones_the_repo_holds(hub):
    repo = new_repo()
    failed = hub.run(MAKE_SAE + f"""
from hfsae import TopKSAE
make_sae(3).push_to_hub({repo!r}, folder="layers.1.resid_post")
TopKSAE.from_pretrained({repo!r}, hookpoint="layers.9.resid_post")
""", expect_failure=True)
    assert "HookPointNotInRepoError" in failed.stderr
    assert "holds no SAE for hook point 'layers.9.resid_post'; it holds: layers.1.resid_post" in failed.stderr


def test_offline_a_warm_cache_loads_and_a_cold_cache_fails_fast_with_a_clear_message(hub):
    repo = new_repo()
    pushed = hub.run(MAKE_SAE + f"""
from hfsae.hub.loading import load
sae = make_sae(6)
sae.push_to_hub({repo!r})
load({repo!r})                       # warms this cache
emit(sae(x).x_hat.tolist())
""", cache="warm")
    warm = hub.run(MAKE_SAE + f"""
from hfsae.hub.loading import load
emit(load({repo!r})(x).x_hat.tolist())
""", cache="warm", offline=True)
    assert warm == pushed

    started = time.monotonic()
    cold = hub.run(f"""
from hfsae.hub.loading import load
load({repo!r})
""", cache="cold", offline=True, expect_failure=True)
    assert time.monotonic() - started < 20  # no retry loop (online-mode retries take ~20 s)
    assert "NotInCacheError" in cold.stderr
    assert "HF_HUB_OFFLINE=1 forbids downloading it" in cold.stderr


def test_a_missing_weights_file_in_a_repo_is_named(hub):
    repo = new_repo()
    failed = hub.run(MAKE_SAE + f"""
from huggingface_hub import HfApi
from hfsae import TopKSAE
make_sae(7).push_to_hub({repo!r})
HfApi().delete_file("model.safetensors", {repo!r})
TopKSAE.from_pretrained({repo!r})
""", expect_failure=True)
    assert "model.safetensors" in failed.stderr.splitlines()[-1]


def test_a_registry_name_loads_a_saelens_mirror_from_the_hub(hub):
    repo = new_repo()
    result = hub.run(MAKE_SAE + f"""
from hfsae.hub.loading import load
from unittest import mock
from hfsae.hub import registry
from hfsae.hub.formats import saelens
from hfsae.hub.registry import RegistryEntry
sae = make_sae(8, "layers.8.resid_post")
saelens.to_saelens(sae, "mirror/v5_32k_layer_8.pt")
from huggingface_hub import HfApi
HfApi().create_repo({repo!r})
HfApi().upload_folder(repo_id={repo!r}, folder_path="mirror")
entry = RegistryEntry("test-sae", {repo!r}, "v5_32k_layer_8.pt", "saelens", "main", "a test mirror")
with mock.patch.dict(registry.registry(), {{"test-sae": entry}}):
    loaded = load("test-sae")
emit({{"ours": sae(x).x_hat.tolist(), "loaded": loaded(x).x_hat.tolist(), "hook_point": loaded.config.hook_point}})
""")
    torch.testing.assert_close(torch.tensor(result["loaded"]), torch.tensor(result["ours"]))
    assert result["hook_point"] == "layers.8.resid_post"


def test_hfsae_list_remote_shows_hub_models_with_library_name_hfsae(hub):
    repo = new_repo()
    listed = hub.run(MAKE_SAE + f"""
from hfsae.hub.loading import list_saes
make_sae(9).push_to_hub({repo!r})
emit([[[item.name, item.source] for item in list_saes(remote=remote)] for remote in (False, True)])
""")
    assert [repo, "hub"] in listed[1] and [repo, "hub"] not in listed[0]
    assert ["gpt2-small-v5-32k-resid-post-layer-8", "registry"] in listed[1]


def test_hfsae_push_uploads_a_saved_folder_with_a_card(hub):
    repo = new_repo()
    result = hub.run(MAKE_SAE + f"""
from huggingface_hub import HfApi
from hfsae.cli import main
make_sae(10).save_pretrained("saved")
status = main(["push", "--folder", "saved", "--repo-id", {repo!r}])
emit({{"status": status, "files": sorted(HfApi().list_repo_files({repo!r}))}})
""")
    assert result["status"] == 0
    assert {"config.json", "model.safetensors", "README.md"} <= set(result["files"])
