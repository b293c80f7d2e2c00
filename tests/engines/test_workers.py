"""Pre-forked workers: every core used, counters added up, no orphan left behind, the dead replaced."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from connecteur import Connection, Server, WorkersFailed, connect
from connecteur.server.workers import DEATH_WINDOW, MAX_DEATHS, RESTART_BACKOFF_MAX, _Slot
from tests.support import TIMEOUT, child_pids, kill_children, wait_until

QUEUED = 32
"""Connections made while a worker cannot accept: the kernel's hash leaves none
in its queue once in 2**32 runs."""


def whoami(message: bytes) -> bytes:
    return b"%d" % os.getpid()


@pytest.mark.parametrize("engine", ["select", "asyncio"])
def test_connections_spread_over_the_workers_and_stats_add_up(engine: str) -> None:
    with Server(whoami, "127.0.0.1:0", engine=engine, workers=2) as server:
        conns = [connect(server.address, timeout=TIMEOUT) for _ in range(40)]
        try:
            pids = {int(conn.request(b"who")) for conn in conns}
        finally:
            for conn in conns:
                conn.close()
        assert len(pids) == 2 and os.getpid() not in pids
        wait_until(lambda: server.stats.messages_out == 40 and server.stats.active == 0, what="the workers' reports")
        assert (server.stats.accepted, server.stats.errors) == (40, 0)
    assert all(_is_gone(pid) for pid in pids)


def _is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_workers_need_the_select_engine() -> None:
    with pytest.raises(ValueError, match="workers"):
        Server(whoami, "127.0.0.1:0", engine="threads", workers=2)
    with pytest.raises(ValueError, match="workers"):
        Server(whoami, "127.0.0.1:0", workers=0)


def test_workers_stop_when_their_parent_is_killed() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "connecteur", "serve", "127.0.0.1:0", "--workers", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert re.fullmatch(r"serving echo on \S+:\d+ \(framing: [^;]+; codec: [^)]+\)\n", process.stdout.readline())
        workers: list[int] = []

        def forked() -> bool:
            # Every thread's children: the engine, so the forks, run in a thread beside the main one.
            workers[:] = [
                int(pid)
                for task in Path(f"/proc/{process.pid}/task").iterdir()
                for pid in (task / "children").read_text().split()
            ]
            return len(workers) == 2

        wait_until(forked, what="two workers")
        process.send_signal(signal.SIGKILL)  # no graceful stop: the workers must notice alone
        process.wait(TIMEOUT)
        wait_until(lambda: all(_is_gone(pid) for pid in workers), what="orphaned workers to exit")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def _workers(count: int, *, gone: int = 0) -> set[int]:
    """This process's `count` workers, once they are all forked (and the worker `gone` reaped)."""
    pids: set[int] = set()

    def forked() -> bool:
        pids.clear()
        pids.update(child_pids(os.getpid()))
        return len(pids) == count and gone not in pids

    wait_until(forked, what=f"{count} workers")
    return pids


def _connection_to(server: Server, pid: int) -> tuple[Connection, int]:
    """A connection served by the worker `pid` (the kernel picks: try until it does), and the tries."""
    for tries in range(1, 1001):
        conn = connect(server.address, timeout=TIMEOUT)
        if int(conn.request(b"who")) == pid:
            return conn, tries
        conn.close()
    raise AssertionError(f"no connection reached worker {pid} in 1,000 tries")


@pytest.mark.parametrize("engine", ["select", "asyncio"])
def test_a_killed_worker_is_replaced_and_its_counts_kept(engine: str, caplog: pytest.LogCaptureFixture) -> None:
    with Server(whoami, "127.0.0.1:0", engine=engine, workers=2) as server:
        victim, survivor = sorted(_workers(2))
        held, requests = _connection_to(server, victim)  # open when its worker dies: it counts as an error
        wait_until(lambda: (server.stats.active, server.stats.messages_out) == (1, requests), what="the reports")
        before = server.stats
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replacement = (_workers(2, gone=victim) - {survivor}).pop()
        print(f"{engine}: worker replaced {1000 * (time.monotonic() - killed_at):.0f} ms after SIGKILL")
        held.close()
        restarted = (0, 1)  # active, worker_restarts
        wait_until(lambda: (server.stats.active, server.stats.worker_restarts) == restarted, what="the replacement")
        stats = server.stats
        assert stats.errors == before.errors + 1
        assert (stats.accepted, stats.messages_out) == (before.accepted, before.messages_out)  # none lost
        conn, requests = _connection_to(server, replacement)  # the replacement serves the port
        conn.close()
        wait_until(lambda: server.stats.messages_out == before.messages_out + requests, what="new reports")
    (record,) = [r for r in caplog.records if "replacing" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.name == "connecteur.server"
    assert record.getMessage() == f"worker 0 (pid {victim}) was killed by SIGKILL; replacing it now"


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="without SO_REUSEPORT, workers share one queue")
def test_connections_queued_for_a_killed_worker_are_served_by_its_replacement() -> None:
    """The parent keeps each worker's listening socket: what waits in a dead worker's queue is not reset."""
    with Server(whoami, "127.0.0.1:0", workers=2) as server:
        victim, survivor = sorted(_workers(2))
        os.kill(victim, signal.SIGSTOP)  # it accepts nothing: its share of the connections waits in its queue
        conns = []
        try:
            for _ in range(QUEUED):
                conns.append(connect(server.address, timeout=TIMEOUT))
                conns[-1].send(b"who")
        finally:
            os.kill(victim, signal.SIGKILL)
        try:
            replies = Counter(int(conn.recv()) for conn in conns)
        finally:
            for conn in conns:
                conn.close()
        (replacement,) = _workers(2, gone=victim) - {survivor}
    assert replies.keys() == {survivor, replacement}, replies


def test_workers_that_keep_dying_stop_serve_forever_with_an_error() -> None:
    server = Server(whoami, "127.0.0.1:0", workers=2)
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        killed = kill_children(os.getpid(), MAX_DEATHS)
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    finally:
        server.stop()
        thread.join(TIMEOUT)
    (failure,) = failures
    assert isinstance(failure, WorkersFailed) and failure.deaths == MAX_DEATHS
    assert re.fullmatch(
        rf"5 workers died within 10 s; the last, worker \d \(pid {killed[-1]}\), was killed by SIGKILL", str(failure)
    )
    # Every worker killed after the first two was a replacement; the other slot's may have started too.
    assert server.stats.worker_restarts in (MAX_DEATHS - 2, MAX_DEATHS - 1)
    assert child_pids(os.getpid()) == set()


def test_a_background_server_whose_workers_keep_dying_raises_from_stop() -> None:
    server = Server(whoami, "127.0.0.1:0", workers=2)
    server.start()
    try:
        kill_children(os.getpid(), MAX_DEATHS)
        wait_until(lambda: not child_pids(os.getpid()), what="the server to give up")
    finally:
        with pytest.raises(WorkersFailed, match="5 workers died within 10 s"):
            server.stop()
    server.stop()  # raised once: stop() stays idempotent


def test_a_slot_waits_longer_after_each_early_death_and_not_after_a_long_life() -> None:
    with socket.socket() as listener:
        slot = _Slot(listener)
        delays = []
        for now in range(1, 9):  # each worker dies a second after it started
            delays.append(slot.died(float(now)))
            slot.started = float(now)
        assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, RESTART_BACKOFF_MAX, RESTART_BACKOFF_MAX, RESTART_BACKOFF_MAX]
        assert slot.died(slot.started + DEATH_WINDOW) == 0.0  # it had served long enough: a first death again
