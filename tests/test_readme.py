"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(containing: str) -> str:
    """The README's first ```python block that contains `containing` (found by content, not by position)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    matching = [block for block in blocks if containing in block]
    assert matching, f"README.md has no python block containing {containing!r}"
    return matching[0]


def test_the_usage_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("save_pretrained("), "README.md usage example", "exec"), {})
    assert (tmp_path / "my-sae" / "model.safetensors").is_file() and (tmp_path / "my-sae" / "README.md").is_file()


@pytest.mark.slow
def test_the_hook_point_example_runs_on_the_builtin_model(tmp_path, monkeypatch, builtin_lm):
    from hfsae import TopKSAE, TopKSAEConfig

    monkeypatch.chdir(tmp_path)  # stands in for the folder the demo writes
    TopKSAE(TopKSAEConfig(d_in=576, n_latents=256, k=8)).save_pretrained(tmp_path / "outputs" / "default")
    namespace = {"hfsae": __import__("hfsae")}
    exec(compile(python_block("capture("), "README.md hook-point example", "exec"), namespace)
    assert namespace["acts"].shape[-1] == 576 and namespace["code"].indices.shape[-1] == 8
    assert torch.isfinite(namespace["code"].values).all()
