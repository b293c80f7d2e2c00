"""Pre-forked workers: every core used, counters added up, no orphan left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from connecteur import Server, connect
from tests.support import TIMEOUT, wait_until


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
        assert re.fullmatch(r"serving echo on \S+:\d+\n", process.stdout.readline())
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
