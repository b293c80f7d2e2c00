"""A SIGTERM stops `serve_forever` even when a thread other than the main one receives it.

The main thread waits in epoll/select; a signal handled by another thread
does not interrupt that wait, and Python runs signal handlers only in the
main thread. Unless the signal also wakes the wait (`signal.set_wakeup_fd`),
the stop waits for the next event, which an idle server may never get.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.engines.conftest import VARIANTS, engine_options
from tests.support import TIMEOUT

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
