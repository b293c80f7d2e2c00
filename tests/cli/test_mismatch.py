"""A client set up otherwise than its server hears about it: on both sides, in one line each."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from connecteur.cli._describe import describe_framing
from connecteur.cli._options import framing_by_name
from tests.cli.test_cli import COMMAND, Served, assert_one_line_error, run, serve_cli
from tests.support import TIMEOUT

__all__ = ["serve_cli"]  # a fixture, used by name


def server_log(served: Served) -> str:
    """Stop the server; return what it wrote on stderr (without -v: WARNING and above)."""
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(TIMEOUT) == 0
    assert served.process.stderr is not None
    return str(served.process.stderr.read())


def test_the_startup_line_names_the_framing_and_the_codec() -> None:
    process = subprocess.Popen(
        [*COMMAND, "serve", "127.0.0.1:0", "--framing", "line", "--codec", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving echo on 127.0.0.1:")
        assert line.endswith(" (framing: lines ending in \\n; codec: json)\n")
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=TIMEOUT)


def test_a_line_server_and_a_length_prefixed_send(serve_cli: Callable[..., Served]) -> None:
    served = serve_cli("--framing", "line")
    result = run("send", served.address, "hi", "there")
    assert_one_line_error(result, 1, "closed the connection cleanly; 2 of 2 messages unanswered")
    assert "framing: 4-byte length prefix" in result.stderr
    (warning,) = server_log(served).splitlines()
    assert warning.startswith("connecteur: closing 127.0.0.1:") and "the stream ended inside a message" in warning


def test_a_json_server_and_a_plain_send(serve_cli: Callable[..., Served]) -> None:
    served = serve_cli("--codec", "json")
    result = run("send", served.address, "[1]", "hi")  # the first one is JSON, the second is not
    assert result.stdout == "[1]\n"
    assert_one_line_error(result, 1, "1 of 2 messages unanswered", "codec: none")
    (warning,) = server_log(served).splitlines()
    assert "CodecError" in warning and "not JSON" in warning


def test_a_line_of_text_to_a_length_prefixed_server_is_named_in_its_log(serve_cli: Callable[..., Served]) -> None:
    served = serve_cli()
    host, port = served.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"hello\n")  # printf 'hello\n' | nc, as a new user tries
        assert sock.recv(1) == b""
    (warning,) = server_log(served).splitlines()
    assert "length header announces 1751477356 bytes" in warning and "the bytes 'hell' look like text" in warning


def test_a_sink_fails_unless_allowed(serve_cli: Callable[..., Served]) -> None:
    served = serve_cli("--app", "discard")
    assert_one_line_error(run("send", served.address, "a"), 1, "1 of 1 messages unanswered")
    assert run("send", served.address, "a", "--allow-unanswered").returncode == 0
    assert server_log(served) == ""  # a sink's peers did nothing wrong


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """A one-connection server on 127.0.0.1 that does what the test says with its connection."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(act: Callable[[socket.socket], None]) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(TIMEOUT)
        listeners.append(listener)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                act(conn)

        threads.append(threading.Thread(target=serve, daemon=True))
        threads[-1].start()
        return f"127.0.0.1:{listener.getsockname()[1]}"

    try:
        yield start
    finally:
        for listener in listeners:
            listener.close()
        for thread in threads:
            thread.join(TIMEOUT)


def reset(conn: socket.socket) -> None:
    conn.settimeout(TIMEOUT)
    conn.recv(100)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST


def test_a_reset_is_told_from_a_clean_close(raw_server: Callable[[Callable[[socket.socket], None]], str]) -> None:
    address = raw_server(reset)
    assert_one_line_error(run("send", address, "x"), 1, f"server {address} reset the connection; 1 of 1")


def test_a_server_that_never_ends_is_a_timeout(raw_server: Callable[[Callable[[socket.socket], None]], str]) -> None:
    done = threading.Event()
    address = raw_server(lambda conn: done.wait(TIMEOUT))  # reads nothing, closes only when the test ends
    try:
        result = run("send", address, "x", "--timeout", "0.5")
    finally:
        done.set()
    assert_one_line_error(result, 1, "did not finish replying within 0.5 s; 1 of 1 messages unanswered")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("length", "4-byte length prefix"),
        ("length:2", "2-byte length prefix"),
        ("line", "lines ending in \\n"),
        ("crlf", "lines ending in \\r\\n"),
        ("netstring", "netstrings"),
        ("fixed:16", "messages of exactly 16 bytes"),
        ("digits:5", "5-digit decimal length prefix"),
        ("close", "one message per connection, ended by the close"),
    ],
)
def test_every_command_line_framing_has_words(name: str, words: str) -> None:
    assert describe_framing(framing_by_name(name)) == words
