"""Class 1 for `hfsae analyze`: an analysis never replaces an SAE folder or unrelated files, and a second
analysis replaces the first only when told to; bad sizes are one-line errors before any model is loaded."""

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.analysis import AnalysisError
from hfsae.cli import main
from hfsae.folder import OutputDirError


def tiny_sae():
    torch.manual_seed(0)
    config = TopKSAEConfig(d_in=32, n_latents=64, k=4, hook_point="layers.1.resid_post", base_model="no-such-model")
    return TopKSAE(config).eval()


def listing(folder):
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def test_analysing_into_the_sae_folder_itself_loses_nothing(analyze_tiny, tmp_path):
    tiny_sae().save_pretrained(tmp_path / "sae")
    before = listing(tmp_path / "sae")
    sae = TopKSAE.from_pretrained(tmp_path / "sae")
    with pytest.raises(OutputDirError, match=r"sae already exists and is not empty. Pass overwrite=True"):
        analyze_tiny(sae, output_dir=tmp_path / "sae")
    with pytest.raises(OutputDirError, match=r"holds files this command does not write \(README\.md, config\.json, model"):
        analyze_tiny(sae, output_dir=tmp_path / "sae", overwrite=True)
    assert listing(tmp_path / "sae") == before


def test_a_second_analysis_replaces_the_first_only_when_told_to(analyze_tiny, tmp_path):
    sae = tiny_sae()
    analyze_tiny(sae, output_dir=tmp_path / "analysis", n_tokens=64)
    with pytest.raises(OutputDirError, match="already exists and is not empty"):
        analyze_tiny(sae, output_dir=tmp_path / "analysis", n_tokens=64)
    analyze_tiny(sae, output_dir=tmp_path / "analysis", n_tokens=64, overwrite=True)
    assert listing(tmp_path / "analysis") == ["analysis.json", "latents.parquet"]
    (tmp_path / "analysis" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"\(notes\.txt\)"):
        analyze_tiny(sae, output_dir=tmp_path / "analysis", n_tokens=64, overwrite=True)


@pytest.mark.parametrize("option, value", [("n_top_examples", -1), ("n_top_examples", 0), ("n_random_examples", -2),
                                           ("batch_size", 0), ("n_logit_tokens", 0)])  # fmt: skip
def test_sizes_below_one_are_refused_by_name(analyze_tiny, tmp_path, option, value):
    with pytest.raises(AnalysisError, match=rf"{option} must be at least 1; got {value}\."):
        analyze_tiny(tiny_sae(), output_dir=tmp_path / "analysis", **{option: value})


def test_the_command_line_refuses_another_sae_folder_and_a_negative_size_in_one_line(tmp_path, capsys):
    tiny_sae().save_pretrained(tmp_path / "a")
    tiny_sae().save_pretrained(tmp_path / "b")
    before = listing(tmp_path / "b")
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "a"), "--output-dir", str(tmp_path / "b"), "--overwrite-output-dir", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("hfsae: error:") and "does not write (README.md, config.json, model.safetensors)" in error
    assert listing(tmp_path / "b") == before
    assert main(["analyze", str(tmp_path / "a"), "--n-top-examples", "-1", "--quiet"]) == 1
    assert capsys.readouterr().err == "hfsae: error: n_top_examples must be at least 1; got -1.\n"
