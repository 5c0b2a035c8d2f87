"""Model cards: valid Hub metadata, eval results that round-trip, a usage snippet that runs, figures linked."""

import json
import math
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.commands.card import CardArgs, run_card
from hfsae.folder import SAEFolderError
from hfsae.hub.card import (
    BUILTIN_BASE_MODEL_REPO,
    DENSITY_FIGURE,
    MODEL_CARD_TEMPLATE,
    PROGRESSIVE_FIGURE,
    CardError,
    read_latent_density,
    template_path,
    usage_code,
    write_card,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

EVAL_RESULTS = {
    "fvu": 0.125,
    "explained_variance": 0.875,
    "l0": 4.0,
    "dead_fraction": 0.03125,
    "cosine": 0.93,
    "ce_clean": 3.5,
    "ce_spliced": 3.75,
    "delta_ce": 0.25,
    "kl": 0.2,
    "ce_loss_recovered": 0.9,
    "progressive": {"1": 0.6, "2": 0.3, "4": 0.125, "8": 0.08, "16": 0.06},
    "ablation_sparsity": 0.01,
    "n2g_precision": 0.7,
    "n2g_recall": 0.4,
    "probe_loss": 0.55,
    "probe_loss_baseline": 0.6,
}


def save_tiny_sae(folder: Path, **config_fields) -> TopKSAE:
    fields = dict(d_in=16, n_latents=64, k=4, hook_point="layers.1.resid_post", base_model="builtin", dataset="builtin")
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(**(fields | config_fields)))
    sae.save_pretrained(folder)
    return sae


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def front_matter(card_path: Path) -> dict:
    text = card_path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture
def sae_dir(tmp_path):
    folder = tmp_path / "tiny-sae"
    save_tiny_sae(folder)
    return folder


def test_the_yaml_header_carries_the_hub_metadata(sae_dir):
    write_json(sae_dir / "eval_results.json", EVAL_RESULTS)
    metadata = front_matter(write_card(sae_dir, repo_id="someone/tiny-sae"))
    assert metadata["library_name"] == "hfsae"
    assert metadata["base_model"] == BUILTIN_BASE_MODEL_REPO
    assert metadata["base_model_relation"] == "adapter"  # the Hub would otherwise list it as a fine-tune
    assert metadata["license"] == "apache-2.0"
    assert metadata["tags"] == ["sparse-autoencoder", "topk", "hfsae", "layers.1.resid_post"]
    assert metadata["model-index"][0]["name"] == "tiny-sae"


def test_eval_results_round_trip_through_model_card_data(sae_dir):
    write_json(sae_dir / "eval_results.json", EVAL_RESULTS)
    card = ModelCard.load(write_card(sae_dir))
    loaded = {result.metric_type: result.metric_value for result in card.data.eval_results}
    expected = {key: value for key, value in EVAL_RESULTS.items() if key != "progressive"}
    expected |= {f"fvu_k{k}": fvu for k, fvu in EVAL_RESULTS["progressive"].items()}
    assert loaded == expected
    assert {result.dataset_split for result in card.data.eval_results} == {"held-out"}


def test_a_non_finite_metric_is_left_out_of_the_model_index_and_shown_as_missing(sae_dir):
    write_json(sae_dir / "eval_results.json", {"fvu": 0.2, "probe_loss": math.nan})
    path = write_card(sae_dir)
    types = [result.metric_type for result in ModelCard.load(path).data.eval_results]
    assert types == ["fvu"]
    assert "| Probe loss | n/a |" in path.read_text()


