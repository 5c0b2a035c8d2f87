"""A Space exported by `hfsae space --export` deploys on its own, against the Hub stand-in over HTTP.

The SAE, its base model and its analysis (pushed by `hfsae analyze --push-to-hub`) live only on the
stand-in; `hfsae space --export DIR --push-to-hub` writes and uploads the Space; the test downloads
the Space repo into an empty folder and runs its `app.py` there, which unpacks hfsae from the
Space's own wheel.

How hfsae is kept from coming from this checkout: app.py unpacks the Space's wheel and puts it
first on sys.path, ahead of the checkout's editable install (a meta-path finder, which Python asks
only after the path entries); the test asserts so from the path the app prints rather than
trusting it. Everything else (torch, gradio) comes from this environment: the requirements are
checked to resolve offline against it with `pip install --dry-run --no-index`. (A fresh venv
could not install torch offline.)
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))
from hub_server import HubServer  # noqa: E402

from .conftest import EXPLAINED_LATENT, HOOK_POINT, chromium_page, free_port  # noqa: E402

pytestmark = pytest.mark.slow

SAE_REPO, LM_REPO, ANALYSIS_REPO, SPACE_REPO = "org/tiny-sae", "org/tiny-llama", "org/tiny-sae-analysis", "user/explorer"
RESULT = "@@RESULT@@"
PUBLISH = f"""
import json
from huggingface_hub import HfApi
from hfsae.cli import main

api = HfApi()
for repo, folder in (({LM_REPO!r}, "lm"), ({SAE_REPO!r}, "sae")):
    api.create_repo(repo)
    api.upload_folder(folder_path=folder, repo_id=repo)
analyze = ["analyze", "sae", "--dataset", "texts.jsonl", "--n-tokens", "400", "--context-size", "32",
           "--batch-size", "4", "--n-top-examples", "4", "--quiet", "--push-to-hub", {ANALYSIS_REPO!r}]
assert main(analyze) == 0
space = ["space", {SAE_REPO!r}, "--analysis", {ANALYSIS_REPO!r}, "--export", "space", "--push-to-hub", {SPACE_REPO!r}]
assert main(space) == 0

from datasets import load_dataset
from huggingface_hub import DatasetCard, hf_hub_download, snapshot_download

