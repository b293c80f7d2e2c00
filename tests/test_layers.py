"""The package's import rules, read from the source with `ast` (nothing is imported).

The layer list is the one in README.md's Design section: one line per layer,
highest first; a line starts with the modules of its layer (``server/`` is a
package and everything in it, ``aio.py`` a module), comma-separated, then two
or more spaces and a description. Every module of ``src/connecteur`` must be
on that list. The rules, with no exceptions list:

- **No cycles.** The module graph has no cycle (the test names the modules of
  the first one it finds).
- **Downwards only.** A module imports modules of its own layer or of lower
  ones, never of a higher one.
- **Private modules stay home.** A private module (``_name``, and anything
  inside a private package) of package ``P`` may be imported only by modules
  of ``P`` and of its subpackages: ``server/`` and the clients share
  ``connecteur._socket``, but nothing outside ``server/`` imports
  ``server._engine``. A layer whose description says "(public names only)"
  (the programs built on the library: bench, the command line) may import the
  private modules of its own package only, so it proves the public surface is
  enough.
- **Engines are leaves.** The engine modules of ``server/`` never import one
  another, and ``server/``'s private modules never import an engine: what two
  engines share lives in a private module both import.

What counts as an import: every ``import`` and ``from ... import`` anywhere in
a module (at its top, inside functions, under ``if TYPE_CHECKING:``), since a
type named in an annotation is as much a dependency as a call. ``from P import
name`` is an import of the module ``P.name`` when that module exists, else of
``P``. Importing ``P.Q.m`` also runs ``P.Q/__init__``, so it counts as an
import of ``P.Q`` as well, unless the importer is inside ``P.Q`` (then it
already ran). Imports made from strings (``importlib.import_module``) are not
seen; the command line loads its own subcommands that way.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src"
PACKAGE = "connecteur"
README = ROOT / "README.md"

ENGINES = frozenset(f"{PACKAGE}.server.{name}" for name in ("select", "asyncio", "threads", "processes", "workers"))
"""The engine modules of ``server/``."""

PUBLIC_ONLY = "(public names only)"
"""Marks, in a layer's description, a layer that may not import another package's private modules."""


@dataclass(frozen=True)
class Layer:
    """One line of the README's layer list."""

    rank: int  # 0 is the lowest
    prefixes: tuple[str, ...]  # dotted module names; a package's covers its modules
    public_only: bool
    line: str


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to a module of the package."""

    importer: str
    target: str
    line: int


def read_layers() -> list[Layer]:
    """The README's layer list, lowest layer first."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"The layers \(dependencies point downwards only\):\n\n```\n(.*?)```", text, re.S)
    assert block, "README.md's Design section has no layer list"
    entry = r"[\w.]+/?"
    lines = block.group(1).splitlines()
    layers = []
    for rank, line in enumerate(reversed(lines)):
        match = re.match(rf"({entry}(?:,\s*{entry})*)(?:\s{{2,}}|$)", line)
        assert match, f"not a layer line (modules, two spaces, a description): {line!r}"
        prefixes = tuple(_dotted(name) for name in re.split(r",\s*", match.group(1)))
        layers.append(Layer(rank, prefixes, PUBLIC_ONLY in line, line))
    return layers


def _dotted(entry: str) -> str:
    """``server/`` -> connecteur.server; ``aio.py`` -> connecteur.aio; ``__init__.py`` -> connecteur."""
    name = entry.rstrip("/").removesuffix(".py")
    return PACKAGE if name == "__init__" else f"{PACKAGE}.{name}"


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((SOURCE / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def is_package(name: str, known: dict[str, Path]) -> bool:
    return known[name].name == "__init__.py"


def imports(name: str, known: dict[str, Path]) -> Iterator[Import]:
    """The package's modules that module `name` imports (see the module's description)."""
    tree = ast.parse(known[name].read_text(encoding="utf-8"), filename=str(known[name]))
    here = name if is_package(name, known) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, here)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                for implied in _with_parents(target, name):
                    yield Import(name, implied, node.lineno)


def _absolute(module: str | None, level: int, here: str) -> str:
    if level == 0:
        assert module is not None
        return module
    base = here.rsplit(".", level - 1)[0] if level > 1 else here
    return f"{base}.{module}" if module else base


def _with_parents(target: str, importer: str) -> Iterator[str]:
    """`target`, and the packages above it that importing it runs and `importer` is not inside."""
    yield target
    parts = target.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:end])
        if importer == parent or importer.startswith(parent + "."):
            break
        yield parent


