"""Bias-corrected EMA of weights (hfsae/training/ema.py)."""

import pytest
import torch
from torch import nn

from hfsae.training.ema import EMA


def test_bias_corrected_average_matches_a_hand_value():
    model = nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.5)
    for weight in (1.0, 3.0):
        model.weight.data.fill_(weight)
        ema.update_(model)
    # shadow = 0.5·(0.5·1) + 0.5·3 = 1.75; correction 1 − 0.5² = 0.75 → 7/3 (weights 1/3 and 2/3).
    assert ema.averaged()["weight"].item() == pytest.approx(7 / 3)


def test_the_first_average_equals_the_weights_themselves():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.999)
    ema.update_(model)
    averaged = ema.averaged()
    torch.testing.assert_close(averaged["weight"], model.weight.detach())
    torch.testing.assert_close(averaged["bias"], model.bias.detach())


def test_copy_to_and_state_dict_round_trip():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    for _ in range(3):
        ema.update_(model)
        model.weight.data.add_(1.0)
    restored = EMA(model, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    target = nn.Linear(2, 2)
    restored.copy_to_(target)
    torch.testing.assert_close(target.weight.detach(), ema.averaged()["weight"])
    assert restored.updates == 3


def test_an_average_before_any_update_is_an_error():
    with pytest.raises(ValueError, match="no updates yet"):
        EMA(nn.Linear(1, 1), decay=0.9).averaged()
