"""push_to_hub / save_pretrained(push_to_hub=True) / `hfsae push` with transformers' options, over HTTP."""

import pytest
import torch

from test_push_load import MAKE_SAE, new_repo

pytestmark = pytest.mark.slow  # each test starts a Python subprocess that imports torch and transformers


def test_a_pull_request_against_a_new_branch_carries_our_card_and_leaves_main_alone(hub):
    repo = new_repo()
    result = hub.run(MAKE_SAE + f"""
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from hfsae import TopKSAE
commit = make_sae(1).push_to_hub({repo!r}, revision="dev", create_pr=True, commit_message="Add SAE",
                                 commit_description="the details", tags=["pythia"])
card = ModelCard.load(hf_hub_download({repo!r}, "README.md", revision=commit.pr_revision))
pr = HfApi().get_discussion_details({repo!r}, commit.pr_num)
main_files = HfApi().list_repo_files({repo!r}, revision="main")
loaded = TopKSAE.from_pretrained({repo!r}, revision=commit.pr_revision)
emit({{"pr_url": commit.pr_url, "pr_revision": commit.pr_revision, "library": card.data.library_name,
      "tags": card.data.tags, "target": pr.target_branch, "title": pr.title, "main": main_files,
      "same": torch.equal(loaded.W_dec, make_sae(1).W_dec)}})
""")
    assert result["pr_url"].endswith(f"{repo}/discussions/1") and result["pr_revision"] == "refs/pr/1"
    assert result["library"] == "hfsae" and "pythia" in result["tags"]
    assert (result["target"], result["title"]) == ("refs/heads/dev", "Add SAE")
    assert result["main"] == [".gitattributes"] and result["same"]


def test_save_pretrained_push_uses_our_card_and_the_namespace_create_repo_returns(hub, tmp_path):
    name = new_repo().split("/")[1]
    result = hub.run(MAKE_SAE + f"""
from huggingface_hub import ModelCard, hf_hub_download
commit = make_sae(2).save_pretrained({str(tmp_path / 'sae')!r}, push_to_hub=True, repo_id={name!r})
card = ModelCard.load(hf_hub_download("tester/{name}", "README.md"))
emit({{"url": commit.commit_url, "library": card.data.library_name, "usage": "tester/{name}" in card.text}})
""")
    assert f"tester/{name}/commit/" in result["url"]
    assert result["library"] == "hfsae" and result["usage"]


def test_hfsae_push_uploads_the_allow_list_and_a_multi_sae_card_and_says_what_it_left_out(hub, tmp_path):
    repo = new_repo()
    folder = tmp_path / "saes"
    result = hub.run(MAKE_SAE + f"""
import contextlib, io, os
from pathlib import Path
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from hfsae.cli import main
from hfsae.hub.multi import save_many
folder = Path({str(folder)!r})
save_many({{"layers.2": make_sae(2, "layers.2.resid_post"), "layers.10": make_sae(3, "layers.10.resid_post")}}, folder)
(folder / ".env").write_text("SECRET=1")
(folder / "layers.2" / "checkpoints" / "step-1").mkdir(parents=True)
(folder / "layers.2" / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"x")
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = main(["push", "--folder", str(folder), "--repo-id", {repo!r}, "--revision", "dev", "--create-pr",
                   "--commit-message", "SAEs", "--tags", "pythia"])
files = HfApi().list_repo_files({repo!r}, revision="refs/pr/1")
card = ModelCard.load(hf_hub_download({repo!r}, "README.md", revision="refs/pr/1"))
emit({{"status": status, "out": out.getvalue(), "files": files, "library": card.data.library_name, "text": card.text}})
""")
    assert result["status"] == 0
    assert ".env" in result["out"] and "layers.2/checkpoints/" in result["out"] and "/discussions/1" in result["out"]
    assert not any(path.startswith(".env") or "checkpoints" in path for path in result["files"])
    assert {"config.json", "index.json", "README.md", "layers.2/model.safetensors", "layers.10/README.md"} <= set(result["files"])
    assert result["library"] == "hfsae"
    assert result["text"].index("`layers.2`") < result["text"].index("`layers.10`")


