"""Classes 2, 3 and 9 for the activation cache: a changed model or tokenizer never reuses old rows, a manifest
is validated before any of it is used, and a killed build leaves nothing behind the next run keeps."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from hfsae.activations.cache import CacheMismatchError, CorruptCacheError, model_fingerprint, tokenizer_fingerprint
from hfsae.activations.hook_points import resolve
from hfsae.activations.source import ActivationSource, TextSource

HOOK_POINT = "layers.1.resid_post"
OPTIONS = {"context_size": 16, "contexts_per_forward": 2, "batch_tokens": 20, "buffer_tokens": 120, "n_tokens": 90}


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"Document {i}: the quick brown fox. " * 3}) for i in range(20)))
    return TextSource(str(path), split="all")


@pytest.fixture
def model(tiny_lm):
    return copy.deepcopy(tiny_lm("llama"))  # changed in place by the tests


@pytest.fixture
def built(model, tiny_tokenizer, text, tmp_path):
    """Run with a cache once; returns a function making the next run's source over the same cache."""
    cache = tmp_path / "cache"

    def source(model=model, tokenizer=tiny_tokenizer):
        return ActivationSource(model, tokenizer, [HOOK_POINT], text=text, cache_dir=cache, **OPTIONS)

    list(source())
    return source


def manifest_path(tmp_path):
    return tmp_path / "cache" / "manifest.json"


def edit_manifest(tmp_path, change):
    manifest = json.loads(manifest_path(tmp_path).read_text())
    change(manifest)
    manifest_path(tmp_path).write_text(json.dumps(manifest))


# ---- class 2: what determines the activations is what the fingerprint covers


def test_a_model_fine_tuned_in_place_in_its_last_used_layer_never_reuses_the_old_rows(built, model):
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3  # the layer of the hook point, past the first tensors
    with pytest.raises(CacheMismatchError, match=r"built from another model\.weights_sha256"):
        list(built(model))


def test_layers_after_the_deepest_hook_point_do_not_invalidate_the_cache(built, model):
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.mul_(2.0)  # never run: the forward stops at layer 1
    assert len(list(built(model))) > 0


def test_a_changed_tokenizer_with_the_same_name_and_size_never_reuses_the_old_rows(built, tiny_tokenizer):
    changed = copy.deepcopy(tiny_tokenizer)
    changed.eos_token = "a"  # same vocabulary and length, another end-of-text token
    assert len(changed) == len(tiny_tokenizer)
    with pytest.raises(CacheMismatchError, match=r"built from another tokenizer\.sha256"):
        list(built(tokenizer=changed))


def test_the_fingerprint_of_a_model_saved_and_loaded_again_is_the_same(model, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    before = model_fingerprint(model, [resolve(model, HOOK_POINT)])
    after = model_fingerprint(reloaded, [resolve(reloaded, HOOK_POINT)])
    assert after["weights_sha256"] == before["weights_sha256"] and after["dtype"] == before["dtype"]
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tmp_path / "m"))["sha256"] == tokenizer_fingerprint(
        tiny_tokenizer
    )["sha256"]


# ---- class 3: the manifest is checked before use


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["shards"][0].update(file="../outside.safetensors"), "must name a file shard_NNNNN.safetensors inside"),
        (lambda m: m["shards"][0].update(file="/tmp/outside.safetensors"), "must name a file shard_NNNNN.safetensors inside"),
        (lambda m: m.update(n_rows=10**15), r"its shards hold \d+ rows, not the 1000000000000000 of 'n_rows'"),
        (lambda m: m.update(n_rows=-5), "'n_rows' must be a positive integer, not -5"),
        (lambda m: m.update(n_rows=m["n_rows"] - 1), r"its shards hold (\d+) rows, not the \d+ of 'n_rows'"),
        (lambda m: m.update(n_rows="90"), "'n_rows' must be a positive integer"),
        (lambda m: m.update(shards=[]), "'shards' must be a non-empty list, not \\[\\]"),
        (lambda m: m.update(shards="shard_00000.safetensors"), "'shards' must be a non-empty list"),
        (lambda m: m.pop("description"), "it has no 'description' object"),
        (lambda m: m["shards"][0].update(rows=-1), "needs a positive 'rows'"),
        (lambda m: m["shards"][0].update(sha256="x"), "a 'sha256' of 64 hex digits"),
        (lambda m: m.update(widths={HOOK_POINT: 0}), "'widths' must map each hook point to a positive width"),
        (lambda m: m.update(shards=m["shards"] * 2, n_rows=2 * m["n_rows"]), "a shard file is listed twice"),
    ],
)
def test_a_malformed_manifest_is_a_corrupt_cache_error_naming_the_problem(built, tmp_path, change, message):
    edit_manifest(tmp_path, change)
    with pytest.raises(CorruptCacheError, match=rf"manifest.json is not a valid activation cache manifest: .*{message}.*"
                                                r"Delete .*cache to rebuild it"):  # fmt: skip
        list(built())


def test_row_counts_that_add_up_but_disagree_with_the_shard_header_are_refused(built, tmp_path):
    def fewer_rows(manifest):
        manifest["shards"][0]["rows"] -= 1
        manifest["n_rows"] -= 1

    edit_manifest(tmp_path, fewer_rows)
    with pytest.raises(CorruptCacheError, match=r"shard_00000.safetensors holds .*\[90, 32\].* but manifest.json says .*\[89, 32\]"):
        list(built())


def test_a_shard_replaced_by_a_file_of_nul_bytes_is_a_corrupt_cache_error(built, tmp_path):
    (tmp_path / "cache" / "shard_00000.safetensors").write_bytes(b"\0" * 4096)
    with pytest.raises(CorruptCacheError, match=r"shard_00000.safetensors is unreadable"):
        list(built())


# ---- class 9: a killed build


def test_a_killed_cache_build_leaves_a_staging_folder_the_next_run_removes(model, tiny_tokenizer, text, tmp_path):
    code = f"""
import os, sys
import torch
from hfsae.activations.cache import ActivationCache
def blocks():
    yield {{"x": torch.ones(100, 8)}}
    os._exit(9)  # killed mid-build
ActivationCache({str(tmp_path / "cache")!r}, {{"any": 1}}).build(blocks(), shard_rows=50)
"""
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 9
    staging = [path.name for path in tmp_path.iterdir() if path.name.startswith(".cache.staging-")]
    assert len(staging) == 1 and os.listdir(tmp_path / staging[0])  # shards written, no manifest
    list(ActivationSource(model, tiny_tokenizer, [HOOK_POINT], text=text, cache_dir=tmp_path / "cache", **OPTIONS))
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".cache.")]
    assert (tmp_path / "cache" / "manifest.json").is_file()
