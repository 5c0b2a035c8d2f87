"""What `hfsae space --export` writes, checked without building a Space: its requirements come from a
wheel's own METADATA, and an SAE a Space could not read is refused before anything is written."""

import zipfile

import gradio
import pytest

from hfsae.cli import main
from hfsae.space import wheel_requirements


def write_wheel(path, requires: list[str]):
    """A wheel (a zip) whose METADATA declares `requires`: all wheel_requirements reads."""
    metadata = "Metadata-Version: 2.4\nName: hfsae\nVersion: 0.1.0\n" + "".join(
        f"Requires-Dist: {line}\n" for line in requires
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hfsae/__init__.py", "")
        archive.writestr("hfsae-0.1.0.dist-info/METADATA", metadata)
    return path


def test_requirements_are_the_wheels_own_and_its_space_extras_without_other_extras(tmp_path):
    wheel = write_wheel(
        tmp_path / "hfsae-0.1.0-py3-none-any.whl",
        ["torch<2.15,>=2.4", "numpy>=1.26", 'gradio<7,>=5; extra == "space"', 'pytest>=8; extra == "dev"'],
    )
    assert wheel_requirements(wheel) == ["torch<2.15,>=2.4", "numpy>=1.26", "gradio<7,>=5"]


def test_a_gradio_the_wheel_does_not_support_is_refused_before_it_reaches_a_space(tmp_path):
    wheel = write_wheel(tmp_path / "hfsae-0.1.0-py3-none-any.whl", [f'gradio<{gradio.__version__}; extra == "space"'])
    with pytest.raises(RuntimeError, match=f"gradio {gradio.__version__}"):
        wheel_requirements(wheel)


def test_exporting_a_local_folder_is_one_line_naming_the_push_and_writes_nothing(sae_folder, tmp_path, capsys):
    assert main(["space", str(sae_folder), "--export", str(tmp_path / "space")]) != 0
    error = capsys.readouterr().err.strip()
    assert error.startswith("hfsae: error: ") and "\n" not in error
    assert "a Space cannot read" in error and "hfsae push" in error
    assert not (tmp_path / "space").exists()
