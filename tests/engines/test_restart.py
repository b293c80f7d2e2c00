"""Adopted sockets, socket activation and the zero-downtime restart."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

import connecteur
from connecteur.server.systemd import sockets_from_systemd
from tests.engines.conftest import VARIANTS, engine_options
from tests.support import TIMEOUT, wait_until

COMMAND = [sys.executable, "-m", "connecteur"]

PROBES = 32
"""Connections made during a hand-over: without it, the kernel's hash would send
all of them to the newer server once in 2**32 runs."""

# What systemd does before exec: the socket becomes descriptor 3, LISTEN_PID names
# the process itself (exec keeps the pid). Python, since dash cannot name fd >= 10.
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='app'); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def activate(fd: int, *command: str) -> list[str]:
    return [sys.executable, "-c", ACTIVATE, str(fd), *command]


def upper(message: bytes) -> bytes:
    return message.upper()


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_adopted_listening_socket_is_served_and_closed_at_stop(variant: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = connecteur.Server(upper, sock=listener, **engine_options(variant))
    with server:
        assert server.address[1] == port
        with connecteur.connect(server.address, timeout=TIMEOUT) as conn:
            assert conn.request(b"adopted") == b"ADOPTED"
    assert listener.fileno() == -1


def test_an_adopted_unix_socket_keeps_its_file(tmp_path: object) -> None:
    path = f"{tmp_path}/s.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    with connecteur.Server(upper, sock=listener) as server:
        assert server.address == f"unix:{path}"
        with connecteur.connect(server.address, timeout=TIMEOUT) as conn:
            assert conn.request(b"x") == b"X"
    assert os.path.exists(path)  # it belongs to whoever made the socket (systemd)


def test_sockets_that_cannot_be_adopted_are_refused_clearly() -> None:
    with socket.socket() as unbound, socket.socket(type=socket.SOCK_DGRAM) as datagram:
        with pytest.raises(ValueError, match="not listening"):
            connecteur.Server(upper, sock=unbound)
        with pytest.raises(ValueError, match="not a stream socket"):
            connecteur.Server(upper, sock=datagram)
        with pytest.raises(ValueError, match="not both"):
            connecteur.Server(upper, "127.0.0.1:0", sock=unbound)
    with pytest.raises(ValueError, match="not both"):
        connecteur.Server(upper)


def test_sockets_from_systemd_checks_the_variables() -> None:
    with pytest.raises(ValueError, match="LISTEN_PID and LISTEN_FDS are not set"):
        sockets_from_systemd({})
    with pytest.raises(ValueError, match="is not this process"):
        sockets_from_systemd({"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"}
    with pytest.raises(ValueError, match="positive number"):
        sockets_from_systemd(environ)
    assert environ == {}  # taken, as sd_listen_fds(1) does


def _serve_activated(listener: socket.socket, *, launcher: list[str]) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [*launcher], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=(listener.fileno(),)
    ) as process:
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()


def test_serve_systemd_takes_descriptor_3_as_systemd_passes_it() -> None:
    """The protocol by hand: the socket as descriptor 3, LISTEN_PID naming the service's own process."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    launcher = activate(listener.fileno(), *COMMAND, "serve", "--systemd", "--app", "upper")
    with listener:
        for process in _serve_activated(listener, launcher=launcher):
            assert process.stdout is not None
            assert (
                process.stdout.readline()
                == f"serving upper on 127.0.0.1:{port} (framing: 4-byte length prefix; codec: none)\n"
            )
            with connecteur.connect(("127.0.0.1", port), timeout=TIMEOUT) as conn:
                assert conn.request(b"activated") == b"ACTIVATED"
            process.send_signal(2)
            assert process.wait(TIMEOUT) == 0


def test_serve_systemd_refuses_a_descriptor_that_is_not_listening() -> None:
    with socket.socket() as unbound:
        launcher = activate(unbound.fileno(), *COMMAND, "serve", "--systemd")
        result = subprocess.run(launcher, capture_output=True, text=True, timeout=TIMEOUT, pass_fds=(unbound.fileno(),))
    assert result.returncode == 2
    assert result.stderr.startswith("connecteur: --systemd:") and "not listening" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is not installed")
