"""Synthetic activations and tiny configs for the training tests."""

import torch

from hfsae.training.config import TrainConfig


def synthetic_activations(tokens: int, d_in: int = 16, *, seed: int = 0) -> torch.Tensor:
    """[tokens, d_in]: sparse sums of 3 of 64 fixed directions (what an SAE can learn), plus an offset."""
    generator = torch.Generator().manual_seed(1234)
    directions = torch.randn(64, d_in, generator=generator)
    offset = torch.randn(d_in, generator=generator)
    generator.manual_seed(seed)
    chosen = torch.randint(0, 64, (tokens, 3), generator=generator)
    weights = torch.rand(tokens, 3, 1, generator=generator) * 2
    return (directions[chosen] * weights).sum(dim=1) + offset


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    """A TrainConfig for 16-wide synthetic activations that trains in well under a second."""
    options = dict(
        hook_points=["h"],
        n_latents=[64],
        k=[4],
        batch_size=128,
        harvest_tokens=1024,
        eval_tokens=256,
        train_tokens=128 * 12,
        dead_tokens=512,
        learning_rate=1e-3,
        output_dir=str(tmp_path / "out"),
        logging_steps=4,
        quiet=True,
    )
    options.update(overrides)
    return TrainConfig(**options)
