"""The shape of the project: an acyclic import graph, a library apart from the command line, a repo that
stands alone, and a packages list that matches the package folders.

The import graph is read from the code's own `import` statements with `ast` (module level and inside
functions alike, relative imports resolved), not from what happens to be imported at run time.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
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


# The layers of docs/architecture.md, bottom first: a module imports from its own layer or lower ones.
# The package itself (hfsae/__init__.py, the public names) sits on top.
LAYERS = [
    ("hfsae.errors", "hfsae.folder", "hfsae.metric_table", "hfsae.nested", "hfsae.user_cache"),
    ("hfsae.ops",),
    ("hfsae.configuration", "hfsae.modeling", "hfsae.pretrained", "hfsae.hub"),
    ("hfsae.activations",),
    ("hfsae.evaluation", "hfsae.distributed", "hfsae.training", "hfsae.analysis", "hfsae.locate", "hfsae.interventions"),
    ("hfsae.explorer", "hfsae.explorer_views", "hfsae.space", "hfsae.space_app"),
    ("hfsae.commands", "hfsae.cli"),
    ("hfsae",),
]


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the entry that `module` is or lies under (the package root only as itself)."""
    for index, names in enumerate(LAYERS):
        if any(module == name or (name != "hfsae" and module.startswith(f"{name}.")) for name in names):
            return index
    return None


def test_the_layer_map_places_subpackages_and_leaves_unknown_modules_out():
    assert layer_of("hfsae.ops.cpu") == layer_of("hfsae.ops") < layer_of("hfsae.training.trainer")
    assert layer_of("hfsae") == len(LAYERS) - 1
    assert layer_of("hfsae.not_a_module") is None


def test_every_module_has_a_layer_and_imports_downwards_only():
    graph = import_graph()
    assert [module for module in graph if layer_of(module) is None] == [], "add it to LAYERS and docs/architecture.md"
    upwards = [f"{module} -> {target}" for module, targets in graph.items() for target in targets if layer_of(target) > layer_of(module)]
    assert upwards == []


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
    # One class per name: two CheckpointErrors with different bases once caught different things.
    names = [cls.__qualname__ for cls in defined]
    assert sorted({name for name in names if names.count(name) > 1}) == []


# ---- rooms of one screen -----------------------------------------------------------------------------

MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250
# A class may be longer when its docstring says why, on a line starting with this.
SIZE_REASON = "Size:"


def long_definitions(source: str, module: str) -> tuple[set[str], set[str]]:
    """(every function and class of `source` as module.qualified.name, those over their limit).

    Lines count from `def`/`class` to the definition's last line. A class over MAX_CLASS_LINES is let
    off when a line of its docstring starts with SIZE_REASON.
    """
    every, long = set(), set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, prefix)
                continue
            name, lines = f"{prefix}.{child.name}", child.end_lineno - child.lineno + 1
            every.add(name)
            if isinstance(child, ast.ClassDef):
                reasons = [line for line in (ast.get_docstring(child) or "").splitlines() if line.strip().startswith(SIZE_REASON)]
                if lines > MAX_CLASS_LINES and not reasons:
                    long.add(name)
            elif lines > MAX_FUNCTION_LINES:
                long.add(name)
            visit(child, name)

    visit(ast.parse(source), module)
    return every, long


def test_the_length_count_sees_long_functions_nested_ones_and_unexcused_classes():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    source = (
        f"def long():\n{body}\n"
        f"def fits():\n{body[: body.rindex('    x')]}\n"
        f"class Outer:\n    def method(self):\n{body.replace('    x', '        x')}\n"
        'class Big:\n    """Big.\n\n    Size: one idea that does not split.\n    """\n' + "    y = 0\n" * MAX_CLASS_LINES + "\n"
        'class Bigger:\n    """No reason given."""\n' + "    y = 0\n" * MAX_CLASS_LINES
    )
    every, long = long_definitions(source, "m")
    assert every == {"m.long", "m.fits", "m.Outer", "m.Outer.method", "m.Big", "m.Bigger"}
    assert long == {"m.long", "m.Outer.method", "m.Bigger"}


def test_no_function_over_80_lines_and_no_class_over_250_without_a_reason():
    every, long = set(), set()
    for module, path in module_files().items():
        found, too_long = long_definitions(path.read_text(encoding="utf-8"), module)
        every, long = every | found, long | too_long
    assert len(every) > 500  # the scan sees the package's definitions
    assert long == set(), "split these (or, for a class, say why in a 'Size:' docstring line)"


