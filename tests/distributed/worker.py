"""One rank of a multi-process test job: runs scenarios on the gloo backend and writes what it saw.

Started by tests/distributed/launch.py as `python worker.py <scenario> <job folder>` with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as torchrun would. The job folder holds `cases.json`
and the inputs the test wrote (model folders, batches); rank 0 writes `<case>.safetensors` results.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from hfsae.distributed import (
    ShardedTopKSAE,
    any_rank,
    build_grid,
    init_process_grid,
    load_training_state,
    save_training_state,
)
from hfsae.distributed.grid import all_gather


def adam(parameters):
    return torch.optim.Adam(parameters, lr=1e-3, betas=(0.9, 0.999), eps=6.25e-10)


def gather_rows(tensor: torch.Tensor, grid) -> torch.Tensor:
    """This data rank's rows [rows, ...] → the global batch's rows (data ranks hold equal shares)."""
    return torch.cat(all_gather(tensor.contiguous(), grid.data_group))


def my_rows(batch: torch.Tensor, grid) -> torch.Tensor:
    return batch.chunk(grid.data_size)[grid.data_rank]


def forward_case(case: dict, job: str, grid) -> dict[str, torch.Tensor]:
    """One forward and backward; the outputs, losses and full-size gradients."""
    sae = ShardedTopKSAE.from_pretrained(os.path.join(job, case["model"]), grid)
    inputs = load_file(os.path.join(job, case["inputs"]))
    x, dead_mask = my_rows(inputs["x"], grid), inputs["dead_mask"].bool()
    out = sae(x, dead_mask=dead_mask)
    out.loss.backward()
    sae.sync_gradients_()
    result = {
        "x_hat": gather_rows(out.x_hat.detach(), grid),
        "indices": gather_rows(out.code.indices, grid),
        "values": gather_rows(out.code.values, grid),
        "fvu": out.fvu.detach(),
        "loss": out.loss.detach(),
        "aux_loss": out.aux_loss.detach(),
        "multi_topk_loss": out.multi_topk_loss.detach(),
    }
    for name, parameter in sae.named_parameters():
        result[f"grad.{name}"] = sae.gather_full(name, parameter.grad)
    return result


def train_steps_(
    sae: ShardedTopKSAE, optimizer, inputs: dict, steps: range, grid, max_grad_norm: float | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Adam steps with the decoder-norm step (docs/method.md §1) and optional clipping, in the trainer's order.

    Returns each step's loss and gradient norm before clipping (0 without clipping).
    """
    losses, norms = [], []
    for step in steps:
        x = my_rows(inputs[f"x.{step}"], grid)
        out = sae(x, dead_mask=inputs[f"dead_mask.{step}"].bool())
        optimizer.zero_grad()
        out.loss.backward()
        sae.sync_gradients_()
        sae.project_decoder_grad_()
        norms.append(sae.clip_grad_norm_(max_grad_norm) if max_grad_norm is not None else torch.zeros(()))
        optimizer.step()
        sae.normalize_decoder_()
        losses.append(out.loss.detach())
    return losses, norms


def train_case(case: dict, job: str, grid) -> dict[str, torch.Tensor]:
    """Several Adam steps from a saved model or training state, then a saved training state."""
    inputs = load_file(os.path.join(job, case["inputs"]))
    source = os.path.join(job, case["model"])
    if case.get("resume"):
        sae, optimizer = load_training_state(source, grid, adam)
    else:
        sae = ShardedTopKSAE.from_pretrained(source, grid)
        optimizer = adam(sae.parameters())
    losses, norms = train_steps_(sae, optimizer, inputs, range(*case["steps"]), grid, case.get("max_grad_norm"))
    save_training_state(sae, optimizer, os.path.join(job, case["save"]))
    return {"losses": torch.stack(losses), "grad_norms": torch.stack(norms)}


def any_rank_case(case: dict, job: str, grid) -> dict[str, torch.Tensor]:
    """Each rank's own fired mask, OR-ed over the data group."""
    fired = torch.zeros(8, dtype=torch.bool)
    fired[grid.data_rank] = True
    return {"alive": any_rank(fired, grid.data_group)}


RUNNERS = {"forward": forward_case, "train": train_case, "any_rank": any_rank_case}


def run_cases(job: str) -> None:
    with open(os.path.join(job, "cases.json")) as f:
        cases = json.load(f)
    init_process_grid(timeout=timedelta(seconds=60))
    for case in cases:
        grid = build_grid(latent_shards=case["latent_shards"], timeout=timedelta(seconds=60))
        result = RUNNERS[case["kind"]](case, job, grid)
        if grid.is_main:
            save_file({k: v.contiguous() for k, v in result.items()}, os.path.join(job, f"{case['name']}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


def a_rank_fails(job: str, *, how: str) -> None:
    """The last rank dies (or hangs) while the others start an all-reduce that needs it."""
    grid = init_process_grid(timeout=timedelta(seconds=5))
    if grid.rank == dist.get_world_size() - 1:
        if how == "dies":
            os._exit(3)
        # Stuck: alive but never joining the collective, until rank 0 has given up (at most a minute).
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(job, "error.0.txt")) and time.monotonic() < deadline:
            time.sleep(0.2)
        os._exit(0)
    start = time.monotonic()
    try:
        dist.all_reduce(torch.ones(4))
    except Exception as err:  # what a training loop would see
        with open(os.path.join(job, f"error.{grid.rank}.txt"), "w") as f:
            f.write(f"{type(err).__name__} after {time.monotonic() - start:.1f}s: {err}")
        sys.stderr.flush()
        raise
    os._exit(0)


if __name__ == "__main__":
    scenario, job = sys.argv[1], sys.argv[2]
    if scenario == "cases":
        run_cases(job)
    else:
        a_rank_fails(job, how=scenario)
