"""`stop(timeout)` keeps its deadline on every engine, even while a handler blocks.

A handler blocking its engine's loop thread cannot be interrupted in Python:
at the deadline the server shuts the connections down, logs the handler
still running, and `stop()` returns, leaving that thread behind (or killing
the process that runs it, on the forked engines).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from connecteur import Peer, Server
from connecteur.address import format_address
from connecteur.tools.apps import echo
from tests.support import TIMEOUT, recv_until_closed, wait_until

Serve = Callable[..., Server]

BLOCK = TIMEOUT * 6
"""How long the handler blocks: "for ever" to a stop of 0.5 s; bounded, so
that a stop that waits for the handler fails the test instead of hanging it."""


class Blocking:
    """Echoes; on ``block``, marks the file `entered` (seen from any process) and blocks until `release`."""

    def __init__(self, entered: Path, release: threading.Event) -> None:
        self.entered = entered
        self.release = release

    def received(self, peer: Peer, message: bytes) -> bytes:
        if message == b"block":
            self.entered.touch()
            self.release.wait(BLOCK)  # in a forked process, a copy nobody sets
        return message


def test_stop_keeps_its_deadline_while_a_handler_blocks(
    serve: Serve, engine: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="connecteur.server")
    release, entered = threading.Event(), tmp_path / "entered"
    server = serve(Blocking(entered, release))
    try:
        with socket.create_connection(server.address, timeout=TIMEOUT) as client:
            client.sendall(server.framing.encode(b"block"))
            wait_until(entered.exists, what="the handler to block")
            started = time.monotonic()
            server.stop(timeout=0.5)
            took = time.monotonic() - started
            # The handler still blocks (release is set only below); a stop that waited
            # for it would have taken BLOCK: TIMEOUT is a bound no busy machine reaches.
            assert not release.is_set() and took < TIMEOUT, took
            assert recv_until_closed(client) == b""  # the client saw its connection end
            peer = format_address(client.getsockname())
            with pytest.raises(OSError):  # and the server listens no more
                socket.create_connection(server.address, timeout=TIMEOUT).close()
        if engine != "select*2":  # a worker logs in its own process: see test_signals.py
            logged = [message for message in caplog.messages if peer in message]
            assert any("stop deadline passed with handler tests.engines.test_stop.Blocking" in m for m in logged)
    finally:
        release.set()


def test_a_stuck_thread_ends_cleanly_once_its_handler_returns(
    serve: Serve, engine: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The thread left behind closes what is left when the handler returns, without errors."""
    if engine in ("processes", "select*2"):
        pytest.skip("the process running the handler is killed: nothing is left behind")
    release, entered = threading.Event(), tmp_path / "entered"
    server = serve(Blocking(entered, release))
    try:
        with socket.create_connection(server.address, timeout=TIMEOUT) as client:
            client.sendall(server.framing.encode(b"block"))
            wait_until(entered.exists, what="the handler to block")
            left = [thread for thread in threading.enumerate() if thread.name.startswith("connecteur")]
            server.stop(timeout=0.1)
            release.set()
            wait_until(
                lambda: not any(thread.is_alive() for thread in left),
                what=f"the threads left behind to end ({', '.join(thread.name for thread in left)})",
            )
            assert recv_until_closed(client) == b""  # its late reply went nowhere
    finally:
        release.set()
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_a_stop_with_an_earlier_deadline_hurries_one_under_way(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """What a second signal does: the engine closes what is left now, not at the first deadline."""
    caplog.set_level(logging.WARNING, logger="connecteur.server")
    server = serve(echo)
    with socket.create_connection(server.address, timeout=TIMEOUT) as client:  # idle: it holds the graceful stop
        first = threading.Thread(target=server.stop, args=(BLOCK,))
        first.start()
        try:

            def refused() -> bool:  # the first stop is under way: the listener is closed
                # At most 5 probes a second, each given 1 s: every probe the listener takes is a
                # connection the stop drains (a fork each on the processes engine), and a probe
                # stuck in a full backlog must not spend the whole wait.
                time.sleep(0.2)
                try:
                    socket.create_connection(server.address, timeout=1.0).close()
                except (ConnectionRefusedError, ConnectionResetError):  # reset: caught as it closed
                    return True
                except TimeoutError:
                    return False
                return False

            wait_until(refused, what="the first stop to begin")
            server.stop(timeout=0)
            assert recv_until_closed(client) == b""  # closed by the engine, before the first deadline
            first.join(TIMEOUT)
            assert not first.is_alive()
        finally:
            server.stop(timeout=0)
            first.join(TIMEOUT)
    assert not [message for message in caplog.messages if "stop deadline passed" in message]  # none given up on


def test_stop_keeps_its_deadline_while_a_reply_waits_for_a_peer_that_does_not_read(
    serve: Serve, tmp_path: Path
) -> None:
    """A reply stuck in a blocking send (threads, processes) ends at the deadline: the shutdown does not wait for it."""
    answered = tmp_path / "answered"

    def large(message: bytes) -> bytes:
        answered.touch()  # seen from any process
        return b"x" * (8 * 2**20)

    server = serve(large)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(TIMEOUT)
        client.connect(server.address)
        client.sendall(server.framing.encode(b"go") * 4)  # 32 MiB of replies, never read
        wait_until(answered.exists, what="the requests to be answered")
        started = time.monotonic()
        server.stop(timeout=0.5)
        assert time.monotonic() - started < TIMEOUT  # a generous bound: without the fix, it never ends
        assert server.stats.active == 0  # closed by the engine, not left behind
