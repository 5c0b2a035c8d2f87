"""The model class's Hub behaviour lives outside the Hub package: modeling.py imports nothing of hfsae.hub."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hfsae"


def imports(path: Path, *, module_level_only: bool) -> set[str]:
    """The modules a file imports ('.hub.loading' for relative ones), at module level or anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def reaches_hub(name: str) -> bool:
    return name.startswith((".hub", "hfsae.hub"))


def test_modeling_imports_nothing_of_the_hub_package():
    assert not any(reaches_hub(name) for name in imports(PACKAGE / "modeling.py", module_level_only=False))


def test_the_mixin_reaches_the_hub_package_only_when_its_methods_run():
    assert not any(reaches_hub(name) for name in imports(PACKAGE / "pretrained.py", module_level_only=True))
    assert ".hub.source" in imports(PACKAGE / "pretrained.py", module_level_only=False)
