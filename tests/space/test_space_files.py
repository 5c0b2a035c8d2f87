"""The Space folder: a README whose YAML header makes a valid Gradio Space, and an env-configured app.py."""

import runpy
from pathlib import Path

from huggingface_hub import SpaceCard

SPACE = Path(__file__).resolve().parents[2] / "spaces"
HUB_COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def test_the_space_readme_header_declares_a_gradio_app_that_exists():
    card = SpaceCard.load(SPACE / "README.md")
    data = card.data
    assert data.sdk == "gradio"
    assert (SPACE / data.app_file).is_file()
    assert data.colorFrom in HUB_COLOURS and data.colorTo in HUB_COLOURS
    assert data.title and data.license == "apache-2.0"
    assert len(data.get("short_description", "")) <= 60
    major = int(str(data.sdk_version).split(".")[0])
    assert major in (5, 6)  # pyproject's [space] extra: gradio>=5,<7


def test_the_space_requirements_install_hfsae_with_the_space_extra():
    lines = [line.strip() for line in (SPACE / "requirements.txt").read_text().splitlines()]
    assert "hfsae[space]" in lines


def test_app_py_builds_the_explorer_for_the_sae_and_analysis_named_in_the_environment(
    monkeypatch,
):
    import hfsae.space

    calls = []
    monkeypatch.setattr(hfsae.space, "build_app", lambda *args: calls.append(args) or "app")
    monkeypatch.setenv("HFSAE_SAE", "org/some-sae")
    monkeypatch.setenv("HFSAE_ANALYSIS", "org/some-sae-analysis")
    namespace = runpy.run_path(str(SPACE / "app.py"), run_name="space_app")
    assert calls == [("org/some-sae", "org/some-sae-analysis")]
    assert namespace["demo"] == "app"


def test_app_py_defaults_to_the_sae_folder_beside_it(monkeypatch):
    import hfsae.space

    calls = []
    monkeypatch.setattr(hfsae.space, "build_app", lambda *args: calls.append(args) or "app")
    monkeypatch.delenv("HFSAE_SAE", raising=False)
    monkeypatch.delenv("HFSAE_ANALYSIS", raising=False)
    runpy.run_path(str(SPACE / "app.py"), run_name="space_app")
    assert calls == [("sae", None)]
