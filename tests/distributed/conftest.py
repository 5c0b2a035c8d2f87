"""Multi-process jobs shared by the distributed tests: each world size is launched once per session.

Starting a process costs ~5 s of imports on the 2-core machine, so one job per world size runs
every scenario (cases.json) and the tests compare its results with one process on the whole batch.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from hfsae import TopKSAE, TopKSAEConfig

from .launch import run_job

BATCH = 12  # divisible by every data-parallel size used here
STEPS = 5
MAX_GRAD_NORM = 0.05  # below the gradient norms of the first steps, so that clipping acts

CONFIGS = {
    # n_latents divisible by 2 shards, layer-norm inputs
    "even": dict(d_in=16, n_latents=48, k=4, k_aux=6, multi_topk_coef=1 / 8, normalize="layer_norm"),
    # 47 latents: shards of 24/23 and 12/12/12/11
    "odd": dict(d_in=16, n_latents=47, k=4, k_aux=6, multi_topk_coef=1 / 8),
    # 10 latents in 4 shards of 3/3/2/2: fewer latents per shard than k = 4 (and 4k = 16)
    "tiny": dict(d_in=8, n_latents=10, k=4, k_aux=3, multi_topk_coef=1 / 8),
}


def random_model(name: str, seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    model = TopKSAE(TopKSAEConfig(**CONFIGS[name]))
    with torch.no_grad():  # non-zero biases, so that every parameter's gradient is checked
        model.b_enc.normal_(std=0.1)
        model.b_pre.normal_(std=0.1)
    return model


def random_inputs(name: str, *, steps: int = 0, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch and a dead mask (half the latents), or one of each per training step."""
    config = TopKSAEConfig(**CONFIGS[name])
    generator = torch.Generator().manual_seed(seed)
    suffixes = [""] if not steps else [f".{step}" for step in range(steps)]
    inputs = {}
    for suffix in suffixes:
        inputs[f"x{suffix}"] = torch.randn(BATCH, config.d_in, generator=generator) * 2 + 0.5
        inputs[f"dead_mask{suffix}"] = (torch.rand(config.n_latents, generator=generator) < 0.5).to(torch.uint8)
    return inputs


def write_job(folder: str, cases: list[dict]) -> None:
    """Model folders and inputs named by the cases, and cases.json."""
    for case in cases:
        if "config" in case:
            model_folder = os.path.join(folder, case["model"])
            if not os.path.exists(model_folder):
                random_model(case["config"]).save_pretrained(model_folder)
            save_file(random_inputs(case["config"], steps=case.get("total_steps", 0)), os.path.join(folder, case["inputs"]))
    with open(os.path.join(folder, "cases.json"), "w") as f:
        json.dump(cases, f)


def forward_case(name, config, shards):
    return dict(name=name, kind="forward", config=config, model=f"model_{config}", inputs=f"inputs_{config}.safetensors", latent_shards=shards)


@pytest.fixture(scope="session")
def job_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="session")
def two_processes(job_dir):
    """Results of the 2-process job: 2 shards, and 2 data-parallel ranks."""
    folder = str(job_dir)
    train = dict(config="odd", model="model_odd", inputs="train_odd.safetensors", total_steps=STEPS)
    cases = [
        forward_case("forward_even_2_shards", "even", 2),
        forward_case("forward_odd_2_shards", "odd", 2),
        forward_case("forward_odd_2_data", "odd", 1),
        dict(train, name="train_2_data", kind="train", latent_shards=1, steps=[0, 3], save="state_2_data"),
        dict(name="any_rank", kind="any_rank", latent_shards=1),
    ]
    write_job(folder, cases)
    job = run_job("cases", folder, 2)
    assert job.returncodes == [0, 0], "\n".join(job.outputs)
    return folder


@pytest.fixture(scope="session")
def four_processes(two_processes):
    """Results of the 4-process job: 4 shards, a 2 × 2 grid, and resuming the 2-process training."""
    folder = two_processes
    train = dict(config="odd", model="model_odd", inputs="train_odd.safetensors", total_steps=STEPS)
    cases = [
        forward_case("forward_odd_4_shards", "odd", 4),
        forward_case("forward_tiny_4_shards", "tiny", 4),
        forward_case("forward_odd_2x2", "odd", 2),
        dict(train, name="train_2x2", kind="train", latent_shards=2, steps=[0, 3], save="state_2x2",
             max_grad_norm=MAX_GRAD_NORM),
        dict(train, name="resume_4_shards", kind="train", latent_shards=4, steps=[3, STEPS], resume=True,
             model="state_2_data", save="state_resumed"),
    ]
    write_job(folder, cases)
    job = run_job("cases", folder, 4)
    assert job.returncodes == [0, 0, 0, 0], "\n".join(job.outputs)
    return folder


def results(folder: str, name: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, f"{name}.safetensors"))