def test_every_module_opens_with_a_docstring_that_names_its_job():
    undocumented = [
        module for module, path in module_files().items()
        if not (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").strip()
    ]  # fmt: skip
    assert undocumented == []


# ---- measurements live in docs, not in source comments -----------------------------------------------

# Seconds, core counts, measured speed-ups and throughputs: true of one machine on one day. Code facts
# ("3×3 grid", "1.6 × buffer_tokens", "128 MiB in fp32", "2^24 elements") do not match.
MACHINE_FIGURES = re.compile(
    "|".join([
        r"\b\d+(?:\.\d+)?\s?(?:ms|µs|us|ns|s|sec|seconds?|mins?|minutes?|hours?)\b",
        r"\b\d+[- ](?:cores?|vCPUs?|CPUs?)\b",
        r"(?<![\w-])\d+(?:\.\d+)?[x×](?!\w)",  # not inside a name such as "L15R-8x"
        r"\b\d+(?:\.\d+)?\s?%\s+(?:slower|faster)\b",
        r"\b\d[\d,.]*\s?k?\s?(?:tokens|T?FLOP|GFLOP|[KMGT]i?B)/s\b",
    ])
)  # fmt: skip


def comments_and_docstrings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and every module, class and function docstring of `source`."""
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                found.append((node.body[0].lineno, docstring))
    return found


def machine_figures(source: str) -> list[str]:
    return [f"{line}: {match.group()}" for line, text in comments_and_docstrings(source) for match in MACHINE_FIGURES.finditer(text)]


@pytest.mark.parametrize(
    "comment",
    [  # comments the source once had
        "# training tokens took 753 s on 2 cores shared with ~5 other jobs",
        "# Measured on one 2-core CPU (one thread): dense 1.27x / 1.32x / 1.64x the floor",
        "# Group sizes (measured at n 131072, k 32: 64 → 63 ms, 16 → 204 ms)",
        "# CPU encoder block 25% slower than the best for good.",
        "# bfloat16 runs the forward pass at 13,500 tokens/s against 3,600 for float32 (3.75×)",
        "# a Python-level reduction, ~4 s for one 16 × 128 block",
        "# the built-in default (about 4–5 min on 2 CPU cores)",
    ],
)
def test_the_figure_check_catches_measurements_in_comments(comment):
    assert machine_figures(f"x = 1  {comment}\n")
    assert machine_figures(f'def f():\n    """{comment[2:]}"""\n')


def test_the_figure_check_leaves_code_facts_alone():
    facts = [
        "# a 3×3 grid: n 1024, 2048, 4096 × k 8, 16, 32",
        "# about 1.6 × buffer_tokens consecutive rows",
        "# bounds the transient block at 128 MiB in fp32; 2^24 elements",
        "# a [n, 1, d] × [n, d, 1] product, k 32, layer 10 of 30, 16 × 512 keys",
        "# ~ n^0.6 tokens to convergence; 0x7FFFFFFF masks the sign",
        "# a folder such as Llama3_1-8B-Base-L15R-8x/ (a name, not a speed-up)",
    ]
    assert machine_figures("".join(f"x = 1  {fact}\n" for fact in facts)) == []
    assert machine_figures('timeout = "600 s"\n') == []  # strings in code are not comments


def test_no_source_comment_quotes_one_machines_timings():
    found = [
        f"{path.relative_to(ROOT)}:{figure}"
        for path in module_files().values()
        for figure in machine_figures(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "measurements go to docs/performance.md; the comment says why"


# ---- one home for each concept -----------------------------------------------------------------------


def test_hfsae_file_names_are_spelled_in_hfsae_folder_only():
    from hfsae import folder

    # The names hfsae invents (config.json, README.md and model.safetensors are also other formats' names).
    names = {
        folder.SHARDED_WEIGHTS_INDEX, folder.INDEX_FILE, folder.TRAINING_CONFIG_FILE, folder.TRAINING_METRICS_FILE,
        folder.EVAL_RESULTS_FILE, folder.N2G_FILE, folder.INDEX_FORMAT,
    }  # fmt: skip
    spelled = []
    for module, path in module_files().items():
        if module == "hfsae.folder":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        spelled += [
            f"{module}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and any(node.value.endswith(name) for name in names)
        ]  # fmt: skip
    assert spelled == [], "import the name from hfsae.folder"


# ---- the map in docs/architecture.md -----------------------------------------------------------------


def architecture_homes() -> list[str]:
    """The backticked homes in the second column of docs/architecture.md's table of concepts."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text[text.index("| concept | home |") :].split("\n\n")[0]
    rows = [line.split("|")[2] for line in table.splitlines()[2:]]
    return [home for row in rows for home in re.findall(r"`([^`]+)`", row)]


def missing_home(home: str) -> str | None:
    """Why `home` (a module path under hfsae/, with an optional `.Name`, or a file or folder) does not exist."""
    import importlib

    if "<" in home:  # a pattern such as commands/<group>
        return None if (PACKAGE / home.split("<")[0]).is_dir() else f"{home}: no such folder"
    if home.endswith("/") or re.search(r"\.(json|md)$", home):
        return None if (PACKAGE / home).exists() or (ROOT / home).exists() else f"{home}: no such file"
    module, _, name = home.partition(".")
    dotted = "hfsae." + module.replace("/", ".")
    if dotted not in module_files():
        return f"{home}: no module {dotted}"
    if name and not hasattr(importlib.import_module(dotted), name):
        return f"{home}: {dotted} has no {name}"
    return None


def test_the_home_check_resolves_modules_names_files_and_folders():
    assert missing_home("ops/backend.SparseBackend") is None and missing_home("folder") is None
    assert missing_home("hub/registry.json") is None and missing_home("model_cards/") is None
    assert missing_home("ops/backend.NoSuchName") and missing_home("training/no_such_module") and missing_home("nothing.md")


def test_every_home_docs_architecture_names_exists():
    homes = architecture_homes()
    assert len(homes) > 30
    assert [problem for problem in map(missing_home, homes) if problem] == []
