"""Fixtures for Hub tests: the fake Hub server, and a runner for client code in a fresh subprocess.

huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HOME when imported, and this test session
imported it offline already; so client code runs in a subprocess whose environment points at the
server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hub_server import HubServer

REPO_ROOT = Path(__file__).resolve().parents[2]
DUMMY_TOKEN = "hf_testtoken_never_printed_0123456789"
RESULT_MARKER = "@@RESULT@@"


class HubClient:
    """Runs Python snippets against the fake Hub; `emit(value)` in a snippet returns value as JSON."""

    def __init__(self, server: HubServer, tmp_path: Path):
        self.server = server
        self.tmp_path = tmp_path

    def hf_home(self, name: str) -> Path:
        """A fresh (or reused, by name) HF_HOME: a separate cache."""
        path = self.tmp_path / f"hf-home-{name}"
        path.mkdir(exist_ok=True)
        return path

    def run(self, code: str, *, cache: str = "main", offline: bool = False, expect_failure: bool = False,
            timeout: float = 120):
        env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
        env.update(
            HF_ENDPOINT=self.server.url,
            HF_TOKEN=DUMMY_TOKEN,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HOME=str(self.hf_home(cache)),
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)]),
        )
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        prelude = (
            "import json, sys, torch\n"
            f"def emit(value): print({RESULT_MARKER!r} + json.dumps(value), flush=True)\n"
        )
        completed = subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code)],
            env=env, capture_output=True, text=True, timeout=timeout, cwd=self.tmp_path,
        )
        output = completed.stdout + completed.stderr
        assert DUMMY_TOKEN not in output, "the token was printed"
        if expect_failure:
            assert completed.returncode != 0, f"expected the client to fail; it printed:\n{output}"
            return completed
        assert completed.returncode == 0, f"client failed:\n{output}"
        results = [line[len(RESULT_MARKER):] for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
        return json.loads(results[-1]) if results else None


@pytest.fixture(scope="session")
def hub_server():
    with HubServer() as server:
        yield server


@pytest.fixture
def hub(hub_server, tmp_path):
    return HubClient(hub_server, tmp_path)