def graph() -> dict[str, list[Import]]:
    known = modules()
    return {name: [i for i in imports(name, known) if i.target != name] for name in known}


def layer_of(name: str, layers: list[Layer]) -> Layer | None:
    """The layer whose longest prefix covers module `name`."""
    best: tuple[int, Layer] | None = None
    for layer in layers:
        for prefix in layer.prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return best[1] if best else None


def is_private(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split(".")[1:])


def private_home(name: str) -> str:
    """The package a private module belongs to: the one holding its first private part."""
    parts = name.split(".")
    first = next(i for i, part in enumerate(parts) if i > 0 and part.startswith("_") and not part.startswith("__"))
    return ".".join(parts[:first])


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# --- the rules -------------------------------------------------------------------------


def test_every_module_is_on_the_layer_list() -> None:
    layers = read_layers()
    missing = [name for name in modules() if layer_of(name, layers) is None]
    assert not missing, f"modules on no line of README.md's layer list: {missing}"
    listed = [prefix for layer in layers for prefix in layer.prefixes]
    unknown = [prefix for prefix in listed if not any(inside(name, prefix) for name in modules())]
    assert not unknown, f"README.md's layer list names modules that do not exist: {unknown}"


def test_no_import_cycle() -> None:
    edges = {name: sorted({i.target for i in found}) for name, found in graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle of `edges` as a path that ends where it starts, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if start in state:
            continue
        path, stack = [start], [iter(edges[start])]
        state[start] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return [*path[path.index(following) :], following]
            elif following not in state and following in edges:
                state[following] = 1
                path.append(following)
                stack.append(iter(edges[following]))
    return None


def test_imports_point_down_the_layers() -> None:
    layers = read_layers()
    wrong = []
    for found in graph().values():
        for i in found:
            low, high = layer_of(i.importer, layers), layer_of(i.target, layers)
            if low is not None and high is not None and high.rank > low.rank:
                wrong.append(f"{i.importer}:{i.line} imports {i.target}, a higher layer ({high.line.split()[0]})")
    assert not wrong, "\n".join(wrong)


def test_private_modules_are_imported_only_from_their_own_package() -> None:
    layers = read_layers()
    wrong = []
    for found in graph().values():
        for i in found:
            if not is_private(i.target):
                continue
            home, layer = private_home(i.target), layer_of(i.importer, layers)
            if not inside(i.importer, home):
                wrong.append(f"{i.importer}:{i.line} imports {i.target}, private to {home}")
            elif layer is not None and layer.public_only and layer_of(home, layers) is not layer:
                wrong.append(f"{i.importer}:{i.line} imports {i.target}, but its layer uses public names only")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_engines_do_not_import_each_other() -> None:
    wrong = []
    for name, found in graph().items():
        engine_or_private = name in ENGINES or (inside(name, f"{PACKAGE}.server") and is_private(name))
        for i in found:
            if engine_or_private and i.target in ENGINES:
                wrong.append(f"{i.importer}:{i.line} imports the engine {i.target}")
    assert not wrong, "\n".join(sorted(set(wrong)))


# --- the checker itself ------------------------------------------------------------------


def test_the_checker_sees_relative_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..server import _engine\n"
        "if TYPE_CHECKING:\n"
        "    from .proxy import Faults\n"
        "def f() -> None:\n"
        "    from ..server.select import SelectEngine\n"
    )
    path = tmp_path / "x.py"
    path.write_text(source)
    known = {**modules(), "connecteur.tools.x": path}
    targets = {i.target for i in imports("connecteur.tools.x", known)}
    assert {"connecteur.server._engine", "connecteur.tools.proxy", "connecteur.server.select"} <= targets
    assert "connecteur.server" in targets  # run on the way to server._engine
    assert "connecteur.tools" not in targets  # the importer's own package has run already


def test_the_cycle_finder_names_the_cycle() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": []}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None


def test_the_private_rule_reads_homes_right() -> None:
    assert private_home("connecteur.server._engine") == "connecteur.server"
    assert private_home("connecteur._socket") == "connecteur"
    assert not is_private("connecteur.server.select")
    assert not is_private("connecteur.__main__")
