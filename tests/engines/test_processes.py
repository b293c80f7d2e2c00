"""What only the processes engine promises: isolation, reaping, and stopping its children."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import connecteur
from connecteur import ConnectionClosed, Server, connect
from connecteur.tools.apps import echo
from tests.support import TIMEOUT, wait_until


def pid_and_crash(message: bytes) -> bytes:
    if message == b"crash":
        os._exit(3)  # the child dies without a word
    return b"%d" % os.getpid()


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False  # still running, or a zombie nobody reaped


def test_each_connection_gets_its_own_process_and_every_child_is_reaped() -> None:
    with Server(pid_and_crash, "127.0.0.1:0", engine="processes") as server:
        with connect(server.address, timeout=TIMEOUT) as a, connect(server.address, timeout=TIMEOUT) as b:
            pids = {int(a.request(b"pid")), int(b.request(b"pid"))}
            assert int(a.request(b"pid")) in pids
        assert len(pids) == 2 and os.getpid() not in pids
        wait_until(lambda: server.stats.active == 0, what="both connections closed")
        assert all(is_gone(pid) for pid in pids)
        stats = server.stats
        assert (stats.accepted, stats.messages_in, stats.messages_out, stats.errors) == (2, 3, 3, 0)


def test_a_crashing_child_affects_only_its_connection() -> None:
    with Server(pid_and_crash, "127.0.0.1:0", engine="processes") as server:
        with connect(server.address, timeout=TIMEOUT) as bystander, connect(server.address, timeout=TIMEOUT) as victim:
            victim.send(b"crash")
            try:
                victim.recv()
                raise AssertionError("the crashed child replied")
            except (ConnectionClosed, ConnectionResetError):
                pass
            assert bystander.request(b"pid").isdigit()
        wait_until(lambda: server.stats.active == 0, what="both connections closed")
        assert server.stats.errors == 1


def test_a_child_does_not_hold_the_parents_unrelated_sockets() -> None:
    """A test's own socket, open in the parent at fork time, must not stay open in a child."""
    with Server(pid_and_crash, "127.0.0.1:0", engine="processes") as server:
        mine, theirs = socket.socketpair()
        try:
            with connect(server.address, timeout=TIMEOUT) as conn:
                assert conn.request(b"pid").isdigit()  # a child now exists
                mine.close()
                theirs.settimeout(TIMEOUT)
                assert theirs.recv(1) == b""  # EOF: no child kept a copy of `mine`
        finally:
            mine.close()
            theirs.close()


def _children_of(pid: int) -> set[int]:
    children: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as file:
            children.update(int(p) for p in file.read().split())
    return children


def test_sigterm_to_the_parent_stops_the_children_and_exits_zero() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "connecteur", "serve", "127.0.0.1:0", "--engine", "processes"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        match = re.fullmatch(
            r"serving echo on (\S+):(\d+) \(framing: [^;]+; codec: [^)]+\)\n", process.stdout.readline()
        )
        assert match
        with connect((match.group(1), int(match.group(2))), timeout=TIMEOUT) as conn:
            assert conn.request(b"hello") == b"hello"
            children = _children_of(process.pid)
            assert len(children) == 1
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            # The idle client keeps its connection open: the stop deadline ends it.
            try:
                conn.recv()
                raise AssertionError("a message after the stop")
            except (ConnectionClosed, ConnectionResetError):
                pass
            assert process.wait(TIMEOUT) == 0
            assert time.monotonic() - started < TIMEOUT
        wait_until(lambda: all(is_gone(pid) for pid in children), what="the child to be gone")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


@pytest.mark.skipif(connecteur.COMPILED, reason="compiled, Session is native: patching its start() reaches no engine")
def test_a_child_stuck_in_its_handshake_is_ended_by_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child stuck where no timeout of ours runs (a lock inherited from the fork, in C) still ends.

    The stall is simulated by a handshake that sleeps for a minute; the
    child, forked with this patch, must be ended by SIGALRM at about
    handshake_timeout + 1 s, and reported as a child that died.
    """
    from connecteur.server._session import Session

    monkeypatch.setattr(Session, "start", lambda self: time.sleep(60))
    server = Server(pid_and_crash, "127.0.0.1:0", engine="processes", auth_key=b"k", handshake_timeout=0.5)
    with server, socket.create_connection(server.address[:2], timeout=TIMEOUT) as client:
        started = time.monotonic()
        wait_until(lambda: server.stats.errors == 1, timeout=TIMEOUT, what="the stuck child ended and counted")
        assert time.monotonic() - started < 0.5 + 1 + TIMEOUT / 2
        assert server.stats.active == 0
        assert client.recv(1) == b""


def test_a_child_terminated_as_it_starts_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM at the stop deadline can reach a child just forked: it waits until the child's handler is in place."""
    caplog.set_level(logging.ERROR, logger="connecteur.server")
    server = Server(echo, "127.0.0.1:0", engine="processes")
    server.start()
    clients = [socket.create_connection(server.address, timeout=TIMEOUT) for _ in range(20)]
    try:
        server.stop(timeout=0)  # the backlog's connections are forked, then terminated at once
    finally:
        for client in clients:
            client.close()
    assert [record.getMessage() for record in caplog.records] == []
    assert server.stats.errors == 0


def test_a_child_writes_its_standard_streams_to_descriptors_1_and_2(tmp_path: Path) -> None:
    """sys.stderr replaced by a file on another descriptor (as pytest's capture does): after
    become_child closed that descriptor, the child's stderr is descriptor 2 again, so a socket
    that reuses the number never receives the child's log lines."""
    from connecteur.server._fork import become_child

    reader, writer = os.pipe()
    replaced = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 - closed in the finally
    saved = sys.stderr
    sys.stderr = replaced
    pid = os.fork()
    if pid == 0:  # the child: report the descriptors its streams now write to
        try:
            become_child(keep={writer})
            os.write(writer, f"{sys.stdout.fileno()} {sys.stderr.fileno()}".encode())
        finally:
            os._exit(0)
    sys.stderr = saved
    try:
        os.close(writer)
        report = os.read(reader, 100).decode()
    finally:
        os.close(reader)
        os.waitpid(pid, 0)
        replaced.close()
    assert report == "1 2"
