"""`train` end to end on a tiny random Llama: streaming resume, the output folder's rules, multi-SAE output."""

import json

import pytest
import torch
from safetensors.torch import load_file

import hfsae
from hfsae.training.config import TrainConfig
from hfsae.training.run import train
from hfsae.training.trainer import Trainer


def tiny_run(tiny_lm_dir, small_corpus, output_dir, **overrides) -> TrainConfig:
    options = dict(
        model=str(tiny_lm_dir),
        dataset=str(small_corpus),
        hook_points=["layers.1.resid_post"],
        n_latents=[64],
        k=[4],
        context_size=16,
        batch_size=60,
        harvest_tokens=600,
        eval_tokens=120,
        train_tokens=60 * 8,
        dead_tokens=240,
        device_batch_tokens=160,
        output_dir=str(output_dir),
        quiet=True,
    )
    options.update(overrides)
    return TrainConfig(**options)


def cli_arguments(tiny_lm_dir, small_corpus, output_dir, *extra) -> list[str]:
    """`hfsae train` on the tiny Llama with tiny_run's sizes, plus `extra` options."""
    return [
        "train", "--model", str(tiny_lm_dir), "--dataset", str(small_corpus), "--hook-points", "layers.1.resid_post",
        "--n-latents", "64", "--k", "4", "--context-size", "16", "--batch-size", "60", "--harvest-tokens", "600",
        "--eval-tokens", "120", "--train-tokens", "480", "--dead-tokens", "240", "--device-batch-tokens", "160",
        "--output-dir", str(output_dir), "--quiet", *extra,
    ]  # fmt: skip


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("hfsae: error:")]
    assert len(ours) == 1 and "Traceback" not in err and "unexpected" not in ours[0], err
    return ours[0]


def test_a_killed_streaming_run_resumes_bit_equal_to_an_uninterrupted_one(tmp_path, tiny_lm_dir, small_corpus, monkeypatch):
    from hfsae.cli import main

    # A buffer of 3 batches that is not a multiple of a forward pass (4 contexts, 60 rows): resuming
    # must rebuild a buffer cut mid-forward.
    options = ["--streaming", "--buffer-tokens", "180", "--device-batch-tokens", "64", "--save-steps", "3",
               "--save-total-limit", "1", "--learning-rate", "1e-2"]  # fmt: skip
    assert main(cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "whole", *options)) == 0
    whole = json.loads((tmp_path / "whole/training_metrics.json").read_text())
    assert whole["streaming"] and whole["forward_tokens_per_s"] > 0 and whole["peak_rss_bytes"] > 0

    original_step = Trainer.train_step

    def killed_at_step_5(self, batch):
        if self.step == 5:
            raise KeyboardInterrupt
        original_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", killed_at_step_5)
    assert main(cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "killed", *options)) == 130  # interrupted
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert [p.name for p in (tmp_path / "killed/checkpoints").iterdir()] == ["step-00000003"]

    resume = ["--resume-from-checkpoint", "last"]
    assert main(cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "killed", *options, *resume)) == 0
    expected, actual = load_file(tmp_path / "whole/model.safetensors"), load_file(tmp_path / "killed/model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    assert json.loads((tmp_path / "killed/training_metrics.json").read_text())["fvu"] == whole["fvu"]


@pytest.mark.parametrize(
    "mode",
    [[], ["--streaming", "--buffer-tokens", "300", "--activation-cache-dtype", "bfloat16"]],
    ids=["epochs", "streaming-bf16"],
)
def test_an_activation_cache_is_written_once_and_a_second_run_reads_it_to_the_same_weights(
    tmp_path, tiny_lm_dir, small_corpus, monkeypatch, mode
):
    from hfsae.activations.cache import ActivationCache
    from hfsae.cli import main

    cache = tmp_path / "cache"
    assert main(cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "first", "--activation-cache", str(cache), *mode)) == 0
    manifest = (cache / "manifest.json").read_bytes()

    def must_not_build(*args, **kwargs):
        raise AssertionError("the second run harvested the activations again")

    monkeypatch.setattr(ActivationCache, "build", must_not_build)
    assert main(cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "second", "--activation-cache", str(cache), *mode)) == 0
    assert (cache / "manifest.json").read_bytes() == manifest
    stored = json.loads(manifest)["description"]["storage_dtype"]
    assert stored == ("bfloat16" if "--activation-cache-dtype" in mode else "float32")
    first, second = load_file(tmp_path / "first/model.safetensors"), load_file(tmp_path / "second/model.safetensors")
    for name in first:
        assert torch.equal(second[name], first[name]), name


