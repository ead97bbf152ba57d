"""The house as DESIGN.md draws it, checked from the source: imports run one way between the top-level
packages, and every layer writes under the one home folder that `storage` defines.

Imports are read with `ast` from every module, at module level and inside functions alike (a lazy import
is still a dependency), including `importlib.import_module("…")` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
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


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, which is module `module`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            else:
                yield node.lineno, node.module or ""
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
