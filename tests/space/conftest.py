"""Fixtures for the explorer: a tiny SAE folder with an analysis, metrics and N2G explanations, and a launched app."""

import json
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig

HOOK_POINT = "layers.1.resid_post"
EXPLAINED_LATENT = 5


@pytest.fixture(scope="session")
def sae_folder(analyze_tiny, tmp_path_factory):
    """A saved tiny SAE (d_in 32, 64 latents, k 4) with analysis/, eval_results.json, training_metrics.json
    and n2g_explanations.json beside it."""
    folder = tmp_path_factory.mktemp("explorer") / "sae"
    torch.manual_seed(0)
    config = TopKSAEConfig(
        d_in=32,
        n_latents=64,
        k=4,
        hook_point=HOOK_POINT,
        base_model="tiny-random-llama",
    )
    TopKSAE(config).save_pretrained(folder)
    sae = TopKSAE.from_pretrained(folder)
    analyze_tiny(sae, n_top_examples=4, n_random_examples=3, context_before=6, context_after=2)
    (folder / "eval_results.json").write_text(
        json.dumps({"fvu": 0.125, "l0": 4.0, "progressive": {"2": 0.3, "4": 0.125}})
    )
    (folder / "training_metrics.json").write_text(json.dumps({"fvu": 0.13, "dead_fraction": 0.02, "tokens": 10000}))
    explanation = {
        "latent": EXPLAINED_LATENT,
        "precision": 0.9,
        "recall": 0.5,
        "patterns": [
            {
                "token_ids": [102, None, 120],
                "tokens": ["f", "*", "x"],
                "activation": 1.5,
            }
        ],
    }
    (folder / "n2g_explanations.json").write_text(json.dumps([explanation]))
    return folder


@pytest.fixture(scope="session")
def explorer(sae_folder, tiny_lm, tiny_tokenizer):
    from hfsae.explorer import Explorer

    return Explorer.load(sae_folder, model=tiny_lm("llama"), tokenizer=tiny_tokenizer)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(explorer):
    """The explorer served on 127.0.0.1 in this process; closed at the end of the session."""
    from hfsae.space import build_app

    demo = build_app(explorer)
    demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
    )
    yield demo.local_url
    demo.close()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium_page():
    """A page of the system Chromium (playwright never downloads a browser here), closed afterwards."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"No system Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`.")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()
