"""Helpers shared by the tests: bounded waits, cut streams, wire vectors."""

from __future__ import annotations

import ast
import inspect
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

TIMEOUT = 10.0 * float(os.environ.get("CONNECTEUR_TEST_TIMEOUT_FACTOR", "1"))
"""The one unit every wait in the tests is bounded by, in seconds."""

LONG_TESTS = os.environ.get("CONNECTEUR_LONG_TESTS") == "1"
"""Whether to run the soaks and the slowest property tests at full length (opt-in:
the default suite stays within a few minutes on 2 cores)."""


def cuts(data: bytes, draw: st.DataObject, *, max_piece: int = 64) -> Iterator[bytes]:
    """Cut `data` into pieces of 1..max_piece bytes, sizes drawn by Hypothesis."""
    pos = 0
    while pos < len(data):
        size = draw.draw(st.integers(min_value=1, max_value=max_piece), label="piece")
        yield data[pos : pos + size]
        pos += size


def one_byte_at_a_time(data: bytes) -> Iterator[bytes]:
    """Every byte of `data` as its own piece."""
    return (data[i : i + 1] for i in range(len(data)))


def close_while_greeting(
    conn: Any, active: Callable[[], int], greeting: threading.Event, gate: threading.Event, call: Callable[[], object]
) -> list[BaseException]:
    """Close a reconnecting client while another thread's `call` re-dials and its ``on_connect`` waits.

    `call` runs in a thread; once ``on_connect`` on the new link sets
    `greeting` (and waits for `gate` or on its link), `conn` is closed, and
    the server's `active` count must reach 0 before `gate` lets ``on_connect``
    return: the peer saw the link end. Returns what `call` raised.
    """
    failures: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except Exception as exc:
            failures.append(exc)

    caller = threading.Thread(target=run)
    try:
        caller.start()
        assert greeting.wait(TIMEOUT)
        conn.close()
        wait_until(lambda: active() == 0, what="close() to close the link being greeted")
        gate.set()
        caller.join(TIMEOUT)
        assert not caller.is_alive()
    finally:
        gate.set()
        conn.close()
        if caller.ident is not None:
            caller.join(TIMEOUT)
    return failures


def wait_until(condition: Callable[[], object], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def recv_until_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Read a raw socket until the peer closes (or resets); return all it sent."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def child_pids(pid: int) -> set[int]:
    """The live child processes of `pid`, forked by any of its threads (Linux's /proc)."""
    children: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                children.update(int(child) for child in file.read().split())
        except FileNotFoundError:  # that thread ended meanwhile
            continue
    return children


def kill_children(pid: int, count: int, timeout: float = TIMEOUT) -> list[int]:
    """SIGKILL `count` children of `pid` one after another, as they appear; return their pids."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while len(killed) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s killing children: only {killed} appeared")
        for child in child_pids(pid) - set(killed):
            if len(killed) < count:
                os.kill(child, signal.SIGKILL)
                killed.append(child)
        time.sleep(0.005)
    return killed


def _compiled_source(value: Any) -> tuple[Any, ast.Module] | None:
    """`value`'s module and the parsed source shipped beside it, if that module is compiled (else None).

    mypyc's compiled classes, functions and modules carry no docstrings and
    no signatures; the package ships each ``.py`` beside its extension, so
    the checks that read them read the source there, on both builds alike.
    """
    module = value if inspect.ismodule(value) else sys.modules[value.__module__]
    path = Path(module.__file__ or "")
    if not path.name.endswith(tuple(EXTENSION_SUFFIXES)):
        return None
    return module, ast.parse(path.with_name(path.name.split(".")[0] + ".py").read_text())


def _definition(tree: ast.Module, names: list[str]) -> Any:
    node: Any = tree
    for name in names:
        node = next(child for child in node.body if getattr(child, "name", None) == name)
    return node


def docstring(value: Any, member: str | None = None) -> str | None:
    """The docstring of `value` (or of its attribute `member`), as `inspect.getdoc` gives it, on either build."""
    compiled = _compiled_source(value)
    if compiled is None:
        return inspect.getdoc(value if member is None else getattr(value, member))
    module, tree = compiled
    names = [] if value is module else value.__qualname__.split(".")
    return ast.get_docstring(_definition(tree, [*names, *([] if member is None else [member])]))


def parameter_default(value: Any, parameter: str) -> object:
    """The default of `parameter` of function `value` (of a class: of its constructor), on either build."""
    compiled = _compiled_source(value)
    if compiled is None:
        return inspect.signature(value).parameters[parameter].default
    module, tree = compiled
    node = _definition(tree, [*value.__qualname__.split("."), *(["__init__"] if inspect.isclass(value) else [])])
    arguments = node.args
    positional = [*arguments.posonlyargs, *arguments.args]
    with_default = positional[len(positional) - len(arguments.defaults) :]
    defaults = dict(zip([a.arg for a in with_default], arguments.defaults, strict=True))
    keywords = zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
    defaults |= {a.arg: d for a, d in keywords if d is not None}
    return eval(ast.unparse(defaults[parameter]), vars(module))  # a constant or a module's name
