"""A SIGTERM stops `serve_forever` even when a thread other than the main one receives it.

The main thread waits in epoll/select; a signal handled by another thread
does not interrupt that wait, and Python runs signal handlers only in the
main thread. Unless the signal also wakes the wait (`signal.set_wakeup_fd`),
the stop waits for the next event, which an idle server may never get.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connecteur.address import format_address
from connecteur.framing import LengthPrefixed
from tests.engines.conftest import VARIANTS, engine_options
from tests.support import TIMEOUT, recv_until_closed, wait_until

SCRIPT = """
import json, signal, sys, threading
from connecteur import Server
from connecteur.tools.apps import echo

release = threading.Event()
helper = threading.Thread(target=release.wait)  # started before the mask: the only thread taking SIGTERM
helper.start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
server = Server(echo, "127.0.0.1:0", **json.loads(sys.argv[1]))
try:
    server.serve_forever(ready=lambda: print("ready", flush=True))
finally:
    release.set()
print("stopped", flush=True)
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_sigterm_taken_by_another_thread_stops_an_idle_server(variant: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(engine_options(variant))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT)
        assert (process.returncode, out, err) == (0, "stopped\n", "")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


RESTORE_SCRIPT = """
import json, signal, socket, sys, threading
from connecteur import Server
from connecteur.tools.apps import echo

mine, _ = socket.socketpair()
mine.setblocking(False)
signal.set_wakeup_fd(mine.fileno())  # the application's own, as asyncio's add_signal_handler sets one
server = Server(echo, "127.0.0.1:0", **json.loads(sys.argv[1]))
threading.Timer(0.2, server.stop).start()
server.serve_forever()
print(signal.set_wakeup_fd(-1) == mine.fileno(), flush=True)
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_forever_gives_the_wakeup_fd_back(variant: str) -> None:
    """While serving, the engine's wake-up socket is the wakeup fd; after, the application's is again."""
    result = subprocess.run(
        [sys.executable, "-c", RESTORE_SCRIPT, json.dumps(engine_options(variant))],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "True\n", "")


BLOCKED_SCRIPT = """
import json, logging, pathlib, sys, threading
from connecteur import Server

logging.basicConfig(format="%(message)s")


class Blocking:
    def received(self, peer, message):
        pathlib.Path(sys.argv[2]).touch()
        threading.Event().wait(float(sys.argv[3]))  # "for ever": nothing sets it
        return message


server = Server(Blocking(), "127.0.0.1:0", stop_timeout=0.5, **json.loads(sys.argv[1]))
server.serve_forever(ready=lambda: print(server.address[1], flush=True))
print("stopped", flush=True)
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_forever_returns_at_the_stop_deadline_while_a_handler_blocks(variant: str, tmp_path: Path) -> None:
    """One SIGTERM: the stop gives up on the blocked handler at its deadline, logs it, and serve_forever returns."""
    entered = tmp_path / "entered"
    block = TIMEOUT * 6  # a stop that waited for the handler would outlast communicate() below
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_SCRIPT, json.dumps(engine_options(variant)), str(entered), str(block)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(LengthPrefixed().encode(b"block"))
            wait_until(entered.exists, what="the handler to block")
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=TIMEOUT)
            assert (process.returncode, out) == (0, "stopped\n"), err
            assert recv_until_closed(client) == b""
            peer = format_address(client.getsockname())
        assert "stop deadline passed with handler __main__.Blocking" in err and peer in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


FORCED_SCRIPT = """
import json, sys
from connecteur import Server
from connecteur.tools.apps import echo

server = Server(echo, "127.0.0.1:0", stop_timeout=float(sys.argv[2]), **json.loads(sys.argv[1]))
try:
    server.serve_forever(ready=lambda: print(server.address[1], flush=True))
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda stop: stop.name)
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_second_signal_ends_the_stop_at_once(variant: str, stop: signal.Signals) -> None:
    """The first signal starts a graceful stop, held by an idle client; the second ends it now.

    Once everything is closed, the second signal takes its default course:
    SIGINT raises KeyboardInterrupt, SIGTERM ends the process.
    """
    grace = TIMEOUT * 6  # the graceful stop would outlast communicate() below
    process = subprocess.Popen(
        [sys.executable, "-c", FORCED_SCRIPT, json.dumps(engine_options(variant)), str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            process.send_signal(stop)

            def refused() -> bool:  # the graceful stop has begun: the listener is closed
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
                except (ConnectionRefusedError, ConnectionResetError):  # reset: caught as it closed
                    return True
                # Each probe lands in the backlog, which the stop drains (forking a child
                # each on the processes engine) before it closes the listener: probing
                # faster than a busy machine forks would hold the listener open.
                time.sleep(0.2)
                return False

            wait_until(refused, what="the graceful stop to begin")
            process.send_signal(stop)
            out, err = process.communicate(timeout=TIMEOUT)
            assert recv_until_closed(client) == b""
        if stop == signal.SIGINT:
            assert (process.returncode, out, err) == (0, "KeyboardInterrupt\n", "")
        else:
            assert (process.returncode, out, err) == (-signal.SIGTERM, "", "")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
