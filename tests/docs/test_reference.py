"""The reference covers the public surface, and the pages agree with the code.

Every name in a public module's ``__all__`` must be rendered by a mkdocstrings
directive on a docs/reference page, and have a docstring (mkdocstrings skips
objects without one). The build itself runs only where the docs extra is
installed; the other checks read the Markdown and need nothing more.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import docstring, parameter_default

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

PUBLIC_MODULES = [
    "connecteur",
    "connecteur.framing",
    "connecteur.codecs",
    "connecteur.aio",
    "connecteur.server",
    "connecteur.errors",
    "connecteur.address",
]
"""Modules whose ``__all__`` is public API and must be in the reference."""


@dataclass(frozen=True)
class Directive:
    """One ``::: module`` block: the module, and its ``members:`` option if it restricts them."""

    page: Path
    module: str
    members: tuple[str, ...] | None

    def renders(self) -> list[str]:
        """The names this directive documents: its members, or the module's ``__all__``."""
        return list(self.members) if self.members is not None else list(importlib.import_module(self.module).__all__)


def directives() -> list[Directive]:
    found = []
    for page in sorted((DOCS / "reference").glob("*.md")):
        lines = page.read_text().splitlines()
        for index, line in enumerate(lines):
            if match := re.fullmatch(r":::\s+([\w.]+)\s*", line):
                options = []
                for option in lines[index + 1 :]:
                    if option and not option.startswith(" "):
                        break
                    options.append(option.strip())
                members = None
                if "members:" in options:
                    start = options.index("members:") + 1
                    members = tuple(item[2:] for item in options[start:] if item.startswith("- "))
                found.append(Directive(page, match.group(1), members))
    return found


def documented_at(module: ModuleType, name: str) -> list[str]:
    """The HTML anchors under which `module.name` is rendered (empty: nowhere)."""
    value = getattr(module, name)
    anchors = []
    for directive in directives():
        if inspect.ismodule(value) and directive.module == value.__name__:
            anchors.append(directive.module)
        target = importlib.import_module(directive.module)
        anchors += [f"{directive.module}.{shown}" for shown in directive.renders() if getattr(target, shown) is value]
    return anchors


def public_names() -> list[tuple[str, str]]:
    return [(module, name) for module in PUBLIC_MODULES for name in importlib.import_module(module).__all__]


# --- the Markdown ---------------------------------------------------------------------


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_module_has_a_directive(module: str) -> None:
    assert module in {directive.module for directive in directives()}


@pytest.mark.parametrize(("module", "name"), public_names(), ids=lambda value: value)
def test_every_exported_name_is_in_a_directive(module: str, name: str) -> None:
    assert documented_at(importlib.import_module(module), name), f"{module}.{name} is on no reference page"


def test_members_options_name_real_exports() -> None:
    for directive in directives():
        exported = importlib.import_module(directive.module).__all__
        for member in directive.members or ():
            assert member in exported, f"{directive.page.name} lists {member}, not in {directive.module}.__all__"


@pytest.mark.parametrize(("module", "name"), public_names(), ids=lambda value: value)
def test_every_public_class_and_function_has_docstrings(module: str, name: str) -> None:
    """A docstring on the object and on each of its public methods and properties."""
    value = getattr(importlib.import_module(module), name)
    if not (inspect.isclass(value) or inspect.isroutine(value) or inspect.ismodule(value)):
        return
    assert docstring(value), f"{module}.{name} has no docstring"
    if inspect.isclass(value):
        for attribute, member in vars(value).items():
            if attribute.startswith("_") or not (inspect.isroutine(member) or isinstance(member, property)):
                continue
            assert docstring(value, attribute), f"{module}.{name}.{attribute} has no docstring"


def test_every_page_is_in_the_nav() -> None:
    nav = set(re.findall(r"([\w/-]+\.md)", (ROOT / "mkdocs.yml").read_text()))
    pages = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}
    assert pages == nav


def test_readme_links_into_the_docs_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert links, "the README links to no page of the docs"
    for link in links:
        assert (ROOT / link).is_file(), f"README.md links to {link}, which does not exist"


# --- the limits page -------------------------------------------------------------------

_UNITS = {"MiB": 2**20, "KiB": 2**10, "s": 1, "": 1}


def _resolve(source: str) -> object:
    """`pkg.mod.NAME` -> its value; `pkg.mod.callable(param)` -> that parameter's default."""
    path, _, parameter = source.rstrip(")").partition("(")
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute)
        break
    else:
        raise AssertionError(f"cannot import {source}")
    if parameter:
        return parameter_default(value, parameter)
    return value


def _parse_default(text: str) -> object:
    if text == "None":
        return None
    match = re.fullmatch(r"([\d,]+(?:\.\d+)?)\s*(MiB|KiB|s)?", text)
    assert match, f"cannot read the default {text!r}"
    number = float(match.group(1).replace(",", "")) * _UNITS[match.group(2) or ""]
    return number


def limit_rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in (DOCS / "limits.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and (source := re.fullmatch(r"`(connecteur\.[\w.]+(?:\(\w+\))?)`", cells[3])):
            rows.append((cells[0], cells[1], source.group(1)))
    return rows


def test_the_limits_page_checks_many_limits() -> None:
    assert len(limit_rows()) >= 30


@pytest.mark.parametrize(("limit", "default", "source"), limit_rows(), ids=lambda value: value)
def test_each_limit_on_the_page_is_the_codes(limit: str, default: str, source: str) -> None:
    expected = _parse_default(default)
    actual = _resolve(source)
    if expected is None:
        assert actual is None, f"{limit}: the page says None, {source} is {actual!r}"
    else:
        assert isinstance(actual, int | float), f"{limit}: {source} is {actual!r}, not a number"
        assert actual == pytest.approx(expected), f"{limit}: the page says {default}, {source} is {actual!r}"


# --- the built site --------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built with ``mkdocs build --strict`` (skipped without the docs extra)."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(
            module,
            reason="the docs tools are not installed (the docs extra; .ci/run installs it and runs tests/docs again)",
        )
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def test_the_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()


def test_every_exported_name_is_rendered_in_the_site(site: Path) -> None:
    html = "\n".join(page.read_text() for page in (site / "reference").rglob("index.html"))
    ids = set(re.findall(r'id="([^"]+)"', html))
    missing = []
    for module, name in public_names():
        anchors = documented_at(importlib.import_module(module), name)
        if not ids & set(anchors):
            missing.append(f"{module}.{name}")
    assert not missing, f"not rendered (no docstring?): {missing}"