def test_each_push_renders_each_card_once_with_the_repo_id(hub, tmp_path):
    repo = new_repo()
    result = hub.run(MAKE_SAE + f"""
from pathlib import Path
import hfsae.hub.card, hfsae.hub.push
from hfsae.hub.push import push_many
real, calls = hfsae.hub.card.write_card, []
def counted(folder, **options):  # the real renderer, counted
    calls.append((Path(folder).name, options.get("repo_id")))
    return real(folder, **options)
hfsae.hub.card.write_card = hfsae.hub.push.write_card = counted
counts = {{}}
make_sae(1).push_to_hub({repo!r})
counts["push_to_hub"], calls[:] = list(calls), []
make_sae(2).push_to_hub({repo!r}, folder="layers.2")
counts["push_to_hub folder"], calls[:] = list(calls), []
push_many({{"layers.3": make_sae(3), "layers.4": make_sae(4)}}, {repo!r})
counts["push_many"], calls[:] = list(calls), []
make_sae(5).save_pretrained({str(tmp_path / 'saved')!r}, push_to_hub=True, repo_id={repo!r})
counts["save_pretrained(push_to_hub=True)"], calls[:] = list(calls), []
make_sae(6).save_pretrained({str(tmp_path / 'local')!r})
counts["save_pretrained"] = list(calls)
emit(counts)
""")
    assert len(result["push_to_hub"]) == 1 and result["push_to_hub"][0][1] == repo
    assert [name for name, _ in result["push_to_hub folder"]] == ["layers.2"]
    assert sorted(name for name, _ in result["push_many"]) == ["layers.3", "layers.4"]
    assert result["save_pretrained(push_to_hub=True)"] == [["saved", repo]]
    assert result["save_pretrained"] == [["local", None]]


def test_a_sweep_trained_by_hfsae_train_loads_from_the_hub_after_hfsae_push(hub, tmp_path, tiny_lm, tiny_tokenizer):
    import json

    from hfsae.cli import main

    model = tmp_path / "tiny-llama"
    tiny_lm("llama").save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    corpus = tmp_path / "corpus.jsonl"
    words = "sparse autoencoders learn latents from the activations of language models at one hook point".split()
    corpus.write_text("\n".join(json.dumps({"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(i % 13 + 8))})
                                for i in range(300)))
    output_dir = tmp_path / "sweep"
    assert main([
        "train", "--model", str(model), "--dataset", str(corpus), "--hook-points", "layers.0.resid_post",
        "layers.1.resid_post", "--n-latents", "32", "--k", "4", "--context-size", "16", "--harvest-tokens", "600",
        "--eval-tokens", "120", "--batch-size", "60", "--train-tokens", "240", "--save-steps", "2",
        "--output-dir", str(output_dir), "--quiet",
    ]) == 0  # fmt: skip
    repo = new_repo()
    result = hub.run(f"""
import contextlib, io
from hfsae.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = main(["push", "--folder", {str(output_dir)!r}, "--repo-id", {repo!r}])
emit({{"status": status, "out": out.getvalue()}})
""", cache="pusher")
    assert result["status"] == 0 and "checkpoints/" in result["out"], result["out"]  # kept local, and said so
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    loaded = hub.run(f"""
import hfsae
x = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
many = hfsae.load_many({repo!r})
one = hfsae.load({repo!r}, hookpoint="layers.1.resid_post")
emit({{"many": {{name: sae(x).x_hat.tolist() for name, sae in many.items()}}, "one": one(x).x_hat.tolist()}})
""", cache="fresh")
    import hfsae

    local = {name: sae(x).x_hat.tolist() for name, sae in hfsae.load_many(output_dir).items()}
    assert list(local) == ["layers.0.resid_post/n32_k4", "layers.1.resid_post/n32_k4"]
    assert loaded["many"] == local and loaded["one"] == local["layers.1.resid_post/n32_k4"]
