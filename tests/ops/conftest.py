"""Fixtures for the ops tests: the Triton backend, interpreted on the CPU when there is no GPU.

Triton decides when a function is decorated whether it will be interpreted, its own library
(tl.sum, tl.topk, ...) included, so TRITON_INTERPRET=1 must be set before triton is first
imported. This file sets it, imports triton and hfsae.ops.triton_kernels, and restores the variable
at once (the `triton_ops` fixture sets it again only around the tests that use it): later kernels
elsewhere are defined as usual, and the interpreted backend is the one
`backend_for("cpu", "triton")` returns for the rest of the session (on a CPU-only machine the
compiled one could not run anyway).
"""

import importlib
import importlib.util
import os
import sys

import pytest
import torch

TRITON_MODULE = "hfsae.ops.triton_kernels"
_interpreter_problem = None

interpreting_already = os.environ.get("TRITON_INTERPRET") == "1"  # tests/conftest.py sets it without a GPU
if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available() and not interpreting_already:
    if "triton" in sys.modules:
        _interpreter_problem = (
            "triton was imported before tests/ops/conftest.py could turn on TRITON_INTERPRET=1; import "
            "it later, or run with TRITON_INTERPRET=1 set."
        )
    else:
        _saved_flag = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            importlib.import_module(TRITON_MODULE)
        finally:
            if _saved_flag is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = _saved_flag


@pytest.fixture
def triton_ops(monkeypatch):
    """The hfsae.ops.triton_kernels module: compiled on CUDA, interpreted on the CPU.

    While interpreting, the variable is also set for the test itself: triton imports parts of
    itself lazily at the first launch and checks it again there.
    """
    pytest.importorskip("triton")
    if _interpreter_problem is not None:
        pytest.fail(_interpreter_problem)
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return importlib.import_module(TRITON_MODULE)


@pytest.fixture(scope="session")
def device():
    """Where the Triton tests put their tensors: the GPU if there is one, else the CPU interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
