"""SECURITY.md names a test for each promise: every test it names must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _named_tests() -> list[tuple[str, str | None]]:
    """``(file, test name or None)`` for each test reference: `tests/x.py::name`, then `::other` in the same file."""
    references: list[tuple[str, str | None]] = []
    for line in (ROOT / "SECURITY.md").read_text().splitlines():
        current: str | None = None
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?[^`]*`", line):
            if path:
                current = path
            if current is not None and (path or name):
                references.append((current, name or None))
    return references


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_the_page_names_many_tests() -> None:
    assert len(_named_tests()) >= 40


def test_every_test_the_page_names_exists() -> None:
    missing = []
    for file, name in _named_tests():
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
        elif name is not None and name not in _test_names(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"SECURITY.md names tests that do not exist: {missing}"
