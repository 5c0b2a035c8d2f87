"""A rank that dies or hangs ends the job with an error on the others instead of a hang."""

from __future__ import annotations

import os

import pytest

from .launch import run_job


# gloo reports a dead peer at once (its socket closes), a silent one after the 5 s timeout.
@pytest.mark.slow  # starts worker processes
@pytest.mark.parametrize(("how", "reported"), [("dies", "Connection"), ("hangs", "Timed out")])
def test_when_one_rank_dies_or_hangs_the_others_exit_with_an_error(how, reported, tmp_path):
    # run_job raises TimeoutExpired if the job is still running after 120 s, i.e. if anything hangs.
    job = run_job(how, str(tmp_path), 2, timeout=120)
    assert job.returncodes[0] != 0, job.outputs[0]
    with open(os.path.join(tmp_path, "error.0.txt")) as f:
        error = f.read()
    assert error.startswith("RuntimeError") and reported in error, error
