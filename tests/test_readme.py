"""The README is a quick start whose Python examples run as written; every `hfsae` command the README and
the user guide show parses, and every relative link of the README and docs/ leads to a file."""

import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDE_PAGES = [README, *sorted((ROOT / "docs" / "guide").glob("*.md"))]
LINKED_PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "guide").glob("*.md"))]


def python_block(containing: str) -> str:
    """The README's first ```python block that contains `containing` (found by content, not by position)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    matching = [block for block in blocks if containing in block]
    assert matching, f"README.md has no python block containing {containing!r}"
    return matching[0]


def test_the_readme_is_one_screen_of_set_up_and_examples():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    for line in ("python3 -m venv .venv && source .venv/bin/activate", "bash scripts/demo.sh", "bash scripts/test.sh"):
        assert line in text


def test_the_usage_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("save_pretrained("), "README.md usage example", "exec"), {})
    assert (tmp_path / "my-sae" / "model.safetensors").is_file() and (tmp_path / "my-sae" / "README.md").is_file()


@pytest.mark.slow
def test_the_hook_point_example_runs_on_the_builtin_model(tmp_path, monkeypatch, builtin_lm):
    from hfsae import TopKSAE, TopKSAEConfig

    monkeypatch.chdir(tmp_path)  # stands in for the folder the demo writes
    TopKSAE(TopKSAEConfig(d_in=576, n_latents=256, k=8)).save_pretrained(tmp_path / "outputs" / "default")
    namespace = {"hfsae": __import__("hfsae")}
    exec(compile(python_block("capture("), "README.md hook-point example", "exec"), namespace)
    assert namespace["acts"].shape[-1] == 576 and namespace["code"].indices.shape[-1] == 8
    assert torch.isfinite(namespace["code"].values).all()


# ---- the commands shown ------------------------------------------------------------------------------


def hfsae_commands(markdown: str) -> list[list[str]]:
    """The arguments of every `hfsae ...` (or `-m hfsae.cli ...`) command in the ```bash blocks of `markdown`.

    Continued lines are joined, comments and `&&` chains split off, and `...` (more options) dropped.
    """
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("#")[0].split("&&"):
                found = re.search(r"(?:^|\s)(?:-m hfsae\.cli|hfsae)\s+(.*)$", part)
                if found:
                    commands.append([word for word in shlex.split(found.group(1)) if word != "..."])
    return commands


def parse_problem(arguments: list[str]) -> str | None:
    """Why `hfsae` would refuse these arguments before running anything, or None when they parse."""
    from hfsae import cli

    try:
        cli.parse(arguments)
    except SystemExit as exit_:  # argparse: an unknown option or a missing argument
        return f"exit {exit_.code}"
    except Exception as err:  # a config that validates its values
        return cli.error_line(err)
    return None


def test_the_command_check_finds_commands_and_refuses_a_wrong_option():
    markdown = "```bash\nhfsae train --k 32 \\\n    --no-such-option 1   # a comment\nhfsae sweep && hfsae scaling --sweep-dir sweep\n```\n"
    assert hfsae_commands(markdown) == [["train", "--k", "32", "--no-such-option", "1"], ["sweep"], ["scaling", "--sweep-dir", "sweep"]]
    assert parse_problem(["train", "--k", "32", "--no-such-option", "1"]) is not None
    assert parse_problem(["train", "--batch-size", "131072"]) is not None  # larger than the shuffle buffer
    assert parse_problem(["scaling", "--sweep-dir", "sweep"]) is None


@pytest.mark.parametrize("page", GUIDE_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_hfsae_command_shown_parses(page):
    commands = hfsae_commands(page.read_text())
    assert commands or page.name not in ("README.md", "commands.md")
    assert {" ".join(arguments): parse_problem(arguments) for arguments in commands if parse_problem(arguments)} == {}


# ---- the links ---------------------------------------------------------------------------------------


def relative_links(page: Path) -> list[str]:
    """The targets of the page's markdown links that are files of this repository (no URL, no anchor)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [target.split("#")[0] for target in targets if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


def test_the_link_check_reads_relative_targets_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](guide/x.md#part) [b](https://hf.co/x) [c](#here) [d](../y/) ![e](fig.png)")
    assert relative_links(page) == ["guide/x.md", "../y/", "fig.png"]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page):
    targets = {(page.parent / target).resolve() for target in relative_links(page)}
    missing = {str(target.relative_to(ROOT)) for target in targets if not target.exists()}
    assert missing == set()
