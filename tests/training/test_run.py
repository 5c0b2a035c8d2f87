"""`train` end to end on a tiny random Llama: streaming resume, the output folder's rules, multi-SAE output."""

import json

import pytest
import torch
from safetensors.torch import load_file

import hfsae
from hfsae.training import run as run_module
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


def test_a_killed_streaming_run_resumes_bit_equal_to_an_uninterrupted_one(tmp_path, tiny_lm_dir, small_corpus, monkeypatch):
    # A buffer of 3 batches that is not a multiple of a forward pass: resuming must rebuild a
    # buffer cut mid-forward.
    options = dict(streaming=True, buffer_tokens=180, device_batch_tokens=64, save_steps=3, save_total_limit=1,
                   learning_rate=1e-2)  # fmt: skip
    (whole,) = train(tiny_run(tiny_lm_dir, small_corpus, tmp_path / "whole", **options))
    assert whole.metrics["streaming"] and whole.metrics["forward_tokens_per_s"] > 0 and whole.metrics["peak_rss_bytes"] > 0

    original_step = Trainer.train_step

    def killed_at_step_5(self, batch):
        if self.step == 5:
            raise KeyboardInterrupt
        original_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_run(tiny_lm_dir, small_corpus, tmp_path / "killed", **options))
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert [p.name for p in (tmp_path / "killed/checkpoints").iterdir()] == ["step-00000003"]

    (resumed,) = train(tiny_run(tiny_lm_dir, small_corpus, tmp_path / "killed", resume_from_checkpoint="last", **options))
    expected, actual = load_file(tmp_path / "whole/model.safetensors"), load_file(tmp_path / "killed/model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    assert resumed.metrics["fvu"] == whole.metrics["fvu"]


def test_a_non_empty_output_dir_is_refused_unless_overwritten(tmp_path, tiny_lm_dir, small_corpus):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"out already exists and is not empty. Pass --overwrite-output-dir"):
        train(tiny_run(tiny_lm_dir, small_corpus, output_dir))
    assert (output_dir / "notes.txt").read_text() == "mine"
    train(tiny_run(tiny_lm_dir, small_corpus, output_dir, overwrite_output_dir=True))
    assert hfsae.load(str(output_dir)).config.n_latents == 64 and not (output_dir / "notes.txt").exists()


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
