"""benchmarks/gpu_check.sh refuses, in one line and with a non-zero exit, to run where there is no CUDA device."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the whole check (minutes)")
def test_gpu_check_without_cuda_says_so_in_one_line_and_fails(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "work")],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU."
    ]
    assert not (tmp_path / "work").exists()  # nothing installed or written before the check
