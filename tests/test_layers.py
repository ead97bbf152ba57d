"""The house as docs/architecture.md draws it, checked from the source: imports run one way between the
top-level packages, no modules import each other in a circle, no module of the composing layers outgrows one job,
and every layer writes under the one home folder that `storage` defines.

Imports are read with `ast` from every module, at module level and inside functions alike (a lazy import
is still a dependency), including `importlib.import_module("…")` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import REPO

# What each layer may import of the project besides itself: `pipelines` composes everything; `training` reads
# preference sets through `storage` and uses the BLS reader and the model catalog; `agents` use `tools`;
# everything may use `configs` and `storage`; `storage` and `configs` import none of the others; the web UI
# (`ui`) reads the database through `storage` only, and `pipelines` (the CLI) starts it.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "configs": frozenset(),
    "storage": frozenset({"configs"}),
    "tools": frozenset({"configs", "storage"}),
    "agents": frozenset({"configs", "storage", "tools"}),
    "training": frozenset({"configs", "storage", "tools", "agents"}),
    "pipelines": frozenset({"configs", "storage", "tools", "agents", "training", "ui"}),
    "ui": frozenset({"configs", "storage"}),
}
# Project packages no layer may import: they sit beside the house, not in it.
OUTSIDE = frozenset({"benchmarks", "tests"})
# A module of the layers that compose, serve and train longer than this holds more than one job: split it.
MAX_MODULE_LINES = 600
SIZE_CHECKED = ("pipelines", "training", "ui", "tools")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(
    source: str, module: str, *, is_package: bool = False, modules: Collection[str] = ()
) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, which is module `module`.

    `from a import b` names `a`, or `a.b` where that is one of `modules` (a submodule rather than a name
    defined in `a`), so that a graph of modules sees the submodule the statement loads.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - (node.level - 1)])
                base = ".".join(part for part in (base, node.module) if part)
            else:
                base = node.module or ""
            named = (f"{base}.{alias.name}" for alias in node.names)
            for name in dict.fromkeys(name if name in modules else base for name in named):
                yield node.lineno, name
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def upward_imports(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """`module:line imports name` for each import of `source` that its layer may not make."""
    layer = module.split(".")[0]
    found = []
    for line, name in imported_names(source, module, is_package=is_package):
        top = name.split(".")[0]
        if top != layer and (top in OUTSIDE or (top in MAY_IMPORT and top not in MAY_IMPORT[layer])):
            found.append(f"{module}:{line} imports {name}")
    return found


def layer_modules() -> Iterator[tuple[Path, str]]:
    for layer in MAY_IMPORT:
        for path in sorted((REPO / layer).rglob("*.py")):
            yield path, module_name(path)


def import_graph(sources: Mapping[str, str], packages: Collection[str] = ()) -> dict[str, set[str]]:
    """Module → the modules of `sources` it imports (`packages`: the modules that are a package's __init__)."""
    return {
        module: {
            name
            for _, name in imported_names(source, module, is_package=module in packages, modules=sources)
            if name in sources and name != module
        }
        for module, source in sources.items()
    }


def import_circles(graph: Mapping[str, Collection[str]]) -> list[list[str]]:
    """Every circle of imports, one per strongly connected group of modules (Tarjan), as the shortest path from
    the group's first module (by name) back to itself: ["a", "b", "a"] for a that imports b that imports a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(_shortest_circle(graph, group) for group in groups)


def _shortest_circle(graph: Mapping[str, Collection[str]], group: set[str]) -> list[str]:
    """Breadth-first from the group's first module, inside the group, back to that module."""
    start = min(group)
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph.get(node, ())):
                if successor == start:
                    path = [node]
                    while (previous := parent[path[-1]]) is not None:
                        path.append(previous)
                    return [*reversed(path), start]
                if successor in group and successor not in parent:
                    parent[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"{sorted(group)} is strongly connected, so a path leads back to {start}")


def product_sources() -> tuple[dict[str, str], set[str]]:
    """Source of every module of the layers by name, and which of them are packages."""
    sources, packages = {}, set()
    for path, name in layer_modules():
        sources[name] = path.read_text(encoding="utf-8")
        if path.name == "__init__.py":
            packages.add(name)
    return sources, packages


def test_no_modules_import_each_other_in_a_circle() -> None:
    circles = import_circles(import_graph(*product_sources()))
    assert not circles, "import circles (split the shared part out, or move the module): " + "; ".join(
        " -> ".join(circle) for circle in circles
    )


