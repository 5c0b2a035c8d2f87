"""The public collections published since the first formats, laid out as their repos are, loaded by repo id over HTTP.

sparsify folders are written by sparsify itself (SparseCoder.save_to_disk) and its encoder gives the
reference codes; Qwen-Scope, Llama Scope and SAEBench folders are built to the layouts their model
cards and loaders document, with references written here from those definitions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hub_formats import random_activations, random_weights

D_IN, N_LATENTS, K = 16, 64, 4

UPLOAD = """
from huggingface_hub import HfApi
HfApi().create_repo({repo!r}, exist_ok=True)
HfApi().upload_folder(repo_id={repo!r}, folder_path={folder!r})
"""


def sparsify_run(root: Path) -> dict[str, "torch.nn.Module"]:
    """A sparsify run as EleutherAI's newer repos hold it: the training config.json at the root beside the folders."""
    from sparsify import SparseCoder, SparseCoderConfig

    saes = {}
    for seed, folder in enumerate(("embed_tokens", "layers.0", "layers.1.mlp")):
        torch.manual_seed(seed)
        sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=N_LATENTS, k=K))
        with torch.no_grad():
            sae.b_dec.normal_()
            sae.encoder.bias.normal_(std=0.3)
        sae.save_to_disk(root / folder)
        saes[folder] = sae
    training = {"sae": {"expansion_factor": 4, "k": K, "num_latents": N_LATENTS}, "batch_size": 8,
                "hookpoints": ["embed_tokens", "layers.0", "layers.1.mlp"], "run_name": "tiny"}
    (root / "config.json").write_text(json.dumps(training))
    return saes


def sparsify_reference(sae, x: torch.Tensor) -> torch.Tensor:
    """sparsify's own encoder; its decode (a Triton kernel, GPU only) is top_acts · W_dec[top_indices] + b_dec."""
    with torch.no_grad():
        code = sae.encode(x)
        return torch.einsum("tk,tkd->td", code.top_acts, sae.W_dec[code.top_indices]) + sae.b_dec


def test_a_sparsify_run_with_a_root_training_config_loads_every_folder_at_hook_points_that_resolve(hub, tmp_path):
    saes = sparsify_run(tmp_path / "run")
    x = random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    result = hub.run(UPLOAD.format(repo="eai/sae-tiny-64x", folder=str(tmp_path / "run")) + f"""
import hfsae
x = torch.load({str(tmp_path / 'x.pt')!r})
mlp = hfsae.load("eai/sae-tiny-64x", hookpoint="layers.1.mlp_out")
embed = hfsae.load("eai/sae-tiny-64x", hookpoint="embed_tokens")
many = hfsae.load_many("eai/sae-tiny-64x")
emit({{"hooks": {{name: sae.config.hook_point for name, sae in many.items()}},
       "mlp": mlp(x).x_hat.tolist(), "embed": embed(x).x_hat.tolist(), "l0": many["layers.0"](x).x_hat.tolist()}})
""")
    assert result["hooks"] == {"embed_tokens": "embed_tokens", "layers.0": "layers.0.resid_post",
                               "layers.1.mlp": "layers.1.mlp_out"}
    for key, folder in (("mlp", "layers.1.mlp"), ("embed", "embed_tokens"), ("l0", "layers.0")):
        torch.testing.assert_close(torch.tensor(result[key]), sparsify_reference(saes[folder], x), atol=1e-5, rtol=1e-5)


