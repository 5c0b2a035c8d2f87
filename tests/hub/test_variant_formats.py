"""Foreign transcoders and BatchTopK SAEs, uploaded as their libraries lay them out, loaded by repo id over HTTP.

sparsify transcoders are made and saved by sparsify itself (SparseCoder with transcode / skip_connection,
save_to_disk), and its own encoder gives the reference outputs. dictionary_learning's BatchTopKSAE
cannot be imported here (its package imports nnsight), so its folders are built to the layout its
BatchTopKTrainer saves (ae.pt state dict, config.json 'trainer' section) and the reference is its
encode/decode (dictionary_learning/trainers/batch_top_k.py) written out below. SAELens (which needs
transformer_lens) is treated the same way: its BatchTopK export is built as save_inference_model writes
it (a JumpReLU cfg.json and weights, batchtopk_sae.py / jumprelu_sae.py) and its JumpReLU encode is the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hub_formats import random_activations

D_IN, N_LATENTS, K = 16, 64, 4

UPLOAD = """
from huggingface_hub import HfApi
HfApi().create_repo({repo!r}, exist_ok=True)
HfApi().upload_folder(repo_id={repo!r}, folder_path={folder!r})
"""


def sparsify_transcoder(path: Path, *, transcode: bool, skip: bool, seed: int):
    """A sparsify SparseCoder with random (non-zero) weights, saved by sparsify to `path`."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(seed)
    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=N_LATENTS, k=K, transcode=transcode, skip_connection=skip))
    with torch.no_grad():
        for tensor in (sae.W_dec, sae.b_dec, sae.encoder.bias) + ((sae.W_skip,) if skip else ()):
            tensor.normal_(std=0.3)
    sae.save_to_disk(path)
    return sae


def sparsify_prediction(sae, x: torch.Tensor) -> torch.Tensor:
    """sparsify's own encode, then its decode and skip term (decoder_impl is a GPU kernel; this is its sum)."""
    with torch.no_grad():
        code = sae.encode(x)
        y = torch.einsum("tk,tkd->td", code.top_acts, sae.W_dec[code.top_indices]) + sae.b_dec
        return y if sae.W_skip is None else y + x @ sae.W_skip.mT


def test_sparsify_transcoders_and_skip_saes_load_by_repo_id_and_reproduce_sparsify(hub, tmp_path):
    made = {
        "layers.1.mlp": sparsify_transcoder(tmp_path / "run" / "layers.1.mlp", transcode=True, skip=True, seed=0),
        "layers.2": sparsify_transcoder(tmp_path / "run" / "layers.2", transcode=True, skip=False, seed=1),
        "h.3.mlp": sparsify_transcoder(tmp_path / "run" / "h.3.mlp", transcode=False, skip=True, seed=2),
    }
    x = random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    result = hub.run(UPLOAD.format(repo="eai/skip-transcoder-tiny", folder=str(tmp_path / "run")) + f"""
import hfsae
x = torch.load({str(tmp_path / 'x.pt')!r})
out = {{}}
for name, sae in hfsae.load_many("eai/skip-transcoder-tiny").items():
    c = sae.config
    out[name] = {{"y": sae.decode(sae.encode(x), x=x).tolist(), "forward": sae(x).x_hat.tolist(),
                 "places": [c.hook_point, c.target_hook_point], "skip": c.skip_connection,
                 "subtracts": c.subtracts_b_pre}}
emit(out)
""")
    assert result["layers.1.mlp"]["places"] == ["model.layers.1.mlp:input", "layers.1.mlp_out"]
    assert result["layers.2"]["places"] == ["layers.2.resid_pre", "layers.2.resid_post"]
    assert result["h.3.mlp"]["places"] == ["layers.3.mlp_out", None]
    assert [result[name]["subtracts"] for name in made] == [False, False, True]
    assert [result[name]["skip"] for name in made] == [True, False, True]
    for name, sae in made.items():
        expected = sparsify_prediction(sae, x)
        torch.testing.assert_close(torch.tensor(result[name]["y"]), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(result[name]["forward"]), expected, atol=1e-5, rtol=1e-5)


