"""The hfsae convert / list subcommands: success, and one-line errors."""

import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.cli import main
from hfsae.hub import to_saelens


def test_hfsae_convert_writes_a_loadable_folder(tmp_path, capsys):
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=8, n_latents=32, k=2)).eval()
    to_saelens(sae, tmp_path / "lens")

    status = main(["convert", "--src", str(tmp_path / "lens"), "--dst", str(tmp_path / "out"), "--from", "saelens"])

    assert status == 0
    assert "converted" in capsys.readouterr().out
    x = torch.randn(3, 8)
    torch.testing.assert_close(TopKSAE.from_pretrained(tmp_path / "out")(x).x_hat, sae(x).x_hat)


def test_hfsae_convert_with_an_unknown_format_fails_in_one_line(tmp_path, capsys):
    status = main(["convert", "--src", str(tmp_path), "--dst", str(tmp_path / "out"), "--from", "pickle"])
    error = capsys.readouterr().err
    assert status == 1
    assert error.count("\n") == 1 and "Unknown source format 'pickle'" in error


def test_hfsae_list_prints_the_registry_filtered_by_base_model(capsys):
    assert main(["list", "--base-model", "pythia-70m"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all("\tEleutherAI/pythia-70m\tsparsify\tEleutherAI/sae-pythia-70m-32k/layers." in line for line in lines)
    assert lines[0].startswith("pythia-70m-32k-layer-0\tlayers.0.resid_post")