def test_sparsify_hook_points_resolve_on_a_model_and_capture_feeds_the_sae(tiny_lm, tmp_path):
    from hfsae import load
    from hfsae.activations.hook_points import capture

    model = tiny_lm("llama")
    d_model = model.config.hidden_size
    from sparsify import SparseCoder, SparseCoderConfig

    for folder in ("embed_tokens", "layers.1.mlp"):
        SparseCoder(d_model, SparseCoderConfig(num_latents=4 * d_model, k=K)).save_to_disk(tmp_path / "run" / folder)
    ids = torch.randint(0, 200, (2, 7), generator=torch.Generator().manual_seed(0))
    for folder in ("embed_tokens", "layers.1.mlp"):
        sae = load(tmp_path / "run", hookpoint=folder)
        with torch.no_grad():
            acts = capture(model, ids, [sae.config.hook_point])[sae.config.hook_point]
            assert sae(acts).x_hat.shape == acts.shape


def qwen_scope_repo(root: Path, *, card_k: int | None) -> dict[int, dict[str, torch.Tensor]]:
    """layer{n}.sae.pt dicts (W_enc [n, d], W_dec [d, n], b_enc, b_dec) and, optionally, the card with Top-K."""
    root.mkdir(parents=True)
    states = {}
    for layer in (0, 1, 2):
        w = random_weights(d_in=D_IN, n_latents=N_LATENTS, seed=30 + layer)
        states[layer] = {"W_enc": w["W_enc"], "W_dec": w["W_dec"].T.contiguous(), "b_enc": w["b_enc"], "b_dec": w["b_pre"]}
        torch.save(states[layer], root / f"layer{layer}.sae.pt")
    if card_k is not None:
        (root / "README.md").write_text(
            "---\nbase_model: Qwen/Qwen3-1.7B-Base\ntags:\n- qwen-scope\n---\n\n| Property | Value |\n|---|---|\n"
            f"| Top-K | {card_k} |\n| Hook point | Residual stream |\n"
        )
    return states


def qwen_scope_reference(state: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """The cards' demo: z = TopK_k(ReLU(x W_encᵀ + b_enc)), x_hat = z W_decᵀ + b_dec (no b_dec shift of the input)."""
    pre = torch.relu(x @ state["W_enc"].T + state["b_enc"])
    top = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    return z @ state["W_dec"].T + state["b_dec"]


def test_qwen_scope_files_load_with_k_from_the_argument_the_card_or_the_repo_name(hub, tmp_path):
    carded = qwen_scope_repo(tmp_path / "carded", card_k=K)
    named = qwen_scope_repo(tmp_path / "named", card_k=None)
    qwen_scope_repo(tmp_path / "bare", card_k=None)
    x = random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    uploads = "".join(UPLOAD.format(repo=repo, folder=str(tmp_path / folder)) for repo, folder in (
        ("Qwen/SAE-Res-Tiny-W64", "carded"), ("Qwen/SAE-Res-Tiny-W64-L0_3", "named"), ("Qwen/SAE-Res-Tiny", "bare")))
    result = hub.run(uploads + f"""
import hfsae
from hfsae.hub.formats.qwen_scope import MissingKError
x = torch.load({str(tmp_path / 'x.pt')!r})
card = hfsae.load("Qwen/SAE-Res-Tiny-W64", hookpoint="layers.1")
name = hfsae.load("Qwen/SAE-Res-Tiny-W64-L0_3", hookpoint="layers.2.resid_post")
given = hfsae.load("Qwen/SAE-Res-Tiny", hookpoint="layer0.sae.pt", k=5)
try:
    hfsae.load("Qwen/SAE-Res-Tiny", hookpoint="layers.0")
    missing = None
except MissingKError as err:
    missing = str(err)
emit({{"card": card(x).x_hat.tolist(), "card_k": card.config.k, "base": card.config.base_model,
       "hook": card.config.hook_point, "name": name(x).x_hat.tolist(), "name_k": name.config.k,
       "given": given(x).x_hat.tolist(), "missing": missing,
       "order": list(hfsae.load_many("Qwen/SAE-Res-Tiny-W64"))}})
""")
    assert (result["card_k"], result["name_k"], result["hook"]) == (K, 3, "layers.1.resid_post")
    assert result["base"] == "Qwen/Qwen3-1.7B-Base"
    assert result["order"] == ["layer0.sae.pt", "layer1.sae.pt", "layer2.sae.pt"]
    torch.testing.assert_close(torch.tensor(result["card"]), qwen_scope_reference(carded[1], x, K), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(result["name"]), qwen_scope_reference(named[2], x, 3), atol=1e-5, rtol=1e-5)
    bare0 = torch.load(tmp_path / "bare" / "layer0.sae.pt", weights_only=True)
    torch.testing.assert_close(torch.tensor(result["given"]), qwen_scope_reference(bare0, x, 5), atol=1e-5, rtol=1e-5)
    assert "pass it, e.g. hfsae.load(..., k=50)" in result["missing"] and "\n" not in result["missing"]


def dictionary_learning_trainer(folder: Path, dict_class: str, seed: int) -> dict[str, torch.Tensor]:
    """One SAEBench / dictionary_learning trainer folder: ae.pt + config.json with its 'trainer' section."""
    w = random_weights(d_in=D_IN, n_latents=N_LATENTS, seed=seed)
    state = {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "decoder.weight": w["W_dec"].T.contiguous(),
             "b_dec": w["b_pre"], "k": torch.tensor(K)}
    if dict_class == "JumpReluAutoEncoder":
        state = {"W_enc": w["W_enc"].T.contiguous(), "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_pre"],
                 "threshold": torch.full((N_LATENTS,), 0.1)}
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    trainer = {"dict_class": dict_class, "activation_dim": D_IN, "dict_size": N_LATENTS, "k": K, "layer": 3,
               "lm_name": "google/gemma-2-2b", "submodule_name": "resid_post_layer_3"}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))
    return state