def test_the_metrics_table_follows_the_metric_table_and_names_an_omitted_metric_with_its_reason(sae_dir):
    from hfsae.metric_table import METRIC_BY_KEY, METRICS

    omitted = {"ablation_sparsity": "a transcoder writes to another hook point"}
    write_json(sae_dir / "eval_results.json", EVAL_RESULTS | {"ablation_sparsity": None, "omitted": omitted})
    path = write_card(sae_dir)
    text = path.read_text()
    assert "| Ablation sparsity | omitted | a transcoder writes to another hook point |" in text
    assert f"| ΔCE | 0.25 | {METRIC_BY_KEY['delta_ce'].meaning}; lower is better |" in text
    labels = [m.label for m in METRICS if m.key in EVAL_RESULTS and m.key != "progressive"]
    assert sorted(labels, key=lambda label: text.index(f"| {label} |")) == labels  # the table's order
    types = {result.metric_type for result in ModelCard.load(path).data.eval_results}
    assert "ablation_sparsity" not in types and "fvu_k4" in types


def test_a_folder_with_only_config_json_still_gives_a_valid_card(sae_dir):
    path = write_card(sae_dir)
    card = ModelCard.load(path)
    assert card.data.library_name == "hfsae"
    assert card.data.eval_results is None
    assert "No evaluation results yet" in card.text
    assert "![" not in card.text  # no figures without data


def test_training_metrics_stand_in_for_a_missing_eval_results_file(sae_dir):
    write_json(sae_dir / "training_metrics.json", {"fvu": 0.2, "dead_fraction": 0.01, "tokens": 123_456, "steps": 30})
    card = ModelCard.load(write_card(sae_dir))
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"fvu": 0.2}
    assert "| Dead fraction | 0.01 |" in card.text
    assert "| training tokens | 123,456 |" in card.text
    assert "trained on 123,456 tokens" in card.text


def test_the_training_configuration_table_flattens_nested_options(sae_dir):
    write_json(
        sae_dir / "training_config.json", {"lr": 0.0002, "k": [8, 16], "adam": {"beta1": 0.9}, "output_dir": "runs/x"}
    )
    text = write_card(sae_dir).read_text()
    assert "output_dir" not in text  # a local path means nothing where the card is read
    assert "| `lr` | 0.0002 |" in text
    assert "| `k` | 8, 16 |" in text
    assert "| `adam.beta1` | 0.9 |" in text


def test_figures_are_written_as_png_next_to_the_card_and_linked(sae_dir):
    write_json(sae_dir / "eval_results.json", EVAL_RESULTS)
    density = torch.rand(64)
    density[:5] = 0
    write_json(sae_dir / "latent_density.json", {"density": density.tolist()})
    text = write_card(sae_dir).read_text()
    for figure in (DENSITY_FIGURE, PROGRESSIVE_FIGURE):
        assert (sae_dir / figure).read_bytes()[:8] == PNG_MAGIC
        assert f"]({figure})" in text


def test_latent_density_is_also_read_from_safetensors(sae_dir):
    from safetensors.torch import save_file

    save_file({"density": torch.rand(64)}, sae_dir / "latent_density.safetensors")
    write_card(sae_dir)
    assert (sae_dir / DENSITY_FIGURE).read_bytes()[:8] == PNG_MAGIC


def test_latent_density_falls_back_to_the_analysis_dataset(sae_dir):
    from datasets import Dataset

    (sae_dir / "analysis").mkdir()
    Dataset.from_dict({"latent": list(range(64)), "density": [0.0] * 4 + [0.01] * 60}).to_parquet(
        str(sae_dir / "analysis" / "latents.parquet")
    )
    assert read_latent_density(sae_dir).tolist() == [0.0] * 4 + [0.01] * 60
    assert f"]({DENSITY_FIGURE})" in write_card(sae_dir).read_text()


def test_a_local_base_model_and_dataset_stay_out_of_the_yaml_but_a_hub_dataset_is_listed(tmp_path):
    folder = tmp_path / "sae"
    save_tiny_sae(folder, base_model=str(tmp_path), dataset="someone/some-text")
    metadata = front_matter(write_card(folder))
    assert "base_model" not in metadata and "base_model_relation" not in metadata
    assert metadata["datasets"] == ["someone/some-text"]


def cache_repo(repo_id: str, files: dict[str, Path]) -> Path:
    """Put files where an offline download of repo_id finds them (the Hub cache layout: refs/main + snapshots/<commit>)."""
    repo_cache = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_cache / "snapshots" / commit
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(commit)
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(source.read_bytes())
    return snapshot


