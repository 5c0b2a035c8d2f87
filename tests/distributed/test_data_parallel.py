"""Training on several processes equals training on one: Adam steps, checkpoints, resuming, dead stats."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from hfsae import TopKSAE

from .conftest import MAX_GRAD_NORM, STEPS, results
from .worker import adam


def single_process_training(
    folder: str, steps: int, *, max_grad_norm: float | None = None
) -> tuple[TopKSAE, list[torch.Tensor], list[torch.Tensor]]:
    """The reference: one process, the whole batch, the same Adam and decoder-norm steps as worker.py."""
    model = TopKSAE.from_pretrained(os.path.join(folder, "model_odd"))
    inputs = load_file(os.path.join(folder, "train_odd.safetensors"))
    optimizer = adam(model.parameters())
    losses, norms = [], []
    for step in range(steps):
        out = model(inputs[f"x.{step}"], dead_mask=inputs[f"dead_mask.{step}"].bool())
        optimizer.zero_grad()
        out.loss.backward()
        model.project_decoder_grad_()
        if max_grad_norm is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
        optimizer.step()
        model.normalize_decoder_()
        losses.append(out.loss.detach())
    return model, losses, norms


def assert_same_weights(folder: str, expected: TopKSAE) -> None:
    """The checkpoint in `folder` loads on one process and holds the expected weights and outputs."""
    loaded = TopKSAE.from_pretrained(folder)
    for name, parameter in expected.named_parameters():
        torch.testing.assert_close(getattr(loaded, name), parameter, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    x = torch.randn(6, expected.config.d_in, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(loaded(x).x_hat, expected(x).x_hat, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # starts worker processes (~5–20 s of imports each)
def test_data_parallel_with_half_the_batch_per_rank_trains_like_one_process_with_the_whole_batch(two_processes):
    expected_model, expected_losses, _ = single_process_training(two_processes, 3)
    torch.testing.assert_close(results(two_processes, "train_2_data")["losses"], torch.stack(expected_losses))
    assert_same_weights(os.path.join(two_processes, "state_2_data"), expected_model)


@pytest.mark.slow  # starts worker processes (~5–20 s of imports each)
def test_a_two_by_two_grid_trains_like_one_process_with_gradient_clipping_and_saves_an_ordinary_folder(four_processes):
    expected_model, expected_losses, expected_norms = single_process_training(four_processes, 3, max_grad_norm=MAX_GRAD_NORM)
    got = results(four_processes, "train_2x2")
    assert max(expected_norms) > MAX_GRAD_NORM  # clipping acted
    torch.testing.assert_close(got["grad_norms"], torch.stack(expected_norms))
    torch.testing.assert_close(got["losses"], torch.stack(expected_losses))
    assert_same_weights(os.path.join(four_processes, "state_2x2"), expected_model)


@pytest.mark.slow  # starts worker processes (~5–20 s of imports each)
def test_training_saved_on_two_processes_resumes_on_four_shards_as_if_never_interrupted(four_processes):
    expected_model, expected_losses, _ = single_process_training(four_processes, STEPS)
    torch.testing.assert_close(results(four_processes, "resume_4_shards")["losses"], torch.stack(expected_losses[3:]))
    assert_same_weights(os.path.join(four_processes, "state_resumed"), expected_model)


@pytest.mark.slow  # starts worker processes (~5–20 s of imports each)
def test_a_latent_is_alive_if_any_data_parallel_rank_saw_it_fire(two_processes):
    alive = results(two_processes, "any_rank")["alive"]
    assert alive.tolist() == [True, True, False, False, False, False, False, False]
