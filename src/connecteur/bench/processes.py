"""The processes of `connecteur bench`: a server per target, and the client.

Each is ``python -m connecteur.bench.servers`` or ``python -m
connecteur.bench.client``, started with the directory this connecteur came from first on its path, and
pinned by itself to its CPU (before any thread starts, so every thread and
child inherits it), except a server with several workers: each needs a CPU,
so it is not pinned at all. Stopping is part of each one's context: nothing
outlives the run, even when it fails.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import IO, Final

from .job import IO_TIMEOUT, Figures, Job

__all__ = ["Client", "Server", "ServerFailed", "running_client", "running_servers"]

_READY: Final = re.compile(r"serving (?:echo|fanout) on (\S+):(\d+)")


class ServerFailed(Exception):
    """A server did not start."""


def _python(module: str, cpu: int | None, *args: str) -> list[str]:
    pin = [] if cpu is None else ["--cpu", str(cpu)]
    return [sys.executable, "-m", f"connecteur.bench.{module}", *args, *pin]


def _environment() -> dict[str, str]:
    """This environment, with the directory this connecteur came from first on the path."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


class Server:
    """One target's server process."""

    def __init__(self, target: str, cpu: int | None, stderr: IO[bytes], *options: str) -> None:
        self.target = target
        self._stderr = stderr
        self._proc = subprocess.Popen(
            _python("servers", cpu, target, *options),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_environment(),
            text=True,
        )
        self.pid = self._proc.pid
        self.address: tuple[str, int] = ("", 0)
        self._outcome: str | None = None
        self._terminated = False

    def wait_ready(self) -> None:
        """Wait for the server's "serving" line; `address` is then known.

        Raises:
            ServerFailed: it did not start.
        """
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], IO_TIMEOUT)
        line = self._proc.stdout.readline() if ready else ""
        match = _READY.fullmatch(line.strip())
        if match is None:
            raise ServerFailed(f"the {self.target} server did not start: {self.stop() or repr(line)}")
        self.address = (match[1], int(match[2]))

    def has_exited(self) -> bool:
        return self._proc.poll() is not None

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM), once, without waiting: `stop` waits.

        Once: a second SIGTERM tells connecteur's servers to stop at once, not
        gracefully, and they report the cut-short stop as a failure.
        """
        if self._proc.poll() is None and not self._terminated:
            self._terminated = True
            self._proc.send_signal(signal.SIGTERM)

    def stop(self) -> str:
        """SIGTERM, wait (SIGKILL after a while); return what went wrong, in one line, or "".

        Idempotent: later calls return "".
        """
        if self._outcome is not None:
            return ""
        if self._proc.poll() is None:
            self.terminate()
            try:
                self._proc.wait(IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.seek(0)
        said = self._stderr.read().decode(errors="replace").strip().splitlines()
        status = self._proc.returncode
        # A peer has no SIGTERM handler: killed by it is its normal end.
        clean = status in (0, -signal.SIGTERM) and not said
        self._outcome = "" if clean else f"exit status {status}" + (f": {said[-1]}" if said else "")
        return self._outcome


@contextmanager
def running_servers(
    targets: Sequence[str], cpu: int | None, notes: list[str], *, unpinned: Collection[str] = ()
) -> Iterator[list[Server]]:
    """A server per item of `targets` (a target may come twice), all started at once and stopped on exit.

    Each is pinned to `cpu`, except the `unpinned` targets (those that need
    several CPUs), which start with no CPU given. They start in parallel and
    stop in parallel (SIGTERM to all, then each waited for). What a server
    says on stopping, when it did not stop cleanly, goes to `notes`.

    Raises:
        ServerFailed: a server did not start.
    """
    with ExitStack() as stack:
        servers: list[Server] = []
        for target in targets:
            stderr = stack.enter_context(tempfile.TemporaryFile())
            servers.append(server := Server(target, None if target in unpinned else cpu, stderr))
            stack.callback(_stop, server, notes)
        stack.callback(_terminate_all, servers)  # first on exit
        for server in servers:
            server.wait_ready()
        yield servers


def _terminate_all(servers: list[Server]) -> None:
    for server in servers:
        server.terminate()


def _stop(server: Server, notes: list[str]) -> None:
    if outcome := server.stop():
        notes.append(f"the {server.target} server: {outcome}")


class Client:
    """The client process, running one job at a time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc

    def run(self, job: Job, *, timeout: float) -> tuple[Figures | None, str]:
        """Run `job`; return its result, or None and what went wrong."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps(asdict(job)) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            return None, f"the client exited (status {self._proc.poll()})"
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            self._proc.kill()  # no later job could trust it
            return None, "the client exited" if ready else f"no result within {timeout:.0f} s"
        reply = json.loads(line)
        if "error" in reply:
            return None, str(reply["error"])
        result: Figures = reply["result"]
        return result, ""


@contextmanager
def running_client(cpu: int | None) -> Iterator[Client]:
    """The client process, stopped on exit: the end of its input, or SIGKILL after an exception."""
    proc = subprocess.Popen(
        _python("client", cpu), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_environment(), text=True
    )
    try:
        yield Client(proc)
    except BaseException:
        proc.kill()  # interrupted or failed: its job's outcome no longer matters
        raise
    finally:
        if proc.stdin is not None:
            with suppress(BrokenPipeError):  # it exited already
                proc.stdin.close()
        try:
            proc.wait(IO_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
