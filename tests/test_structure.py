"""The dependency rules of the code, checked on every import statement (function-local ones
included): labeling depends on annotation, never the other way round below the API layer,
and labeling's services never import its tasks (they send them by name)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return _imports_in(path.read_text(), package)


def _imports_in(source: str, package: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _modules(*folders: str, skip: tuple[str, ...] = ()) -> list[Path]:
    paths = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
    return [p for p in paths if "migrations" not in p.parts and p.name not in skip]


# The annotation app below its HTTP layer (the API modules api*.py, the admin, the pages and
# the URLs): what people compare and how they get it.
HTTP_LAYER = ("admin.py", "views.py", "staff_views.py", "urls.py", "api_urls.py")
ANNOTATION_CORE = [
    p for p in _modules("annotation", skip=HTTP_LAYER) if not p.name.startswith("api")
]


def test_the_http_layer_is_named_as_the_rules_expect():
    """A new API module named otherwise would fall under the core's rules (and fail them)."""
    names = {p.name for p in (ROOT / "annotation").glob("*.py")}
    assert {"api.py", "api_reward_labels.py", "views.py", "staff_views.py"} <= names
    assert not any(p.name.startswith("api") for p in ANNOTATION_CORE)


@pytest.mark.parametrize("path", ANNOTATION_CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_annotation_core_imports_nothing_from_labeling(path):
    bad = [(line, name) for line, name in _imports(path) if name.startswith("labeling")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: use annotation.events instead"


@pytest.mark.parametrize(
    "path", _modules("labeling/services"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_labeling_services_never_import_the_tasks(path):
    bad = [(line, name) for line, name in _imports(path) if name.startswith("labeling.tasks")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: send tasks by labeling.task_names"


def test_the_rules_see_function_local_and_relative_imports():
    source = "def f():\n    from ..tasks.aggregation import run\n    import labeling.tasks\n"
    assert _imports_in(source, "labeling.services") == [
        (2, "labeling.tasks.aggregation.run"),
        (3, "labeling.tasks"),
    ]