def test_a_cache_of_another_hook_point_or_with_a_bad_checksum_is_a_one_line_error(tmp_path, tiny_lm_dir, small_corpus, capsys):
    from hfsae.cli import main

    cache = tmp_path / "cache"
    assert main(cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "first", "--activation-cache", str(cache))) == 0
    capsys.readouterr()
    other = cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "other", "--activation-cache", str(cache))
    other[other.index("layers.1.resid_post")] = "layers.2.resid_post"
    assert main(other) == 1
    assert "was built from another hook_points" in one_line_error(capsys) and not (tmp_path / "other").exists()

    shard = next(cache.glob("shard_*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "again", "--activation-cache", str(cache))) == 1
    line = one_line_error(capsys)
    assert "fails its sha256 check" in line and f"delete {cache}" in line and not (tmp_path / "again").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--streaming", "--buffer-tokens", "30"], r"buffer_tokens=30: shuffle at least batch_size rows \(raise --buffer-tokens"),
        (["--streaming", "--buffer-tokens", "100"], r"buffer_tokens=100 leaves no room to shuffle .* give buffer_tokens ≥"),
        (["--latent-shards", "3"], r"latent_shards=3: use a positive number that divides every n_latents"),
        (["--latent-shards", "2"], r"latent_shards=2 needs that many processes; this is one process"),
    ],
)
def test_bad_streaming_and_sharding_options_are_one_line_errors(tmp_path, tiny_lm_dir, small_corpus, capsys, extra, message):
    import re

    from hfsae.cli import main

    assert main(cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "out", *extra)) == 1
    assert re.search(message, one_line_error(capsys))
    assert not (tmp_path / "out").exists()


def test_init_from_an_sae_of_another_width_is_a_one_line_error(tmp_path, tiny_lm_dir, small_corpus, capsys):
    from hfsae import TopKSAE, TopKSAEConfig
    from hfsae.cli import main

    TopKSAE(TopKSAEConfig(d_in=16, n_latents=64, k=4)).save_pretrained(tmp_path / "narrow")
    assert main(cli_arguments(tiny_lm_dir, small_corpus, tmp_path / "out", "--init-from", str(tmp_path / "narrow"))) == 1
    line = one_line_error(capsys)
    assert "has d_in=16, n_latents=64; this run trains d_in=32" in line and not (tmp_path / "out").exists()


def test_a_non_empty_output_dir_is_refused_unless_overwritten(tmp_path, tiny_lm_dir, small_corpus):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"out already exists and is not empty. Pass --overwrite-output-dir"):
        train(tiny_run(tiny_lm_dir, small_corpus, output_dir))
    with pytest.raises(FileExistsError, match=r"out holds files this command does not write \(notes\.txt\)"):
        train(tiny_run(tiny_lm_dir, small_corpus, output_dir, overwrite_output_dir=True))
    assert (output_dir / "notes.txt").read_text() == "mine"
    (output_dir / "notes.txt").rename(output_dir / "model.safetensors")  # a previous run's files may be replaced
    train(tiny_run(tiny_lm_dir, small_corpus, output_dir, overwrite_output_dir=True))
    assert hfsae.load(str(output_dir)).config.n_latents == 64


def test_resuming_with_changed_options_names_them_before_loading_the_language_model(
    tmp_path, tiny_lm_dir, small_corpus, monkeypatch
):
    train(tiny_run(tiny_lm_dir, small_corpus, tmp_path / "out", save_steps=4))

    def must_not_load(*args, **kwargs):
        raise AssertionError("the language model was loaded before the resume check")

    monkeypatch.setattr("hfsae.activations.load_language_model", must_not_load)
    changed = tiny_run(tiny_lm_dir, small_corpus, tmp_path / "out", seed=3, batch_size=40, resume_from_checkpoint="last")
    with pytest.raises(ValueError, match=r"batch_size=40 \(was 60\), seed=3 \(was 0\)\. Resume with the options"):
        train(changed)


def test_several_saes_are_written_as_an_index_that_hfsae_loads_each_with_a_card_of_its_training(
    tmp_path, tiny_lm_dir, small_corpus
):
    hooks = ["layers.0.resid_post", "layers.1.resid_post"]
    results = train(tiny_run(tiny_lm_dir, small_corpus, tmp_path / "out", hook_points=hooks, n_latents=[32, 64]))
    assert len(results) == 4
    loaded = hfsae.load_many(str(tmp_path / "out"))
    assert sorted(loaded) == sorted(result.name for result in results)
    one = hfsae.load(str(tmp_path / "out"), hookpoint="layers.0.resid_post/n64_k4")
    assert one.config.hook_point == "layers.0.resid_post" and one.config.n_latents == 64
    metrics = json.loads((tmp_path / "out/layers.0.resid_post/n64_k4/training_metrics.json").read_text())
    card = (tmp_path / "out/layers.0.resid_post/n64_k4/README.md").read_text()
    assert f"{metrics['fvu']:.4f}"[:5] in card, card


def test_the_command_line_trains_and_reports_the_held_out_fvu(tmp_path, tiny_lm_dir, small_corpus, capsys):
    from hfsae.cli import main

    arguments = [
        "train", "--model", str(tiny_lm_dir), "--dataset", str(small_corpus), "--hook-points", "layers.1.resid_post",
        "--n-latents", "64", "--k", "4", "--context-size", "16", "--harvest-tokens", "600", "--eval-tokens", "120",
        "--batch-size", "60", "--train-tokens", "480", "--output-dir", str(tmp_path / "out"), "--quiet",
    ]  # fmt: skip
    assert main(arguments) == 0
    assert "held-out FVU" in capsys.readouterr().out
    assert main(arguments) == 1
    assert "--overwrite-output-dir" in capsys.readouterr().err