def test_no_module_of_the_composing_layers_holds_more_than_one_job() -> None:
    oversized = [
        f"{path.relative_to(REPO)}: {lines} lines"
        for layer in SIZE_CHECKED
        for path in sorted((REPO / layer).rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert not oversized, f"modules over {MAX_MODULE_LINES} lines (one job per module): " + "; ".join(oversized)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({}, []),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, []),  # a diamond is no circle
        ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
        ({"b": {"c"}, "c": {"a"}, "a": {"b"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
        # two separate circles, each named once; the longer way round a->b->c->a is not the one shown
        (
            {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "x": {"y"}, "y": {"x", "a"}},
            [["a", "b", "a"], ["x", "y", "x"]],
        ),
        ({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"c"}}, []),
        ({"a": {"missing"}}, []),  # an edge to a module outside the graph closes nothing
    ],
)
def test_circle_finder(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert import_circles(graph) == expected


def test_import_graph_sees_circles_through_lazy_and_submodule_imports() -> None:
    sources = {
        "pipelines": "",
        "pipelines.synthesis": "from pipelines import episode\n\ndef play():\n    from .workers import run\n",
        "pipelines.workers": "from pipelines.synthesis import play\n",
        "pipelines.episode": "import storage.db\n",
        "storage.db": "",
    }
    graph = import_graph(sources, packages={"pipelines"})
    assert graph == {
        "pipelines": set(),
        "pipelines.synthesis": {"pipelines.episode", "pipelines.workers"},
        "pipelines.workers": {"pipelines.synthesis"},
        "pipelines.episode": {"storage.db"},
        "storage.db": set(),
    }
    assert import_circles(graph) == [["pipelines.synthesis", "pipelines.workers", "pipelines.synthesis"]]
    sources["pipelines.workers"] = "from pipelines.episode import play\n"
    assert import_circles(import_graph(sources, packages={"pipelines"})) == []


def test_every_layer_imports_only_downward() -> None:
    modules = list(layer_modules())
    assert {name.split(".")[0] for _, name in modules} == set(MAY_IMPORT), "a layer has no modules"
    found = [
        violation
        for path, name in modules
        for violation in upward_imports(path.read_text(encoding="utf-8"), name, is_package=path.name == "__init__.py")
    ]
    assert found == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "training.train",
            "def build():\n    from pipelines.export import load_preference_set\n",
            ["training.train:2 imports pipelines.export"],
        ),
        ("storage.db", "import pipelines.cli as cli\n", ["storage.db:1 imports pipelines.cli"]),
        ("configs.schema", "from storage.db import prefsmith_home\n", ["configs.schema:1 imports storage.db"]),
        ("tools.bls", "from training import debias\n", ["tools.bls:1 imports training"]),
        ("tools.labor", "from agents.catalog import prepare\n", ["tools.labor:1 imports agents.catalog"]),
        (
            "agents.players",
            "import typing\nif typing.TYPE_CHECKING:\n    from pipelines.episode import Players\n",
            ["agents.players:3 imports pipelines.episode"],
        ),
        (
            "agents.catalog",
            "import importlib\nmod = importlib.import_module('training.train')\n",
            ["agents.catalog:2 imports training.train"],
        ),
        ("storage.migrations.env", "from ..records import x\n", []),
        ("storage.queries", "from tests.sample_run import store\n", ["storage.queries:1 imports tests.sample_run"]),
        ("storage.records", "import torch\nfrom configs.errors import StorageError\nfrom . import models\n", []),
        ("pipelines.cli.training", "from training.train import load_job\nfrom agents.catalog import prepare\n", []),
    ],
)
def test_checker_flags_exactly_the_upward_imports(module: str, source: str, expected: list[str]) -> None:
    assert upward_imports(source, module) == expected


def test_relative_imports_resolve_against_the_package() -> None:
    assert list(imported_names("from ..models import Base\n", "storage.migrations.env")) == [(1, "storage.models")]
    assert list(imported_names("from . import db\n", "storage", is_package=True)) == [(1, "storage")]


def test_one_home_folder_for_every_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $PREFSMITH_HOME, models, labor tables and exports all land under the user data dir."""
    from agents.catalog import models_dir
    from pipelines.export import default_export_dir
    from storage.db import default_db_url
    from storage.folders import prefsmith_home
    from tools.bls import labor_cache_dir

    monkeypatch.delenv("PREFSMITH_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    home = tmp_path / "data" / "prefsmith"
    assert prefsmith_home() == home
    assert (models_dir(), labor_cache_dir()) == (home / "models", home / "labor")
    assert default_export_dir("run-x", 1) == home / "exports" / "run-x-v1"
    assert default_db_url() == f"sqlite:///{home / 'prefsmith.db'}"
    assert not (tmp_path / "cache").exists()


def test_only_storage_decides_where_home_is() -> None:
    deciders = sorted(
        module
        for path, module in layer_modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if (isinstance(node, ast.FunctionDef) and node.name == "prefsmith_home")
        or (isinstance(node, ast.Import | ast.ImportFrom) and "platformdirs" in ast.unparse(node))
    )
    assert deciders == ["storage.folders", "storage.folders"]
