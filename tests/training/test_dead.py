"""Dead-latent counts: tokens since each latent last fired (hfsae/training/dead.py)."""

import pytest
import torch

from hfsae.training.dead import DeadLatents


def test_tokens_since_fired_follows_a_hand_computed_sequence():
    dead = DeadLatents(n_latents=3, dead_tokens=5)
    # Step 1: 2 tokens, latent 0 fires. Step 2: 3 tokens, latent 1 fires. Step 3: 1 token, nothing fires.
    dead.update_(torch.tensor([[0], [0]]), torch.tensor([[1.0], [0.0]]))
    dead.update_(torch.tensor([[1], [1], [1]]), torch.tensor([[0.0], [0.5], [0.0]]))
    dead.update_(torch.tensor([[2]]), torch.tensor([[0.0]]))
    assert dead.tokens_since_fired.tolist() == [4, 1, 6]
    assert dead.dead_mask.tolist() == [False, False, True]
    assert dead.dead_fraction() == pytest.approx(1 / 3)


def test_a_latent_fired_on_any_process_stays_alive():
    dead = DeadLatents(n_latents=3, dead_tokens=4)
    dead.tokens_since_fired.fill_(3)
    other_process_fired = torch.tensor([0, 0, 1], dtype=torch.int32)
    # This process saw latent 0 fire; the other saw latent 2; tokens count both processes' batches.
    dead.update_(torch.tensor([[0]]), torch.tensor([[1.0]]), tokens=2, reduce=lambda fired: fired + other_process_fired)
    assert dead.tokens_since_fired.tolist() == [0, 5, 0]
    assert dead.dead_mask.tolist() == [False, True, False]


def test_state_dict_round_trips_the_counts():
    dead = DeadLatents(n_latents=4, dead_tokens=10)
    dead.update_(torch.tensor([[1, 2]]), torch.tensor([[1.0, 1.0]]), tokens=7)
    restored = DeadLatents(n_latents=4, dead_tokens=10)
    restored.load_state_dict(dead.state_dict())
    assert restored.tokens_since_fired.tolist() == [7, 0, 0, 7]