def test_a_saebench_sweep_loads_every_topk_trainer_and_names_the_folders_it_skipped(hub, tmp_path):
    sweep = tmp_path / "sweep"
    kept = {n: dictionary_learning_trainer(sweep / "resid_post_layer_3" / f"trainer_{n}", "AutoEncoderTopK", n)
            for n in (0, 2)}
    dictionary_learning_trainer(sweep / "resid_post_layer_3" / "trainer_1", "JumpReluAutoEncoder", 1)
    x = random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    result = hub.run(UPLOAD.format(repo="org/saebench-sweep", folder=str(sweep)) + f"""
import warnings, hfsae
from hfsae.hub import SkippedSAEsWarning, UnsupportedArchitectureError
x = torch.load({str(tmp_path / 'x.pt')!r})
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    many = hfsae.load_many("org/saebench-sweep")
try:
    hfsae.load_many("org/saebench-sweep", strict=True)
    strict = None
except UnsupportedArchitectureError as err:
    strict = str(err)
emit({{"names": list(many), "t2": many["resid_post_layer_3/trainer_2"](x).x_hat.tolist(),
       "warnings": [str(w.message) for w in caught if issubclass(w.category, SkippedSAEsWarning)], "strict": strict}})
""")
    assert result["names"] == ["resid_post_layer_3/trainer_0", "resid_post_layer_3/trainer_2"]
    assert len(result["warnings"]) == 1
    assert "resid_post_layer_3/trainer_1: JumpReLU (dict_class 'JumpReluAutoEncoder')" in result["warnings"][0]
    assert "strict=True" in result["strict"] and "trainer_1: JumpReLU" in result["strict"]
    state = kept[2]
    pre = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    top = pre.topk(K, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values) @ state["decoder.weight"].T + state["b_dec"]
    torch.testing.assert_close(torch.tensor(result["t2"]), expected, atol=1e-5, rtol=1e-5)