rows = load_dataset({ANALYSIS_REPO!r}, split="train")
print({RESULT!r} + json.dumps(dict(
    density=list(rows["density"]),
    dataset_card=DatasetCard.load({ANALYSIS_REPO!r}, repo_type="dataset").content,
    dataset_files=api.list_repo_files({ANALYSIS_REPO!r}, repo_type="dataset"),
    space_files=api.list_repo_files({SPACE_REPO!r}, repo_type="space"),
    deployed=snapshot_download({SPACE_REPO!r}, repo_type="space", local_dir="deployed"),
)))
"""


def hub_env(server: HubServer, hf_home: Path, **extra) -> dict:
    """The environment of a client of the stand-in: its endpoint, a dummy token, no Xet."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "GRADIO_"))}
    env.update(
        HF_ENDPOINT=server.url,
        HF_TOKEN="hf_dummy_token_for_the_stand_in",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(hf_home),
        GRADIO_ANALYTICS_ENABLED="False",
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_lm, tiny_tokenizer, tiny_texts):
    """The stand-in Hub holding the base model, the SAE with its metrics, its analysis and the exported Space."""
    work = tmp_path_factory.mktemp("export")
    tiny_lm("llama").save_pretrained(work / "lm")
    tiny_tokenizer.save_pretrained(work / "lm")
    torch.manual_seed(0)
    config = TopKSAEConfig(d_in=32, n_latents=64, k=4, hook_point=HOOK_POINT, base_model=LM_REPO)
    TopKSAE(config).save_pretrained(work / "sae")
    (work / "sae" / "eval_results.json").write_text(json.dumps({"fvu": 0.125, "l0": 4.0}))
    explanation = {"latent": EXPLAINED_LATENT, "precision": 0.9, "recall": 0.5, "patterns": [{"tokens": ["f", "x"]}]}
    (work / "sae" / "n2g_explanations.json").write_text(json.dumps([explanation]))
    (work / "texts.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in tiny_texts))
    with HubServer() as server:
        completed = subprocess.run(
            [sys.executable, "-c", PUBLISH], cwd=work, env=hub_env(server, work / "hf-home-publish"),
            capture_output=True, text=True, timeout=600,
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        (line,) = [line for line in completed.stdout.splitlines() if line.startswith(RESULT)]
        yield server, work, json.loads(line[len(RESULT):])


def test_analyze_pushes_the_dataset_as_parquet_with_a_card_carrying_its_settings(published):
    _, work, result = published
    settings = json.loads((work / "sae" / "analysis" / "analysis.json").read_text())
    assert settings["sae"] == "sae" and settings["text"] == "texts.jsonl"  # a name, never this machine's path
    from hfsae.analysis import load_analysis

    local, _ = load_analysis(work / "sae" / "analysis")
    assert result["density"] == list(local["density"])
    assert any(name.endswith(".parquet") for name in result["dataset_files"]) and "analysis.json" in result["dataset_files"]
    card = result["dataset_card"]
    for row in (f"| tokens analysed | {settings['n_tokens']} |", "| text | `texts.jsonl` |",
                "| top examples kept per latent | 4 |", f"| hook point | `{HOOK_POINT}` |"):
        assert row in card
    assert "configs:" in card and "- hfsae" in card  # push_to_hub's data config kept, our tags added


def test_the_exported_space_holds_app_wheel_requirements_and_a_gradio_header(published):
    import gradio
    from huggingface_hub import SpaceCard

    _, _, result = published
    deployed = Path(result["deployed"])
    (wheel,) = [name for name in result["space_files"] if name.endswith(".whl")]
    assert {"app.py", "requirements.txt", "README.md", wheel} <= set(result["space_files"])
    card = SpaceCard.load(deployed / "README.md")
    assert (card.data.sdk, card.data.sdk_version, card.data.app_file) == ("gradio", gradio.__version__, "app.py")
    assert card.data.models == [SAE_REPO] and card.data.datasets == [ANALYSIS_REPO]
    assert len(card.data.short_description) <= 60
    with zipfile.ZipFile(deployed / wheel) as archive:
        names = archive.namelist()
    assert {"hfsae/space.py", "hfsae/explorer.py", "hfsae/model_cards/space.md"} <= set(names)
    assert not any(name.startswith(("tests/", "docs/", "benchmarks/")) or "__pycache__" in name for name in names)
    assert card.data.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    # A Space installs requirements.txt before its other files are copied in: the wheel is no requirement.
    assert "hfsae" not in (deployed / "requirements.txt").read_text().replace("# hfsae", "")
    import hfsae.space_app
    from hfsae.space import SETTINGS_FILE, VENDOR_DIR

    assert (deployed / "app.py").read_text() == Path(hfsae.space_app.__file__).read_text()  # the module, verbatim
    settings = json.loads((deployed / SETTINGS_FILE).read_text())
    assert settings == {"sae": SAE_REPO, "analysis": ANALYSIS_REPO, "wheel": wheel, "vendor_dir": VENDOR_DIR}


def test_the_space_requirements_are_the_wheels_own_and_resolve_as_a_space_installs_them(published, tmp_path):
    """requirements.txt lists what the vendored wheel declares (itself and its [space] extra), and pip
    resolves it as a Space's build does: the file alone (the Space's other files are not there yet),
    with the README's gradio pinned, offline against what this environment has installed."""
    import gradio
    from packaging.requirements import Requirement

    _, _, result = published
    deployed = Path(result["deployed"])
    listed = [line for line in (deployed / "requirements.txt").read_text().splitlines() if line and line[0] not in "#-"]
    # The reference: what pyproject.toml declares for hfsae and its [space] extra (the wheel's METADATA).
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["space"]]
    assert sorted(str(Requirement(line)) for line in listed) == sorted(str(Requirement(line)) for line in declared)
    assert {Requirement(line).name for line in listed} >= {"torch", "transformers", "huggingface-hub", "gradio"}
    alone = tmp_path / "requirements.txt"
    alone.write_text((deployed / "requirements.txt").read_text())
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-r", str(alone), f"gradio=={gradio.__version__}"]
    resolved = subprocess.run(pip, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resolved.returncode == 0, resolved.stdout + resolved.stderr


@pytest.fixture(scope="module")
def deployed_app(published, tmp_path_factory):
    """`python app.py` in the downloaded Space, which unpacks hfsae from its own wheel; yields its URL and pid.

    The app's log names where hfsae came from: it must be the Space's unpacked wheel, not this
    checkout (installed here in editable mode, which Python consults after the path entries)."""
    server, _, result = published
    deployed = Path(result["deployed"])
    port = free_port()
    env = hub_env(
        server, tmp_path_factory.mktemp("hf-home-space"), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port)
    )
    env.pop("PYTHONPATH", None)
    log_path = tmp_path_factory.mktemp("space-log") / "app.log"
    log = open(log_path, "w+")
    app = subprocess.Popen([sys.executable, "app.py"], cwd=deployed, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            if app.poll() is not None:
                break
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        log.seek(0)
        output = log.read()
        assert app.poll() is None, f"app.py exited:\n{output}"
        (line,) = [line for line in output.splitlines() if line.startswith("hfsae from ")]
        where = Path(line.removeprefix("hfsae from "))
        assert where.is_relative_to(deployed / ".hfsae"), f"the app imported hfsae from {where}, not the Space's wheel"
        yield SimpleNamespace(url=url, pid=app.pid)
    finally:
        app.terminate()
        app.wait(timeout=30)
        log.close()


def test_the_deployed_app_answers_from_the_sae_metrics_and_analysis_on_the_hub(deployed_app, published):
    from gradio_client import Client

    from hfsae import explorer_views
    from hfsae.activations import load_language_model
    from hfsae.explorer import Explorer

    _, work, _ = published
    # The reference loads the base model as the app does (the CPU's default dtype), from the same files.
    model, tokenizer = load_language_model(str(work / "lm"), quiet=True)
    local = Explorer.load(work / "sae", work / "sae" / "analysis", model=model, tokenizer=tokenizer)
    client = Client(deployed_app.url, verbose=False, analytics_enabled=False)
    highlighted, _, _ = client.predict("The quick brown fox", "", api_name="/text")
    expected, *_ = explorer_views.text_view(local, "The quick brown fox", None)
    assert [(item["token"], item["class_or_confidence"]) for item in highlighted] == expected
    _, summary, *_ = client.predict(EXPLAINED_LATENT, api_name="/latent")
    assert summary == explorer_views.latent_view(local, EXPLAINED_LATENT)[0]  # density from the Hub dataset, N2G from the Hub repo
    assert "N2G explanation" in summary


def peak_memory_mib(pid: int) -> float:
    """The process' peak resident memory so far (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc")
def test_a_16_mb_text_raises_the_apps_peak_memory_by_little_and_comes_back_cut(deployed_app):
    # Measured: tokenizing all 16 MB before the cut raised the peak by 3.2 GiB; cut first, by 50 MiB
    # (the request's own copies in transit, 16 MB each, and 256 tokens of work).
    from gradio_client import Client

    from hfsae.explorer import MAX_TEXT_TOKENS

    client = Client(deployed_app.url, verbose=False, analytics_enabled=False)
    client.predict("warm up", "", api_name="/text")
    before = peak_memory_mib(deployed_app.pid)
    highlighted, table, message = client.predict("x" * 16 * 2**20, "", api_name="/text")
    grown = peak_memory_mib(deployed_app.pid) - before
    assert len(highlighted) == len(table["data"]) == MAX_TEXT_TOKENS and "only the first" in message
    assert grown < 400, f"one request raised the app's peak memory by {grown:.0f} MiB"


@pytest.mark.browser
def test_chromium_renders_the_deployed_space_text_latent_and_overview_from_the_hub(deployed_app, published):
    from hfsae.analysis import load_analysis

    _, work, _ = published
    analysis, _ = load_analysis(work / "sae" / "analysis")
    with chromium_page() as page:
        page.goto(deployed_app.url)
        header = page.locator("#header")
        header.get_by_text(SAE_REPO).wait_for()
        assert "/tmp" not in header.inner_text() and "64 latents" in header.inner_text()

        # Text: the tokens come back coloured, and each token's top latents fill the table.
        page.locator("#text-input textarea").fill("The quick brown fox")
        page.locator("#text-button").click()
        page.locator("#text-message").get_by_text("Colouring by").wait_for()
        assert page.locator("#text-tokens .token").count() == len("The quick brown fox")  # one token per byte
        assert page.locator("#text-table [role=gridcell]").filter(has_text="(").count() > 0

        # A latent box given inf: a readable error naming the range, not a stack trace.
        page.locator("#text-latent textarea, #text-latent input").first.fill("inf")
        page.locator("#text-button").click()
        page.get_by_text("whole number in 0–63").first.wait_for()

        # Latent: density from the analysis dataset and the N2G explanation, both read from the Hub.
        page.get_by_role("tab", name="Latent").click()
        page.locator("#latent-input input").fill(str(EXPLAINED_LATENT))
        page.locator("#latent-button").click()
        page.locator("#latent-summary h2").get_by_text(f"Latent {EXPLAINED_LATENT}").wait_for()
        summary = page.locator("#latent-summary").inner_text()
        assert f"{analysis[EXPLAINED_LATENT]['density']:.4%}" in summary and "N2G explanation" in summary

        page.get_by_role("tab", name="Overview").click()
        page.locator("#overview").get_by_text("0.125").first.wait_for()  # eval_results.json from the Hub repo
        if os.environ.get("HFSAE_SCREENSHOTS"):
            page.screenshot(path=str(Path(os.environ["HFSAE_SCREENSHOTS"]) / "space.png"), full_page=True)