def test_a_sparsify_skip_sae_without_w_skip_in_its_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from hfsae.folder import SAEFolderError
    from hub_formats import from_format

    folder = tmp_path / "layers.4"
    sparsify_transcoder(folder, transcode=True, skip=True, seed=3)
    tensors = load_file(folder / "sae.safetensors")
    del tensors["W_skip"]
    save_file(tensors, folder / "sae.safetensors")
    with pytest.raises(SAEFolderError, match="W_skip"):
        from_format("sparsify", folder)


def batchtopk_folder(folder: Path, *, threshold: float | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A dictionary_learning BatchTopKTrainer folder; threshold None: a fitted one (the median positive pre-act)."""
    from hub_formats import random_weights

    w = random_weights(d_in=D_IN, n_latents=N_LATENTS, seed=seed)
    state = {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "decoder.weight": w["W_dec"].T.contiguous(),
             "b_dec": w["b_pre"], "k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(-1.0)}
    if threshold is None:
        pre = dictionary_learning_preactivations(state, random_activations(d_in=D_IN, seed=7))
        threshold = float(pre[pre > 0].median())
    state["threshold"] = torch.tensor(threshold)
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    trainer = {"trainer_class": "BatchTopKTrainer", "dict_class": "BatchTopKSAE", "activation_dim": D_IN,
               "dict_size": N_LATENTS, "k": K, "layer": 3, "lm_name": "EleutherAI/pythia-70m-deduped",
               "submodule_name": "resid_post_layer_3", "threshold_beta": 0.999, "threshold_start_step": 1000}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))
    return state


def dictionary_learning_preactivations(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])


def batchtopk_reference(state: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchTopKSAE.encode (use_threshold=True) and decode: f · (f > threshold), then decoder(z) + b_dec."""
    f = dictionary_learning_preactivations(state, x)
    z = f * (f > state["threshold"])
    return z, z @ state["decoder.weight"].T + state["b_dec"]


def test_a_dictionary_learning_batchtopk_sae_loads_by_repo_id_and_keeps_latents_above_its_threshold(hub, tmp_path):
    state = batchtopk_folder(tmp_path / "sweep" / "trainer_0", threshold=None)
    x = random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    result = hub.run(UPLOAD.format(repo="org/batchtopk-sweep", folder=str(tmp_path / "sweep")) + f"""
import hfsae
x = torch.load({str(tmp_path / 'x.pt')!r})
sae = hfsae.load("org/batchtopk-sweep")
code = sae.encode(x)
dense = torch.zeros(x.shape[0], sae.config.n_latents).scatter_add(-1, code.indices, code.values)
emit({{"x_hat": sae(x).x_hat.tolist(), "z": dense.tolist(), "architecture": sae.config.architecture,
       "inference": sae.config.inference_mode, "threshold": float(sae.threshold), "hook": sae.config.hook_point}})
""")
    z, x_hat = batchtopk_reference(state, x)
    assert (result["architecture"], result["inference"]) == ("batchtopk", "threshold")
    assert result["threshold"] == float(state["threshold"]) and result["hook"] == "layers.3.resid_post"
    assert len(set((z > 0).sum(1).tolist())) > 1  # the threshold, not k, decides how many latents a token keeps
    torch.testing.assert_close(torch.tensor(result["z"]), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(result["x_hat"]), x_hat, atol=1e-5, rtol=1e-5)


def test_a_batchtopk_dictionary_whose_threshold_was_never_estimated_loads_and_says_so_when_encoding(tmp_path):
    from hub_formats import from_format

    batchtopk_folder(tmp_path / "trainer_1", threshold=-1.0)
    sae = from_format("dictionary_learning", tmp_path / "trainer_1")
    with pytest.raises(ValueError, match="no threshold yet"):
        sae.encode(random_activations(d_in=D_IN))
    assert sae.encode(random_activations(d_in=D_IN), k=K).values.shape[-1] == K


def saelens_batchtopk_export(folder: Path, *, thresholds: torch.Tensor | None = None, training: str = "batchtopk"):
    """What SAELens's BatchTopKTrainingSAE.save_inference_model writes: a JumpReLU cfg.json, per-latent thresholds."""
    from safetensors.torch import save_file

    from hub_formats import random_weights

    w = random_weights(d_in=D_IN, n_latents=N_LATENTS, seed=4)
    tensors = {"W_enc": w["W_enc"].T.contiguous(), "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_pre"]}
    if thresholds is None:
        hidden = (random_activations(d_in=D_IN, seed=9) - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
        thresholds = torch.full((N_LATENTS,), float(hidden[hidden > 0].median()))
    tensors["threshold"] = thresholds
    cfg = {"d_in": D_IN, "d_sae": N_LATENTS, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "architecture": "jumprelu",
           "metadata": {"hook_name": "blocks.5.hook_resid_post", "model_name": "gpt2-small",
                        "sae_lens_version": "6.54.12",
                        "training_architecture": training,
                        "training_architecture_details": {"k": float(K), "topk_threshold_lr": 0.01}}}
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, folder / "sae_weights.safetensors")
    return tensors


