"""The training loop: resume equivalence, sweeps, the step's invariants (hfsae/training/trainer.py)."""

import pytest
import torch

from hfsae.training.checkpoint import load_checkpoint, resolve_checkpoint
from hfsae.training.data import EpochBatches
from hfsae.training.trainer import Trainer

from training_helpers import synthetic_activations, tiny_config


def data(tokens=1024, hooks=("h",)):
    return {hook: synthetic_activations(tokens, seed=i) for i, hook in enumerate(hooks)}


def batches(config, tables=None):
    return EpochBatches(tables if tables is not None else data(), batch_size=config.batch_size, seed=config.seed)


def heldout(hooks=("h",)):
    return {hook: synthetic_activations(256, seed=100 + i) for i, hook in enumerate(hooks)}


def trained_state(trainer):
    """Everything that must match between two runs: weights, EMA, dead counts, Adam moments."""
    state = {}
    for run in trainer.runs:
        state.update({f"{run.name}/{n}": t.clone() for n, t in run.sae.state_dict().items()})
        state.update({f"{run.name}/ema/{n}": t.clone() for n, t in run.ema.averaged().items()})
        state[f"{run.name}/dead"] = run.dead.tokens_since_fired.clone()
        for i, param_state in run.optimizer.state_dict()["state"].items():
            state.update({f"{run.name}/adam/{i}/{key}": value.clone() for key, value in param_state.items()})
    return state


def test_a_killed_and_resumed_run_ends_with_the_same_weights_bit_for_bit(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, save_steps=5, train_tokens=128 * 12, dead_tokens=300)
    uninterrupted = Trainer(config)
    uninterrupted.fit(batches(config), heldout())

    killed_config = tiny_config(tmp_path / "killed", save_steps=5, train_tokens=128 * 12, dead_tokens=300)
    killed = Trainer(killed_config)
    original_step = Trainer.train_step

    def train_step_until_killed(self, batch):
        if self.step == 7:  # two steps after the checkpoint at step 5
            raise KeyboardInterrupt
        original_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", train_step_until_killed)
    with pytest.raises(KeyboardInterrupt):
        killed.fit(batches(killed_config), heldout())
    monkeypatch.setattr(Trainer, "train_step", original_step)

    resumed = Trainer(killed_config)
    resumed.fit(batches(killed_config), heldout(), resume_from=resolve_checkpoint(killed_config.output_dir, "last"))
    expected, actual = trained_state(uninterrupted), trained_state(resumed)
    assert resumed.step == uninterrupted.step == 12
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_a_sweep_trains_each_sae_exactly_as_training_it_alone(tmp_path):
    hooks = ("h", "g")
    config = tiny_config(tmp_path, hook_points=list(hooks), n_latents=[64, 96], k=[4, 8])
    sweep = Trainer(config)
    sweep.fit(batches(config, data(hooks=hooks)), heldout(hooks))
    swept = trained_state(sweep)
    assert len(sweep.runs) == 8
    for hook, n_latents, k in [("g", 96, 4), ("h", 64, 8)]:
        config = tiny_config(tmp_path, hook_points=[hook], n_latents=[n_latents], k=[k])
        alone = Trainer(config)
        alone.fit(batches(config, {hook: data(hooks=hooks)[hook]}), {hook: heldout(hooks)[hook]})
        for name, tensor in trained_state(alone).items():
            assert torch.equal(swept[name], tensor), name


def test_decoder_rows_stay_unit_norm_and_training_lowers_the_loss(tmp_path):
    config = tiny_config(tmp_path, train_tokens=128 * 40, learning_rate=1e-2)
    trainer = Trainer(config)
    trainer.init_runs_(data())
    with torch.no_grad():
        fvu_before = trainer.runs[0].sae(heldout()["h"]).fvu.item()
    (result,) = trainer.fit(batches(config), heldout())
    sae = trainer.runs[0].sae
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    assert result.metrics["fvu_raw"] < 0.5 * fvu_before
    assert result.metrics["fvu"] == result.metrics[f"fvu_{result.metrics['weights']}"]
    assert result.metrics["tokens"] == 128 * 40 and result.metrics["steps"] == 40


@pytest.mark.parametrize("tied_init", [True, False])
def test_tied_init_sets_the_encoder_to_the_decoder_only_when_asked(tmp_path, tied_init):
    trainer = Trainer(tiny_config(tmp_path, tied_init=tied_init))
    trainer.init_runs_(data())
    sae = trainer.runs[0].sae
    assert torch.equal(sae.W_enc, sae.W_dec) is tied_init
    torch.testing.assert_close(sae.W_enc.norm(dim=1), torch.ones(64))


