"""Dependencies point inward: each package imports only the rooms below it (CONVENTIONS.md)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
ROOT_MODULES = ("config", "logs", "metrics", "health", "clients")
WEB_OR_SQL = ("fastapi", "starlette", "asyncpg")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (at any level: lazy imports count too); `from pkg import
    name` counts as importing pkg.name when that is a module."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if _is_module(full) else base)
    return found


MODULES = {_module_name(p): _imports(p) for p in sorted(SERVICES.rglob("*.py"))}


def _within(name: str, packages: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _offending(importers: Iterable[str], forbidden: Iterable[str]) -> dict[str, list[str]]:
    forbidden = list(forbidden)
    bad = {
        module: sorted(i for i in MODULES[module] if _within(i, forbidden)) for module in importers
    }
    return {module: imports for module, imports in bad.items() if imports}


def _in(package: str) -> list[str]:
    return [m for m in MODULES if _within(m, [package])]


def _services(*names: str) -> list[str]:
    return [f"services.{n}" for n in names]


def test_the_modules_are_found() -> None:
    assert "services.counter.keys" in MODULES
    assert "services.counter.keys" in MODULES["services.counter.calls"]


def test_the_redis_side_imports_no_use_case_web_or_sql() -> None:
    forbidden = [*_services("api", "flusher", "cli", "counting", "db"), *WEB_OR_SQL]
    assert _offending(_in("services.counter"), forbidden) == {}


def test_the_database_side_imports_only_pure_values_of_the_redis_side() -> None:
    allowed = _services("counter.siteconfig", "counter.ids")
    uses = {
        module: sorted(
            i
            for i in MODULES[module]
            if _within(i, ["services.counter"]) and not _within(i, allowed)
        )
        for module in _in("services.db")
    }
    assert {m: i for m, i in uses.items() if i} == {}
    assert _offending(_in("services.db"), _services("api", "flusher", "cli", "counting")) == {}


def test_use_cases_import_no_process() -> None:
    assert _offending(_in("services.counting"), _services("api", "flusher", "cli")) == {}


def test_the_api_and_the_flusher_import_neither_each_other_nor_the_command_line() -> None:
    assert _offending(_in("services.api"), _services("flusher", "cli")) == {}
    assert _offending(_in("services.flusher"), _services("api", "cli")) == {}


def test_root_modules_import_no_process_and_no_use_case() -> None:
    roots = [m for m in _services(*ROOT_MODULES) if m in MODULES]
    assert len(roots) == len(ROOT_MODULES)
    assert _offending(roots, _services("api", "flusher", "cli", "counting")) == {}


def test_only_the_redis_side_knows_the_key_schema() -> None:
    outside = [m for m in MODULES if not _within(m, ["services.counter"])]
    assert _offending(outside, ["services.counter.keys"]) == {}


def test_only_the_database_side_runs_sql() -> None:
    # The local Postgres server (cli/localpostgres.py) runs psql as a program, not through asyncpg.
    outside = [m for m in MODULES if not _within(m, ["services.db"])]
    assert _offending(outside, ["asyncpg"]) == {}
