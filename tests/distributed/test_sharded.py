"""Latent-sharded and data-parallel forward passes equal one process on the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from hfsae import TopKSAE
from hfsae.distributed import ProcessGrid, ProcessGridError, ShardedTopKSAE, data_parallel_sae, full_model, shard_ranges

from .conftest import random_inputs, random_model, results


def single_process_forward(folder: str, config: str) -> dict[str, torch.Tensor]:
    """The reference: the unsharded model from the same folder, on the whole batch."""
    model = TopKSAE.from_pretrained(os.path.join(folder, f"model_{config}"))
    inputs = load_file(os.path.join(folder, f"inputs_{config}.safetensors"))
    out = model(inputs["x"], dead_mask=inputs["dead_mask"].bool())
    out.loss.backward()
    expected = {
        "x_hat": out.x_hat,
        "indices": out.code.indices,
        "values": out.code.values,
        "fvu": out.fvu,
        "loss": out.loss,
        "aux_loss": out.aux_loss,
        "multi_topk_loss": out.multi_topk_loss,
    }
    expected.update({f"grad.{name}": parameter.grad for name, parameter in model.named_parameters()})
    return {name: value.detach() for name, value in expected.items()}


def assert_same_forward(got: dict, expected: dict) -> None:
    # Same selected sets first: the rest only means something if the winners agree.
    torch.testing.assert_close(got["indices"].sort(dim=-1).values, expected["indices"].sort(dim=-1).values)
    assert expected["aux_loss"] > 0 and expected["multi_topk_loss"] > 0  # every term is exercised
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow  # starts worker processes (~5–20 s of imports each)
@pytest.mark.parametrize(
    ("case", "config"),
    [
        ("forward_even_2_shards", "even"),
        ("forward_odd_2_shards", "odd"),
        ("forward_odd_4_shards", "odd"),
        ("forward_tiny_4_shards", "tiny"),
    ],
)
def test_sharded_forward_losses_and_gradients_equal_the_unsharded_model(case, config, two_processes, four_processes):
    assert_same_forward(results(four_processes, case), single_process_forward(four_processes, config))


@pytest.mark.slow  # starts worker processes (~5–20 s of imports each)
def test_data_parallel_forward_and_averaged_gradients_equal_one_process_on_the_whole_batch(two_processes):
    assert_same_forward(results(two_processes, "forward_odd_2_data"), single_process_forward(two_processes, "odd"))


@pytest.mark.slow  # starts worker processes (~5–20 s of imports each)
def test_a_two_by_two_grid_of_data_and_latent_shards_equals_one_process(four_processes):
    assert_same_forward(results(four_processes, "forward_odd_2x2"), single_process_forward(four_processes, "odd"))


def test_one_shard_on_one_process_is_the_unsharded_model():
    model = random_model("odd")
    inputs = random_inputs("odd")
    sharded = ShardedTopKSAE.from_model(model, ProcessGrid.single())
    got, expected = sharded(inputs["x"], dead_mask=inputs["dead_mask"].bool()), model(inputs["x"], dead_mask=inputs["dead_mask"].bool())
    torch.testing.assert_close(got.loss, expected.loss)
    torch.testing.assert_close(got.code.indices, expected.code.indices)


def test_without_dead_latents_the_aux_loss_is_zero_as_in_the_unsharded_model():
    model = random_model("odd")
    x = random_inputs("odd")["x"]
    alive = torch.zeros(model.config.n_latents, dtype=torch.bool)
    got = ShardedTopKSAE.from_model(model, ProcessGrid.single())(x, dead_mask=alive)
    expected = model(x, dead_mask=alive)
    assert got.aux_loss.item() == expected.aux_loss.item() == 0.0
    torch.testing.assert_close(got.loss, expected.loss)


def test_on_one_process_data_parallel_training_uses_the_model_itself_and_gathering_round_trips():
    model = random_model("odd")
    assert data_parallel_sae(model) is model
    gathered = full_model(ShardedTopKSAE.from_model(model, ProcessGrid.single()))
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(getattr(gathered, name), parameter)


def test_shard_ranges_cover_every_latent_once_with_sizes_differing_by_at_most_one():
    assert shard_ranges(47, 4) == [(0, 12), (12, 24), (24, 36), (36, 47)]
    assert shard_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]


def test_more_shards_than_latents_is_refused_with_the_valid_range():
    with pytest.raises(ProcessGridError, match=r"n_latents=3 into 4 latent shards.*Use 1\.\.3 shards"):
        shard_ranges(3, 4)