def test_b_pre_starts_at_the_geometric_median_and_dataset_scale_makes_the_mean_square_norm_d_in(tmp_path):
    from hfsae.modeling import geometric_median

    x = data()["h"] * 7.0
    trainer = Trainer(tiny_config(tmp_path, normalize="dataset_scale"))
    trainer.init_runs_({"h": x})
    sae = trainer.runs[0].sae
    scale = sae.config.dataset_scale
    assert (x * scale).pow(2).sum(dim=1).mean().item() == pytest.approx(16, rel=1e-4)
    torch.testing.assert_close(sae.b_pre.detach(), geometric_median(x * scale))


def test_a_batch_that_does_not_split_over_accumulation_steps_is_refused(tmp_path):
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps=3"):
        tiny_config(tmp_path, gradient_accumulation_steps=3)


def test_gradient_accumulation_steps_the_optimizer_once_per_batch(tmp_path):
    config = tiny_config(tmp_path, train_tokens=128 * 3, gradient_accumulation_steps=4)
    trainer = Trainer(config)
    trainer.fit(batches(config), heldout())
    run = trainer.runs[0]
    adam_steps = {int(state["step"]) for state in run.optimizer.state_dict()["state"].values()}
    assert adam_steps == {3}
    assert run.ema.updates == 3
    # Every micro-batch's tokens are counted: 3 steps × 128 tokens for a latent that never fired.
    assert int(run.dead.tokens_since_fired.max()) <= 384


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_only_good_checkpoints(tmp_path):
    from hfsae.training.trainer import TrainingDivergedError

    config = tiny_config(tmp_path, save_steps=1, logging_steps=2, train_tokens=128 * 6, learning_rate=1e30)
    with pytest.raises(TrainingDivergedError, match=r"h/n64_k4 became NaN or infinite by step 2 \(learning_rate=1e\+30"):
        Trainer(config).fit(batches(config), heldout())
    saved = list((tmp_path / "out" / "checkpoints").glob("step-*"))
    assert [folder.name for folder in saved] == ["step-00000001"]  # step 2 diverged and was not saved
    tensors, _ = load_checkpoint(saved[0])
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())


def test_an_infinite_loss_weight_is_refused_by_the_config(tmp_path):
    with pytest.raises(ValueError, match="aux_k_coef must be a finite number; got aux_k_coef=inf"):
        tiny_config(tmp_path, aux_k_coef=float("inf"))


def test_a_one_row_micro_batch_is_refused_before_training(tmp_path):
    config = tiny_config(tmp_path, batch_size=4, gradient_accumulation_steps=4, harvest_tokens=1024)
    with pytest.raises(ValueError, match="1 row per micro-batch"):
        Trainer(config)


def test_a_run_that_diverges_to_finite_nonsense_stops_before_saving_anything(tmp_path):
    from hfsae.training.trainer import MAX_HELDOUT_FVU, TrainingDivergedError

    config = tiny_config(tmp_path, train_tokens=128 * 6, learning_rate=100.0)  # FVU ~1e8, every value finite
    with pytest.raises(TrainingDivergedError, match=rf"held-out activations with FVU \d.*e\+\d+ after 6 steps, above "
                       rf"{MAX_HELDOUT_FVU:g}.*no checkpoint was saved \(set save_steps"):  # fmt: skip
        Trainer(config).fit(batches(config), heldout())


def test_the_divergence_message_names_the_checkpoint_that_is_kept_only_when_there_is_one(tmp_path):
    from hfsae.training.trainer import TrainingDivergedError

    config = tiny_config(tmp_path, save_steps=4, train_tokens=128 * 4)
    trainer = Trainer(config)
    trainer.fit(batches(config), heldout())
    with torch.no_grad():
        trainer.runs[0].sae.W_dec[3, 1] = float("nan")  # weights can go bad on a step whose loss was finite
    with pytest.raises(TrainingDivergedError, match=r"weights of h/n64_k4 became NaN.*the last checkpoint, .*step-00000004, is kept"):
        trainer.check_finite()
    fresh = Trainer(tiny_config(tmp_path / "other", save_steps=100))
    fresh.init_runs_(data())
    with torch.no_grad():
        fresh.runs[0].sae.b_pre[0] = float("inf")
    with pytest.raises(TrainingDivergedError, match=r"no checkpoint was saved\. Lower the learning rate"):
        fresh.check_finite()


def test_a_healthy_run_ends_far_below_the_divergence_threshold(tmp_path):
    from hfsae.training.trainer import MAX_HELDOUT_FVU

    config = tiny_config(tmp_path, train_tokens=128 * 2)
    results = Trainer(config).fit(batches(config), heldout())
    assert results[0].metrics["fvu"] < MAX_HELDOUT_FVU / 20
