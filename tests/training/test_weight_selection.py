"""Raw or EMA weights are chosen on validation rows disjoint from the rows the reported metrics use
(hfsae/training/selection.py: split_heldout, choose_weights)."""

import pytest
import torch

from hfsae.modeling import fvu
from hfsae.training.data import EpochBatches
from hfsae.training.selection import SELECTION_SHARE, split_heldout
from hfsae.training.trainer import Trainer

from training_helpers import synthetic_activations, tiny_config

# Moves the data far enough that an SAE whose b_pre sits at the other distribution's median
# reconstructs it clearly worse, but not so far that the divergence check (FVU > 100) fires.
SHIFT_NORM = 12.0


def raw_and_ema_that_disagree(tmp_path):
    """A Trainer whose raw weights are centred on `near` and whose EMA weights are centred on `far`."""
    near = synthetic_activations(1024, seed=1)
    shift = torch.randn(16, generator=torch.Generator().manual_seed(7))
    far = near + shift * (SHIFT_NORM / shift.norm())
    trainer = Trainer(tiny_config(tmp_path))
    trainer.init_runs_({"h": near})
    run = trainer.runs[0]
    with torch.no_grad():
        run.sae.b_pre += far.mean(0) - near.mean(0)
        run.ema.update_(run.sae)  # one update: the average is exactly these weights
        run.sae.b_pre -= far.mean(0) - near.mean(0)
    return trainer, near, far


def test_the_choice_follows_the_selection_rows_and_the_metrics_come_from_the_reported_rows(tmp_path):
    trainer, near, far = raw_and_ema_that_disagree(tmp_path)
    # The first quarter (selection) favours the raw weights, the rest (reported) favours the EMA's.
    heldout = {"h": torch.cat([near[:64], far[64:256]])}
    (result,) = trainer._finish(*split_heldout(heldout), elapsed=0.0)
    metrics = result.metrics

    assert metrics["weights"] == "raw"
    assert metrics["selection_fvu_raw"] < metrics["selection_fvu_ema"]
    assert metrics["fvu_ema"] < metrics["fvu_raw"]  # on the reported rows the choice is the worse one
    assert (metrics["selection_tokens"], metrics["heldout_tokens"]) == (64, 192)

    kept = result.sae
    torch.testing.assert_close(kept.b_pre, trainer.runs[0].sae.b_pre.detach())
    reported = heldout["h"][64:]
    with torch.no_grad():
        output = kept(reported)
    assert metrics["fvu"] == pytest.approx(fvu(output.x_hat.double(), reported.double()).item(), rel=1e-6)
    assert metrics["fvu"] == metrics["fvu_raw"]
    assert metrics["l0"] == pytest.approx((output.code.values > 0).sum().item() / reported.shape[0])


def test_the_ema_weights_are_kept_when_the_selection_rows_favour_them(tmp_path):
    trainer, near, far = raw_and_ema_that_disagree(tmp_path)
    heldout = {"h": torch.cat([far[:64], near[64:256]])}
    (result,) = trainer._finish(*split_heldout(heldout), elapsed=0.0)
    assert result.metrics["weights"] == "ema"
    assert result.metrics["fvu"] == result.metrics["fvu_ema"] > result.metrics["fvu_raw"]


@pytest.mark.parametrize(("rows", "selected"), [(2, 1), (7, 1), (256, 64), (1001, int(1001 * SELECTION_SHARE))])
def test_split_heldout_cuts_every_hook_point_at_the_same_row(rows, selected):
    heldout = {"h": torch.arange(rows * 2.0).reshape(rows, 2), "g": torch.arange(float(rows))[:, None]}
    selection, reported = split_heldout(heldout)
    for name, x in heldout.items():
        assert selection[name].shape[0] == selected and reported[name].shape[0] == rows - selected
        assert torch.equal(torch.cat([selection[name], reported[name]]), x)


def test_too_few_heldout_rows_are_refused_before_training(tmp_path):
    config = tiny_config(tmp_path)
    trainer = Trainer(config)
    data = EpochBatches({"h": synthetic_activations(1024)}, batch_size=config.batch_size, seed=config.seed)
    with pytest.raises(ValueError, match="eval_tokens of at least 2"):
        trainer.fit(data, {"h": synthetic_activations(1)})
    assert trainer.step == 0