def llama_scope_folder(folder: Path, *, act_fn: str, layer: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """A Llama Scope folder: lm_saes's hyperparams.json + checkpoints/final.safetensors (encoder/decoder Linear weights)."""
    w = random_weights(d_in=D_IN, n_latents=N_LATENTS, seed=layer)
    tensors = {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "decoder.weight": w["W_dec"].T.contiguous(),
               "decoder.bias": w["b_pre"]}
    cfg = {"d_model": D_IN, "expansion_factor": 4, "d_sae": N_LATENTS, "act_fn": act_fn, "top_k": K,
           "hook_point_in": f"blocks.{layer}.hook_resid_post", "hook_point_out": f"blocks.{layer}.hook_resid_post",
           "norm_activation": "dataset-wise", "dataset_average_activation_norm": {"in": 7.5, "out": 7.5},
           "sparsity_include_decoder_norm": True, "apply_decoder_bias_to_pre_encoder": False, "use_decoder_bias": True}
    if act_fn == "jumprelu":
        cfg["jump_relu_threshold"] = 0.52734375
    (folder / "checkpoints").mkdir(parents=True)
    save_file(tensors, folder / "checkpoints" / "final.safetensors")
    (folder / "hyperparams.json").write_text(json.dumps(cfg))
    return cfg, tensors


def llama_scope_reference(cfg: dict, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """lm_saes: x_n = x·√d/norm, h = encoder(x_n), z = TopK(h·‖W_dec‖)/‖W_dec‖, x_hat = decoder(z)·norm/√d."""
    scale = math.sqrt(D_IN) / cfg["dataset_average_activation_norm"]["in"]
    norms = tensors["decoder.weight"].norm(dim=0)
    h = (x * scale) @ tensors["encoder.weight"].T + tensors["encoder.bias"]
    top = (h * norms).topk(K, dim=-1)
    z = torch.zeros_like(h).scatter(-1, top.indices, torch.relu(top.values)) / norms
    return (z @ tensors["decoder.weight"].T + tensors["decoder.bias"]) / scale


def test_llama_scope_topk_folders_load_and_thresholded_ones_are_refused_by_name(hub, tmp_path):
    repo = tmp_path / "llama-scope"
    cfg, tensors = llama_scope_folder(repo / "Llama3_1-8B-Base-L15R-8x", act_fn="topk", layer=15)
    llama_scope_folder(repo / "Llama3_1-8B-Base-L16R-8x", act_fn="jumprelu", layer=16)
    x = 7.5 / math.sqrt(D_IN) * random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    result = hub.run(UPLOAD.format(repo="fnlp/Llama3_1-8B-Base-LXR-8x", folder=str(repo)) + f"""
import hfsae
from hfsae.hub import UnsupportedArchitectureError
x = torch.load({str(tmp_path / 'x.pt')!r})
sae = hfsae.load("fnlp/Llama3_1-8B-Base-LXR-8x", hookpoint="layers.15.resid_post")
try:
    hfsae.load("fnlp/Llama3_1-8B-Base-LXR-8x", hookpoint="Llama3_1-8B-Base-L16R-8x")
    refused = None
except UnsupportedArchitectureError as err:
    refused = str(err)
emit({{"x_hat": sae(x).x_hat.tolist(), "base": sae.config.base_model, "refused": refused}})
""")
    torch.testing.assert_close(torch.tensor(result["x_hat"]), llama_scope_reference(cfg, tensors, x), atol=1e-4, rtol=1e-4)
    assert result["base"] == "meta-llama/Llama-3.1-8B"
    assert "JumpReLU" in result["refused"] and "jump_relu_threshold=0.52734375" in result["refused"]


def test_a_foreign_config_is_refused_in_one_line_naming_what_was_found(hub, tmp_path):
    repo = tmp_path / "mlsae"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"d_model": 16, "n_latents": 64, "k": 4, "layers": [0, 1]}))
    save_file({"encoder.weight": torch.zeros(64, 16)}, repo / "model.safetensors")
    result = hub.run(UPLOAD.format(repo="tim-lawson/mlsae-tiny", folder=str(repo)) + """
import hfsae
from hfsae.folder import SAEFolderError
try:
    hfsae.load("tim-lawson/mlsae-tiny")
except SAEFolderError as err:
    emit(str(err))
""")
    assert "\n" not in result and "holds no SAE hfsae reads" in result
    assert "config.json (keys: d_model, k, layers, n_latents)" in result and "model.safetensors" in result
    assert "config.json (model_type 'topk_sae')" in result and "Qwen-Scope" in result


