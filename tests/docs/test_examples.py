"""Every program in examples/ runs against live servers on 127.0.0.1 and prints what its page says.

Each example runs in a subprocess with a bounded timeout: once starting its own
server on 127.0.0.1 port 0, and, where it takes an address, against a server
started separately (another example, ``connecteur serve``, or a standard-library
peer we did not write).
"""

from __future__ import annotations

import ast
import functools
import http.server
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
POSIX_SIGNALS = pytest.mark.skipif(sys.platform == "win32", reason="stops the server with SIGINT/SIGTERM")

OWN_SERVER_OUTPUT = {
    "echo_client.py": ["hello", "world", "pipelined 0", "pipelined 1", "pipelined 2"],
    "chat.py": [
        "ann got: * welcome ann; nobody else is here",
        "bob got: * welcome bob; here: ann",
        "ann got: * bob joined",
        "bob got: ann: hello bob",
        "ann got: * bob left",
    ],
    "kv_store.py": ["S apples -> K", "S pears -> K", "G pears -> -3", "D apples -> K", "G apples -> N"],
    "http10.py": ["HTTP/1.0 200 OK", "you asked for /hello"],
    "mp_migration.py": [
        "connection 0: {'sum': 0}",
        "connection 1: {'sum': 45}",
        "connection 2: {'sum': 190}",
        'multiprocessing client: {"sum":6}',
    ],
    "aio_echo.py": ["a much longer message", "short", "bye"],
}
"""What each example prints when it starts its own server, line by line."""

UNORDERED_OUTPUT = {"select_client.py": ["connection 0: HELLO 0", "connection 1: HELLO 1", "connection 2: HELLO 2"]}
"""Examples whose lines come in the order the replies arrive: compared sorted."""

NOT_A_CLIENT = {"echo_server.py", "codec_sizes.py"}
"""Run by the tests below instead: a server that runs until a signal, and the sizes table."""


def run_example(name: str, *args: str) -> list[str]:
    """Run an example to completion; return its output lines (it must exit 0, within TIMEOUT)."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stderr}"
    return result.stdout.splitlines()


@contextmanager
def serving(*command: str, stop: signal.Signals = signal.SIGINT) -> Iterator[tuple[str, list[str]]]:
    """Run a server command that prints "... ADDRESS" first; yield (ADDRESS, lines printed after it).

    On exit, stop it with `stop` and check that it exits 0 within TIMEOUT.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True)
    reader.start()
    later: list[str] = []
    try:
        try:
            first = lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"{command} printed no address within {TIMEOUT} s") from None
        yield re.sub(r" \(framing: .*\)$", "", first.rstrip("\n")).split()[-1], later  # serve names its framing
        process.send_signal(stop)
        assert process.wait(TIMEOUT) == 0, process.stderr.read() if process.stderr else ""
        reader.join(TIMEOUT)
        while not lines.empty():
            later.append(lines.get_nowait().rstrip("\n"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def unused_tcp_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def example(name: str) -> tuple[str, ...]:
    return (sys.executable, str(EXAMPLES / name))


def connecteur_serve(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "connecteur", "serve", "127.0.0.1:0", *args)


# --- every example, on a server of its own -----------------------------------------


def test_every_example_is_run_by_a_test() -> None:
    names = {path.name for path in EXAMPLES.glob("*.py")}
    assert names == set(OWN_SERVER_OUTPUT) | set(UNORDERED_OUTPUT) | NOT_A_CLIENT


@pytest.mark.parametrize("name", sorted(OWN_SERVER_OUTPUT))
def test_example_on_its_own_server(name: str) -> None:
    assert run_example(name) == OWN_SERVER_OUTPUT[name]


@pytest.mark.parametrize("name", sorted(UNORDERED_OUTPUT))
def test_example_on_its_own_server_any_order(name: str) -> None:
    assert sorted(run_example(name)) == UNORDERED_OUTPUT[name]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda path: path.name)
def test_every_example_is_short_and_says_how_to_run_it(path: Path) -> None:
    """At most 40 lines of code (the docstring and blank lines aside), and a docstring with the command."""
    source = path.read_text()
    docstring = ast.parse(source).body[0]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant), "no module docstring"
    assert docstring.end_lineno is not None
    assert f"python examples/{path.name}" in docstring.value.value or path.name == "codec_sizes.py"
    code = [line for n, line in enumerate(source.splitlines(), 1) if line.strip() and n > docstring.end_lineno]
    assert len(code) <= 40, f"{path.name} has {len(code)} lines of code"


# --- examples against servers started separately --------------------------------------


@POSIX_SIGNALS
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda stop: stop.name)
def test_echo_server_and_client(stop: signal.Signals) -> None:
    with serving(*example("echo_server.py"), stop=stop) as (address, after_stop):
        assert address.startswith("127.0.0.1:")
        assert run_example("echo_client.py", address, "un", "deux") == ["un", "deux"] + [
            f"pipelined {n}" for n in range(3)
        ]
    assert after_stop == ["stopped after 5 messages"]


@POSIX_SIGNALS
def test_echo_server_listens_where_it_is_told(unused_tcp_port: int) -> None:
    with serving(*example("echo_server.py"), f"127.0.0.1:{unused_tcp_port}") as (address, _):
        assert address == f"127.0.0.1:{unused_tcp_port}"
        assert run_example("echo_client.py", address, "here")[0] == "here"


@POSIX_SIGNALS
def test_aio_client_against_the_echo_server_example() -> None:
    with serving(*example("echo_server.py")) as (address, _):
        assert run_example("aio_echo.py", address) == OWN_SERVER_OUTPUT["aio_echo.py"]


@POSIX_SIGNALS
def test_kv_store_client_against_its_server() -> None:
    with serving(*example("kv_store.py"), "serve", "127.0.0.1:0") as (address, _):
        assert run_example("kv_store.py", address) == OWN_SERVER_OUTPUT["kv_store.py"]
        # The store outlives connections: a second client finds what the first left.
        assert run_example("kv_store.py", address)[2] == "G pears -> -3"


@POSIX_SIGNALS
def test_chat_against_connecteur_serve() -> None:
    with serving(*connecteur_serve("--app", "chat")) as (address, _):
        assert run_example("chat.py", address) == OWN_SERVER_OUTPUT["chat.py"]


@POSIX_SIGNALS
def test_select_client_against_connecteur_serve() -> None:
    with serving(*connecteur_serve("--app", "upper")) as (address, _):
        assert sorted(run_example("select_client.py", address)) == UNORDERED_OUTPUT["select_client.py"]


def test_http10_against_the_standard_library_http_server(tmp_path: Path) -> None:
    """A peer we did not write: http.server speaks HTTP/1.0 and closes after its reply."""
    (tmp_path / "hello.txt").write_text("hello from http.server\n")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    with http.server.HTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            host, port = httpd.server_address[:2]
            lines = run_example("http10.py", f"{host}:{port}", "/hello.txt")
        finally:
            httpd.shutdown()
            thread.join(TIMEOUT)
    assert lines[0].startswith("HTTP/1.0 200")
    assert lines[-1] == "hello from http.server"


# --- the sizes on the "Sending values" page ---------------------------------------------


def test_codec_sizes_on_the_sending_values_page_are_the_scripts_output() -> None:
    page = (ROOT / "docs" / "guide" / "sending-values.md").read_text()
    rows = run_example("codec_sizes.py")
    assert len(rows) >= 6  # header, rule, and the Struct, Text and two Json rows at least
    for row in rows:
        assert row in page, f"the page lacks this row of examples/codec_sizes.py's output: {row}"
