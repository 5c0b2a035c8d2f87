"""The shape of the project: an acyclic import graph, a library apart from the command line, a repo that
stands alone, and a packages list that matches the package folders.

The import graph is read from the code's own `import` statements with `ast` (module level and inside
functions alike, relative imports resolved), not from what happens to be imported at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hfsae"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package ('hfsae.hub' for hfsae/hub/__init__.py)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that `module` imports anywhere in its file, with the packages Python runs first.

    `from . import x` names the submodule x when there is one, else the package; `import a.b.c` and
    `from a.b import c` run a/__init__ and a/b/__init__ first, so a module outside package `a` depends
    on those too (a module inside it does not: its own package is being imported already).
    """
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import hfsae.x.y` where y is a name, or a foreign module
                name = name.rpartition(".")[0]
            if not name:
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                target = ".".join(parts[:depth])
                if target != module and not module.startswith(f"{target}."):
                    targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {module: imported_modules(module, path, modules) for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None when it is acyclic (depth-first search, iterative)."""
    state: dict[str, str] = {}  # "active" while on the current path, "done" once fully explored
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = "active"
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(child) == "active":
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = "active"
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


# ---- the checker checks ------------------------------------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "pkg"


def test_the_graph_resolves_relative_function_level_and_package_imports(tmp_path):
    package = write_package(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "def f():\n    from .sub import b\n    from . import c\n",
        "pkg/c.py": "import os\nfrom pkg.sub.b import name\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from .. import c\nfrom ..a import f\n",
    })
    modules = module_files(package)
    graph = {module: imported_modules(module, path, modules) for module, path in modules.items()}
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub", "pkg.sub.b", "pkg.c"},
        "pkg.c": {"pkg.sub", "pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.c", "pkg.a"},
    }
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert all(after in graph[before] for before, after in zip(cycle, cycle[1:]))


def test_an_acyclic_graph_has_no_cycle():
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) in (["a", "b", "a"], ["b", "a", "b"])


# ---- the project -------------------------------------------------------------------------------------


def test_hfsae_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_library_never_imports_the_command_line():
    command_line = ("hfsae.commands", "hfsae.cli")

    def is_command_line(module: str) -> bool:
        return any(module == name or module.startswith(f"{name}.") for name in command_line)

    offenders = {
        module: sorted(target for target in targets if is_command_line(target))
        for module, targets in import_graph().items()
        if not is_command_line(module)
    }
    assert {module: targets for module, targets in offenders.items() if targets} == {}


def test_command_line_arguments_and_runners_live_in_hfsae_commands():
    misplaced = [
        f"{module}: {node.name}"
        for module, path in module_files().items()
        if not module.startswith("hfsae.commands") and module != "hfsae.cli"
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if (isinstance(node, ast.ClassDef) and node.name.endswith("Args"))
        or (isinstance(node, ast.FunctionDef) and node.name.startswith("run_"))
    ]
    assert misplaced == []


def test_modules_use_each_others_public_names_only():
    # distributed/sharded.py once called TopKSAE's private methods and drifted from them; what one
    # module needs of another is public (modeling's check_input, normalize, fvu, ...).
    reached = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hfsae")):
                reached += [f"{module}: from {node.module} import {alias.name}" for alias in node.names
                            if alias.name.startswith("_") and not alias.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = ast.unparse(node.value)
                if owner not in ("self", "cls") and owner.split(".")[0] != "torch":  # torch's own helpers
                    reached.append(f"{module}:{node.lineno}: {owner}.{node.attr}")
    assert reached == []


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing tracked to check")
    return [ROOT / name for name in listed.split("\0") if name]


def test_no_tracked_file_refers_to_files_or_paths_outside_the_repo():
    # Spelled in pieces so that this file does not match itself.
    outside = ["PAPER" + ".md", "DESIGN" + ".md", "STYLE" + ".md", "HUB_TESTING" + ".md", ".." + "/shared", "/" + "work/", "hfsae" + "-notes"]
    found = []
    for path in tracked_files():
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # figures and other binary files
            continue
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {word}" for word in outside if word in line]
    assert found == []


def test_the_packages_list_is_every_package_folder():
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {name: ROOT / name.replace(".", "/") for name in module_files() if (ROOT / name.replace(".", "/")).is_dir()}
    # Packages installed from elsewhere (the card templates: model_cards/ as hfsae.model_cards).
    folders |= {name: ROOT / where for name, where in settings.get("package-dir", {}).items() if name}
    # A folder of modules without __init__.py would be left out of the wheel although the code imports it.
    stray = [
        str(directory.relative_to(ROOT)) for directory in PACKAGE.rglob("*")
        if directory.is_dir() and directory.name != "__pycache__" and any(directory.glob("*.py"))
        and not (directory / "__init__.py").is_file()
    ]
    assert stray == []
    assert all((path / "__init__.py").is_file() for path in folders.values())
    assert sorted(settings["packages"]) == sorted(folders)


def test_every_exception_class_of_hfsae_derives_from_hfsae_error():
    import importlib
    import inspect

    from hfsae.errors import HfsaeError

    defined = set()
    for module in module_files():
        for _, value in inspect.getmembers(importlib.import_module(module), inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("hfsae"):
                defined.add(value)
    assert len(defined) > 20  # the scan sees the package's errors, not an empty set
    assert not {cls.__qualname__ for cls in defined if not issubclass(cls, HfsaeError)}