def test_a_subclass_loads_foreign_and_own_repos_as_itself(hub, tmp_path):
    saes = sparsify_run(tmp_path / "run")
    del saes
    result = hub.run(UPLOAD.format(repo="eai/sae-sub", folder=str(tmp_path / "run")) + """
from hfsae import TopKSAE
class MySAE(TopKSAE):
    pass
foreign = MySAE.from_pretrained("eai/sae-sub", hookpoint="layers.0")
foreign.save_pretrained("own")
own = MySAE.from_pretrained("own")
emit([type(foreign).__name__, type(own).__name__, type(TopKSAE.from_pretrained("own")).__name__])
""")
    assert result == ["MySAE", "MySAE", "TopKSAE"]


@pytest.mark.slow  # four client processes
def test_transformers_download_options_cache_dir_local_files_only_and_force_download(hub, tmp_path):
    saes = sparsify_run(tmp_path / "run")
    x = random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    cache = tmp_path / "my-cache"
    hub.run(UPLOAD.format(repo="eai/sae-options", folder=str(tmp_path / "run")) + f"""
from hfsae import TopKSAE
TopKSAE.from_pretrained("eai/sae-options", hookpoint="layers.0", cache_dir={str(cache)!r})
""", cache="empty")
    blobs = list(cache.rglob("blobs/*"))
    assert len(blobs) == 2 and not list(hub.hf_home("empty").rglob("blobs/*"))  # in cache_dir, nowhere else
    weights = max(blobs, key=lambda path: path.stat().st_size)
    weights.write_bytes(b"truncated")
    result = hub.run(f"""
import os
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"      # the server is gone
import hfsae
from hfsae.folder import SAEFolderError
x = torch.load({str(tmp_path / 'x.pt')!r})
try:
    hfsae.load("eai/sae-options", hookpoint="layers.0", cache_dir={str(cache)!r}, local_files_only=True)
    emit("loaded a truncated file")
except SAEFolderError as err:
    emit("refused the cached file")
""", cache="empty")
    assert result == "refused the cached file"  # it read the cache, not the (gone) server
    result = hub.run(f"""
import hfsae
x = torch.load({str(tmp_path / 'x.pt')!r})
sae = hfsae.load("eai/sae-options", hookpoint="layers.0", cache_dir={str(cache)!r}, force_download=True)
emit(sae(x).x_hat.tolist())
""", cache="empty")
    torch.testing.assert_close(torch.tensor(result), sparsify_reference(saes["layers.0"], x), atol=1e-5, rtol=1e-5)
    offline = hub.run(f"""
import os
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
import hfsae
x = torch.load({str(tmp_path / 'x.pt')!r})
emit(hfsae.load("eai/sae-options", hookpoint="layers.0", cache_dir={str(cache)!r}, local_files_only=True)(x).x_hat.tolist())
""", cache="empty")
    assert offline == result


def test_a_local_convert_never_goes_to_the_hub(tmp_path):
    from hfsae.hub.convert import convert

    folder = tmp_path / "src"
    folder.mkdir()
    entries = [{"folder": f"org/layer-{n}", "hook_point": f"layers.{n}.resid_post"} for n in range(3)]
    (folder / "index.json").write_text(json.dumps({"format": "hfsae-index", "version": 1, "saes": entries}))
    with pytest.raises(FileNotFoundError, match=r"index.json lists the folder 'org/layer-0', which is not in"):
        convert(folder, tmp_path / "dst", source_format="hfsae")
    assert not (tmp_path / "dst").exists()
