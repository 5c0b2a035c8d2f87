"""Repos laid out like the public ones (sparsify, SAELens, dictionary_learning), loaded by repo id over HTTP.

Each test writes the foreign files itself, uploads them to the Hub stand-in, loads them through
`hfsae.load` / `load_many` / `TopKSAE.from_pretrained` in a fresh process, and compares with a
forward pass written here from the format's own definition.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from hub_formats import random_activations, random_weights

D_IN, N_LATENTS, K = 16, 64, 4


def sparsify_folder(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """A sparsify SAE folder (cfg.json + sae.safetensors as sparsify's SparseCoder.save_to_disk writes them)."""
    w = random_weights(d_in=D_IN, n_latents=N_LATENTS, seed=seed)
    tensors = {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_pre"]}
    folder.mkdir(parents=True)
    save_file(tensors, folder / "sae.safetensors")
    cfg = {"expansion_factor": 4, "normalize_decoder": True, "num_latents": N_LATENTS, "k": K, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def sparsify_reference(tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """sparsify: pre = relu((x − b_dec) W_encᵀ + b_enc), top-k, x_hat = acts W_dec + b_dec."""
    pre = torch.relu((x - tensors["b_dec"]) @ tensors["encoder.weight"].T + tensors["encoder.bias"])
    top = pre.topk(K, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    return acts @ tensors["W_dec"] + tensors["b_dec"]


def saelens_folder(folder: Path, layer: int, seed: int) -> dict[str, torch.Tensor]:
    """A SAELens v6 TopK folder as the OpenAI v5 mirrors hold them (folder named like 'v5_32k_layer_8.pt')."""
    w = random_weights(d_in=D_IN, n_latents=N_LATENTS, seed=seed)
    tensors = {"W_enc": w["W_enc"].T.contiguous(), "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_pre"]}
    folder.mkdir(parents=True)
    save_file(tensors, folder / "sae_weights.safetensors")
    cfg = {
        "architecture": "topk", "d_in": D_IN, "d_sae": N_LATENTS, "k": K, "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": f"blocks.{layer}.hook_resid_post", "model_name": "gpt2-small", "sae_lens_version": "6.0.0"},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def saelens_reference(tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SAELens TopK: h = (x − b_dec) W_enc + b_enc, z = ReLU(TopK(h)), x_hat = z W_dec + b_dec."""
    h = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    top = h.topk(K, dim=-1)
    z = torch.zeros_like(h).scatter(-1, top.indices, torch.relu(top.values))
    return z @ tensors["W_dec"] + tensors["b_dec"]


def dictionary_learning_folder(folder: Path, layer: int, seed: int, dict_class: str = "AutoEncoderTopK"):
    """A dictionary_learning trainer folder: ae.pt (a plain state dict) + config.json with a 'trainer' section."""
    w = random_weights(d_in=D_IN, n_latents=N_LATENTS, seed=seed)
    state = {
        "encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "decoder.weight": w["W_dec"].T.contiguous(),
        "b_dec": w["b_pre"], "k": torch.tensor(K),
    }
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    trainer = {
        "trainer_class": "TopKTrainer", "dict_class": dict_class, "activation_dim": D_IN, "dict_size": N_LATENTS,
        "k": K, "layer": layer, "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": f"resid_post_layer_{layer}",
    }
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))
    return state


def dictionary_learning_reference(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """AutoEncoderTopK: relu(encoder(x − b_dec)), top-k, decoder(z) + b_dec."""
    pre = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    top = pre.topk(K, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    return z @ state["decoder.weight"].T + state["b_dec"]


UPLOAD = """
from huggingface_hub import HfApi
api = HfApi()
api.create_repo({repo!r}, exist_ok=True)
api.upload_folder(repo_id={repo!r}, folder_path={folder!r})
"""


def test_a_sparsify_repo_loads_by_folder_or_hook_point_downloading_only_that_folder(hub, tmp_path):
    root = tmp_path / "sae-pythia-70m-32k"
    tensors = {layer: sparsify_folder(root / f"layers.{layer}", seed=layer) for layer in (0, 2, 10)}
    x = random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    result = hub.run(UPLOAD.format(repo="eai/sae-pythia-70m-32k", folder=str(root)) + f"""
import os, hfsae
from hfsae import TopKSAE
x = torch.load({str(tmp_path / 'x.pt')!r})
by_folder = hfsae.load("eai/sae-pythia-70m-32k", hookpoint="layers.2")
cache = os.environ["HF_HOME"]
downloaded = sorted(p.split("snapshots/")[1].split("/", 1)[1] for p in
                    [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs] if "snapshots/" in p)
by_hook = TopKSAE.from_pretrained("eai/sae-pythia-70m-32k", hookpoint="layers.10.resid_post", dtype=torch.bfloat16)
many = hfsae.load_many("eai/sae-pythia-70m-32k")
emit({{
    "downloaded": downloaded,
    "hook_point": by_folder.config.hook_point,
    "x2": by_folder(x).x_hat.tolist(),
    "dtype": str(by_hook.W_enc.dtype),
    "W_enc10": by_hook.W_enc.float().tolist(),
    "order": list(many),
    "x0": many["layers.0"](x).x_hat.tolist(),
}})
""")
    assert result["downloaded"] == ["layers.2/cfg.json", "layers.2/sae.safetensors"]
    assert result["hook_point"] == "layers.2.resid_post"
    assert result["order"] == ["layers.0", "layers.2", "layers.10"]
    assert result["dtype"] == "torch.bfloat16"
    for layer, key in ((2, "x2"), (0, "x0")):
        torch.testing.assert_close(torch.tensor(result[key]), sparsify_reference(tensors[layer], x), atol=1e-5, rtol=1e-5)
    # bfloat16 as asked: the file's float32 weights rounded once (top-k choices may differ from float32, so no forward check).
    assert torch.equal(torch.tensor(result["W_enc10"]), tensors[10]["encoder.weight"].bfloat16().float())


def test_layer_n_folders_and_saelens_and_dictionary_learning_repos_load_by_hook_point(hub, tmp_path):
    layer_repo, lens_repo, dl_repo = tmp_path / "layer-n", tmp_path / "lens", tmp_path / "dl"
    sparse = sparsify_folder(layer_repo / "layer_3", seed=3)
    sparsify_folder(layer_repo / "layer_4", seed=4)
    lens = {layer: saelens_folder(lens_repo / f"v5_32k_layer_{layer}.pt", layer, seed=10 + layer) for layer in (1, 8)}
    dl = dictionary_learning_folder(dl_repo / "resid_post_layer_3" / "trainer_0", 3, seed=20)
    dictionary_learning_folder(dl_repo / "resid_post_layer_5" / "trainer_0", 5, seed=21)
    x = random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    uploads = "".join(UPLOAD.format(repo=f"org/{path.name}", folder=str(path)) for path in (layer_repo, lens_repo, dl_repo))
    result = hub.run(uploads + f"""
import hfsae
x = torch.load({str(tmp_path / 'x.pt')!r})
sparse = hfsae.load("org/layer-n", hookpoint="layers.3.resid_post")
lens_tl = hfsae.load("org/lens", hookpoint="blocks.8.hook_resid_post")
lens = hfsae.load("org/lens", hookpoint="layers.8.resid_post")
dl = hfsae.load("org/dl", hookpoint="layers.3.resid_post")
emit({{
    "sparse": sparse(x).x_hat.tolist(), "sparse_hook": sparse.config.hook_point,
    "lens": lens(x).x_hat.tolist(), "same": torch.equal(lens.W_enc, lens_tl.W_enc),
    "lens_order": list(hfsae.load_many("org/lens")),
    "dl": dl(x).x_hat.tolist(), "dl_base": dl.config.base_model,
}})
""")
    torch.testing.assert_close(torch.tensor(result["sparse"]), sparsify_reference(sparse, x), atol=1e-5, rtol=1e-5)
    assert result["sparse_hook"] == "layers.3.resid_post"
    torch.testing.assert_close(torch.tensor(result["lens"]), saelens_reference(lens[8], x), atol=1e-5, rtol=1e-5)
    assert result["same"] and result["lens_order"] == ["v5_32k_layer_1.pt", "v5_32k_layer_8.pt"]
    torch.testing.assert_close(torch.tensor(result["dl"]), dictionary_learning_reference(dl, x), atol=1e-5, rtol=1e-5)
    assert result["dl_base"] == "EleutherAI/pythia-70m-deduped"


def test_an_unsupported_dictionary_and_an_unknown_hook_point_fail_in_one_clear_error(hub, tmp_path):
    repo = tmp_path / "batchtopk"
    dictionary_learning_folder(repo / "trainer_0", 2, seed=0, dict_class="JumpReluAutoEncoder")
    result = hub.run(UPLOAD.format(repo="org/batchtopk", folder=str(repo)) + """
import hfsae
from hfsae.hub import HookPointNotInRepoError, UnsupportedArchitectureError
errors = []
for hookpoint, error in ((None, UnsupportedArchitectureError), ("layers.9", HookPointNotInRepoError)):
    try:
        hfsae.load("org/batchtopk", hookpoint=hookpoint)
    except error as err:
        errors.append(str(err))
emit(errors)
""")
    assert "dict_class='JumpReluAutoEncoder'" in result[0]
    assert "no SAE for hook point 'layers.9.resid_post'" in result[1] and "trainer_0" in result[1]