def run_first_block(card_text: str) -> None:
    """Execute the card's first snippet (the second needs the built-in model)."""
    exec(compile(usage_code(card_text).split("from hfsae.activations")[0], "README.md", "exec"), {})


def test_the_usage_snippet_runs_as_written_from_the_hub_cache(sae_dir, capsys):
    write_card(sae_dir, repo_id="hfsae-tests/tiny-card")
    snapshot = cache_repo(
        "hfsae-tests/tiny-card", {name: sae_dir / name for name in ("config.json", "model.safetensors", "README.md")}
    )
    card_text = (snapshot / "README.md").read_text()
    assert 'TopKSAE.from_pretrained("hfsae-tests/tiny-card")' in card_text
    run_first_block(card_text)
    assert "torch.Size([8, 4]) torch.Size([8, 16])" in capsys.readouterr().out


def test_the_usage_snippet_of_a_folder_in_a_multi_sae_repo_loads_that_folder(sae_dir, capsys):
    folder = "layers.1.resid_post/n64_k4"
    write_card(sae_dir, repo_id="hfsae-tests/many", subfolder=folder)
    snapshot = cache_repo(
        "hfsae-tests/many",
        {f"{folder}/{name}": sae_dir / name for name in ("config.json", "model.safetensors", "README.md")},
    )
    card_text = (snapshot / folder / "README.md").read_text()
    assert f'TopKSAE.from_pretrained("hfsae-tests/many", subfolder="{folder}")' in card_text
    run_first_block(card_text)
    assert "torch.Size([8, 4]) torch.Size([8, 16])" in capsys.readouterr().out


def test_the_usage_snippet_runs_on_the_base_models_activations(tmp_path, tiny_lm, tiny_tokenizer, capsys):
    lm_dir = tmp_path / "tiny-llama"
    tiny_lm("llama").save_pretrained(lm_dir)
    tiny_tokenizer.save_pretrained(lm_dir)
    folder = tmp_path / "sae"
    sae = save_tiny_sae(folder, d_in=tiny_lm("llama").config.hidden_size, base_model=str(lm_dir))
    code = usage_code(write_card(folder).read_text())
    assert "capture(model, input_ids" in code
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)

    text = "Sparse autoencoders find interpretable latents."
    from hfsae.activations.hook_points import capture

    input_ids = tiny_tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = sae.encode(capture(tiny_lm("llama"), input_ids, "layers.1.resid_post")["layers.1.resid_post"][0])
    torch.testing.assert_close(namespace["code"].indices, expected.indices)
    assert len(capsys.readouterr().out.splitlines()) == 1 + input_ids.shape[1]


def test_a_folder_without_config_json_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json; pass a folder written by"):
        write_card(tmp_path)


def test_a_corrupt_metrics_file_is_named(sae_dir):
    (sae_dir / "eval_results.json").write_text("{not json")
    with pytest.raises(SAEFolderError, match=r"eval_results.json is not valid JSON"):
        write_card(sae_dir)


def test_a_malformed_progressive_entry_quotes_the_value(sae_dir):
    write_json(sae_dir / "eval_results.json", {"fvu": 0.1, "progressive": {"quarter": 0.5}})
    with pytest.raises(CardError, match=r"'progressive' must map k' to FVU.*quarter"):
        write_card(sae_dir)


def test_regenerating_a_card_replaces_it_and_prints_its_path(sae_dir, capsys):
    write_card(sae_dir)
    write_json(sae_dir / "eval_results.json", {"fvu": 0.25})
    path = run_card(CardArgs(model_dir=str(sae_dir)))
    assert capsys.readouterr().out.strip() == str(path)
    assert "| FVU | 0.25 |" in path.read_text()
    assert not list(sae_dir.glob(".*.tmp"))