def jumprelu_reference(tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SAELens JumpReLUSAE: h = (x − b_dec) W_enc + b_enc, z = ReLU(h) · (h > threshold), z W_dec + b_dec."""
    hidden = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    return (torch.relu(hidden) * (hidden > tensors["threshold"])) @ tensors["W_dec"] + tensors["b_dec"]


def test_a_saelens_batchtopk_export_loads_by_repo_id_as_batchtopk_and_reproduces_its_jumprelu_forward(hub, tmp_path):
    tensors = saelens_batchtopk_export(tmp_path / "release" / "blocks.5.hook_resid_post")
    x = random_activations(d_in=D_IN)
    torch.save(x, tmp_path / "x.pt")
    result = hub.run(UPLOAD.format(repo="org/saelens-batchtopk", folder=str(tmp_path / "release")) + f"""
import hfsae
x = torch.load({str(tmp_path / 'x.pt')!r})
sae = hfsae.load("org/saelens-batchtopk", hookpoint="layers.5.resid_post")
emit({{"x_hat": sae(x).x_hat.tolist(), "architecture": sae.config.architecture, "k": sae.config.k,
       "threshold": float(sae.threshold), "l0": (sae.encode(x).values > 0).sum(1).tolist()}})
""")
    assert (result["architecture"], result["k"]) == ("batchtopk", K)
    assert result["threshold"] == float(tensors["threshold"][0]) and len(set(result["l0"])) > 1
    torch.testing.assert_close(torch.tensor(result["x_hat"]), jumprelu_reference(tensors, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "thresholds, training, message",
    [(torch.linspace(0.1, 0.5, N_LATENTS), "batchtopk", "per-latent thresholds differ"),
     (torch.full((N_LATENTS,), 0.2), "jumprelu", "unsupported architecture jumprelu")],
)
def test_saelens_jumprelu_saes_proper_are_still_refused_by_name(tmp_path, thresholds, training, message):
    from hfsae.hub.files import UnsupportedArchitectureError
    from hub_formats import from_format

    saelens_batchtopk_export(tmp_path / "sae", thresholds=thresholds, training=training)
    with pytest.raises(UnsupportedArchitectureError, match=message):
        from_format("saelens", tmp_path / "sae")


@pytest.mark.parametrize("family, folder", [("llama", "layers.1.mlp"), ("gpt2", "h.1.mlp"), ("llama", "layers.2")])
def test_a_sparsify_transcoders_hook_points_name_its_modules_input_and_output(tiny_lm, tmp_path, family, folder):
    """What the transcoder reads and what it predicts resolve on the model, to the same module (as sparsify hooks it)."""
    from hfsae.activations.hook_points import resolve
    from hub_formats import from_format

    model = tiny_lm(family)
    sparsify_transcoder(tmp_path / folder, transcode=True, skip=False, seed=5)
    config = from_format("sparsify", tmp_path / folder).config
    source, target = resolve(model, config.hook_point), resolve(model, config.target_hook_point)
    assert (source.kind, target.kind) == ("input", "output") and source.module is target.module
