"""Start a job of N worker processes on this machine, as torchrun would, and wait for all of them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(WORKER)))


@dataclass
class Job:
    """Exit codes and output of each rank."""

    returncodes: list[int]
    outputs: list[str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(scenario: str, job: str, world_size: int, *, timeout: float = 120) -> Job:
    """Run worker.py <scenario> <job> in world_size processes; kill them all if they exceed `timeout`."""
    port = free_port()
    processes = []
    for rank in range(world_size):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",  # N processes share 2 cores
            PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        log = open(os.path.join(job, f"rank{rank}.log"), "w")
        processes.append((subprocess.Popen([sys.executable, WORKER, scenario, job], env=env, stdout=log, stderr=subprocess.STDOUT), log))
    returncodes = []
    try:
        for process, log in processes:
            returncodes.append(process.wait(timeout=timeout))
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    outputs = []
    for rank in range(world_size):
        with open(os.path.join(job, f"rank{rank}.log")) as f:
            outputs.append(f.read())
    return Job(returncodes, outputs)