def test_save_pretrained_writes_a_card_only_when_there_is_none(sae_dir):
    assert "# tiny-sae" in (sae_dir / "README.md").read_text()  # the fixture's save_pretrained wrote one
    write_json(sae_dir / "training_metrics.json", {"fvu": 0.2, "tokens": 1000})
    write_card(sae_dir)  # the card written last, from what the folder holds
    TopKSAE.from_pretrained(sae_dir).save_pretrained(sae_dir)
    assert "| training tokens | 1000 |" in (sae_dir / "README.md").read_text()


def test_the_card_says_import_hfsae_registers_the_auto_classes(sae_dir):
    text = write_card(sae_dir).read_text()
    assert "`import hfsae` registers the `topk_sae` model type with transformers' Auto classes" in text


def test_an_unknown_template_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=r"no card template 'nope\.md'; it ships .*topk_sae\.md"):
        template_path("nope.md")


@pytest.mark.slow
def test_the_card_templates_ship_in_the_wheel_and_load_from_the_installed_package(tmp_path):
    """Build the wheel, install it into a fresh virtual environment, and render a card from there."""
    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "source"  # a clean copy: a stale build/ folder of the checkout must not decide what ships
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True,
    )
    (wheel,) = tmp_path.glob("hfsae-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("hfsae/model_cards/") and name.endswith(".md")}
    expected = {f"hfsae/model_cards/{path.name}" for path in (root / "model_cards").glob("*.md")}
    assert MODEL_CARD_TEMPLATE in {name.rsplit("/", 1)[1] for name in shipped} and shipped == expected

    # A bare venv that sees the running environment's packages (torch …) through a .pth file: --system-site-packages
    # would give the base interpreter's packages, which lack them when the tests run inside a virtual environment.
    # Paths listed in a .pth are not scanned for .pth files, so the checkout's editable install stays invisible.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    running = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(venv_site) / "running_env.pth").write_text("\n".join(sorted(running)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--force-reinstall", "--target", venv_site, str(wheel)],
        check=True,
    )
    folder = tmp_path / "sae"
    save_tiny_sae(folder)
    (folder / "README.md").unlink()
    script = (
        "import hfsae, hfsae.hub.card as card, sys; "
        "print(hfsae.__file__); print(card.template_path('topk_sae.md')); print(card.write_card(sys.argv[1]))"
    )
    out = subprocess.run(
        [str(python), "-c", script, str(folder)], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    site = venv.resolve()
    assert Path(out[0]).resolve().is_relative_to(site), out  # the installed package, not the checkout
    assert Path(out[1]).resolve().is_relative_to(site) and out[1].endswith("hfsae/model_cards/topk_sae.md")
    assert ModelCard.load(out[2]).data.library_name == "hfsae"


def test_hfsae_card_rewrites_the_card_from_the_command_line(sae_dir, capsys):
    from hfsae.cli import main

    write_json(sae_dir / "eval_results.json", {"fvu": 0.5})
    assert main(["card", "--model-dir", str(sae_dir), "--repo-id", "someone/tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(sae_dir / "README.md")
    assert 'TopKSAE.from_pretrained("someone/tiny")' in (sae_dir / "README.md").read_text()


def test_hfsae_card_on_a_folder_without_config_fails_in_one_line(tmp_path, capsys):
    from hfsae.cli import main

    assert main(["card", "--model-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "has no config.json" in error


@pytest.mark.parametrize(
    "options, opening",
    [
        ({}, "A **TopK sparse autoencoder** with 32 latents, of which the top k = 4 are kept"),
        ({"architecture": "batchtopk"}, "A **BatchTopK sparse autoencoder** with 32 latents, which kept the k·B = 4·B largest"),
        ({"d_out": 8, "target_hook_point": "layers.0.mlp_out"}, "A **TopK transcoder** with 32 latents"),
    ],
)
def test_the_cards_opening_names_the_variant(tmp_path, options, opening):
    config = TopKSAEConfig(d_in=8, n_latents=32, k=4, hook_point="layers.0.resid_post", **options)
    TopKSAE(config).save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert opening in card and card.count("sparse autoencoder** with") + card.count("transcoder** with") == 1
    if config.is_transcoder:
        assert "predicting the activations at `layers.0.mlp_out` from the 8-dimensional activations at" in card
