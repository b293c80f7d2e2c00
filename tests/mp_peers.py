"""Peers from multiprocessing.connection for the authentication tests: in a thread, or a Python 3.12+ subprocess."""

from __future__ import annotations

import glob
import select
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.support import TIMEOUT

__all__ = ["MODERN_PEER_SCRIPT", "PeerThread", "finish", "modern_peer", "modern_python_or_skip", "read_line"]


class PeerThread:
    """Runs `target` in a thread and keeps its result or exception."""

    def __init__(self, target: Callable[[], bytes]) -> None:
        self._target = target
        self._result: bytes | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="multiprocessing peer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._target()
        except BaseException as exc:
            self._error = exc

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the multiprocessing peer did not finish within TIMEOUT"

    def result(self) -> bytes:
        """The target's return value (re-raises its exception)."""
        self.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def error(self) -> BaseException:
        """The exception the target raised (fails the test if it returned)."""
        self.join()
        assert self._error is not None, f"the multiprocessing peer succeeded: {self._result!r}"
        return self._error


MODERN_PEER_SCRIPT = """
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener

role, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
key, message = bytes.fromhex(sys.argv[4]), bytes.fromhex(sys.argv[5])

def send_and_receive(conn):
    conn.send_bytes(message)
    if not conn.poll(timeout):
        sys.exit("no reply from connecteur within the timeout")
    print("reply:", conn.recv_bytes().hex(), flush=True)

try:
    if role == "listener":
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            print("port:", listener.address[1], flush=True)
            with listener.accept() as conn:
                send_and_receive(conn)
    else:
        with Client(("127.0.0.1", port), authkey=key) as conn:
            send_and_receive(conn)
except AuthenticationError as exc:
    print("AuthenticationError:", exc, flush=True)
    sys.exit(3)
"""


def _is_modern_python(python: str) -> bool:
    try:
        result = subprocess.run(
            [python, "-I", "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    # pyenv shims exist for every installed version but exit 127 unless that version is selected.
    return result.returncode == 0 and result.stdout.strip() == "True"


def modern_python_or_skip() -> str:
    """A Python >= 3.12 interpreter (for the `{sha256}` form), or skip the test."""
    candidates = [shutil.which("python3.13"), shutil.which("python3.12")]
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3"), reverse=True)
    for python in candidates:
        if python and _is_modern_python(python):
            return python
    pytest.skip(
        "no Python >= 3.12 (python3.13/python3.12 on PATH or under /root/.pyenv/versions) for the {sha256} form"
    )


@contextmanager
def modern_peer(python: str, role: str, key: bytes, message: bytes, port: int = 0) -> Iterator[subprocess.Popen[str]]:
    """Run `MODERN_PEER_SCRIPT` as a `Listener` or `Client`; killed on the way out if still running.

    Either role sends `message` first, then prints ``reply: <hex>`` of the answer.
    """
    command = [python, "-I", "-c", MODERN_PEER_SCRIPT, role, str(port), str(TIMEOUT), key.hex(), message.hex()]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()


def read_line(proc: subprocess.Popen[str]) -> str:
    """The subprocess's next output line, waiting at most TIMEOUT."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    assert ready, "no output from the Python 3.12+ peer within TIMEOUT"
    return proc.stdout.readline()


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait (bounded) for the subprocess to exit; return its exit code and remaining output."""
    returncode = proc.wait(TIMEOUT)
    assert proc.stdout is not None
    return returncode, proc.stdout.read()
