"""The layering rules: imports only point downwards, and the core pulls in no driver."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: package -> packages it must never import
FORBIDDEN = {
    "taskforge_core": ("taskforge_backends", "taskforge_contrib"),
    "taskforge_backends": ("taskforge_contrib",),
}
DRIVERS = ("asyncpg", "aiosqlite", "redis", "opentelemetry", "prometheus_client")


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_files(package: str) -> list[pathlib.Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in python_files(package)
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert violations == []


def test_importing_the_core_loads_no_driver() -> None:
    code = (
        f"import sys, taskforge_core\nprint(','.join(m for m in {DRIVERS!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def test_creating_an_app_loads_no_optional_driver(tmp_path: pathlib.Path) -> None:
    code = (
        "import sys, taskforge_core\n"
        f"taskforge_core.TaskForge('sqlite:///{tmp_path}/x.db')\n"
        f"print(','.join(m for m in {DRIVERS!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def all_modules() -> list[str]:
    modules = []
    for package in ("taskforge_core", "taskforge_backends", "taskforge_contrib"):
        for path in python_files(package):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


@pytest.mark.parametrize("module", all_modules())
def test_every_module_imports_on_its_own(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=ROOT)