def test_serve_under_systemd_socket_activate() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", *COMMAND, "serve", "--systemd", "--app", "upper"]
    with subprocess.Popen(launcher, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            # It listens before starting the service, which starts on the first connection.
            assert re.search(r"Listening on", process.stderr.readline())
            with connecteur.connect(("127.0.0.1", port), timeout=TIMEOUT) as conn:
                assert conn.request(b"on demand") == b"ON DEMAND"
        finally:
            process.terminate()
            process.wait(TIMEOUT)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
@pytest.mark.parametrize("engine", ["select", "threads", "asyncio"])
def test_zero_downtime_restart_refuses_nothing_and_loses_no_reply(engine: str) -> None:
    """Clients connect in a loop while a new server takes the port and the old one stops gracefully."""
    old = connecteur.Server(lambda m: b"old:" + m, "127.0.0.1:0", engine=engine, reuse_port=True)
    old.start()
    port = old.address[1]
    new = connecteur.Server(lambda m: b"new:" + m, ("127.0.0.1", port), engine=engine, reuse_port=True)
    outcomes: Counter[str] = Counter()
    failures: list[BaseException] = []
    late: list[bytes] = []  # replies from the old server to connections opened after its stop returned
    stop, old_stopped, count = threading.Event(), threading.Event(), threading.Lock()

    def client() -> None:
        while not stop.is_set():
            opened_after_stop = old_stopped.is_set()
            try:
                with connecteur.connect(("127.0.0.1", port), timeout=TIMEOUT) as conn:
                    reply = conn.request(b"ping")
                if opened_after_stop and reply.startswith(b"old:"):
                    late.append(reply)
                with count:  # eight threads: += on a Counter is not atomic
                    outcomes[reply.split(b":")[0].decode()] += 1
            except (OSError, connecteur.ConnecteurError) as exc:
                failures.append(exc)
                with count:
                    outcomes["failed"] += 1

    clients = [threading.Thread(target=client) for _ in range(8)]
    try:
        for thread in clients:
            thread.start()
        wait_until(lambda: outcomes["old"] >= 200, what="traffic to the old server")
        new.start()
        old.stop(timeout=TIMEOUT)
        old_stopped.set()
        wait_until(lambda: outcomes["new"] >= 200, what="traffic to the new server")
    finally:
        stop.set()
        for thread in clients:
            thread.join(TIMEOUT)
        old.stop()
        new.stop()
    print(f"restart on {engine}: {sum(outcomes.values())} connections, {dict(outcomes)}")
    assert failures == [], failures[:3]
    # None opened after its stop (counting replies at the stop raced with the replies
    # it sent while stopping, whose clients counted them a moment later).
    assert late == []
    assert old.stats.accepted == outcomes["old"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the hand-over is Linux's reuseport BPF")
@pytest.mark.parametrize("engine", ["select", "asyncio"])
def test_once_stop_begins_the_newer_server_gets_every_new_connection(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-over itself, made visible: the old server still listens but cannot accept.

    The test above would pass without the hand-over: its old server closes its
    listener microseconds after its last accept, a window its clients rarely
    hit. Here a handler blocks the old server's loop, so its listener stays open
    while `stop()` waits; connections made then would be spread over both
    sockets by the kernel's hash (about half to each) and the old server's
    would wait in its queue. After the hand-over, every one goes to the new server.
    """
    blocked, release = threading.Event(), threading.Event()

    def old_handler(message: bytes) -> bytes:
        if message == b"block":
            blocked.set()
            release.wait(TIMEOUT)
        return b"old:" + message

    old = connecteur.Server(old_handler, "127.0.0.1:0", engine=engine, reuse_port=True)
    old.start()
    port = old.address[1]
    new = connecteur.Server(lambda m: b"new:" + m, ("127.0.0.1", port), engine=engine, reuse_port=True)
    handed_over = threading.Event()
    hand_over = old._hand_over

    def spy() -> None:  # so that the probes start once the hand-over is done, not by guesswork
        hand_over()
        handed_over.set()

    monkeypatch.setattr(old, "_hand_over", spy)
    stopper = threading.Thread(target=old.stop, kwargs={"timeout": TIMEOUT})
    blocker = connecteur.connect(("127.0.0.1", port), timeout=TIMEOUT)
    probes: list[connecteur.Connection] = []
    try:
        blocker.send(b"block")
        assert blocked.wait(TIMEOUT)
        new.start()
        stopper.start()
        handed_over.wait(TIMEOUT)
        for _ in range(PROBES):
            probes.append(connecteur.connect(("127.0.0.1", port), timeout=TIMEOUT))
            probes[-1].send(b"probe")
        release.set()  # the old server then serves what waits in its queue (a graceful stop)
        replies = Counter(probe.recv().split(b":")[0].decode() for probe in probes)
        assert blocker.recv() == b"old:block"
    finally:
        release.set()
        for conn in [blocker, *probes]:
            conn.close()
        if stopper.ident is not None:
            stopper.join(TIMEOUT)
        old.stop()
        new.stop()
    assert replies == {"new": PROBES}, f"connections made after the hand-over went to the old server: {dict(replies)}"
