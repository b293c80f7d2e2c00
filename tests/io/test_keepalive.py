"""One keepalive setting: `Keepalive`, applied on both clients; a dead link noticed within its bound."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import connecteur
from connecteur import Keepalive, Server
from connecteur._keepalive import as_keepalive
from connecteur.tools.proxy import Faults, Proxy
from tests.support import TIMEOUT

OPTIONS = (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT, socket.TCP_USER_TIMEOUT)
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the option names are Linux's")


def applied(sock: socket.socket) -> tuple[int, ...]:
    """SO_KEEPALIVE, then the keepalive idle, interval, count and user timeout (ms) as the kernel holds them."""
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        *(sock.getsockopt(socket.IPPROTO_TCP, o) for o in OPTIONS),
    )


def test_seconds_are_derived_into_a_bound() -> None:
    setting = Keepalive.within(60)
    assert setting == Keepalive(idle=30, interval=10, count=3, user_timeout=60)
    assert setting.bound == 60
    assert as_keepalive(60) == setting
    assert as_keepalive(None) is None
    assert Keepalive.within(2).bound == 4  # whole seconds: 1 s of silence, then 3 probes 1 s apart


@pytest.mark.parametrize(
    "make",
    [
        lambda: Keepalive(idle=0),
        lambda: Keepalive(interval=float("inf")),
        lambda: Keepalive(count=0),
        lambda: Keepalive(count=True),
        lambda: Keepalive(user_timeout=-1),
        lambda: Keepalive(idle=40_000),
        lambda: Keepalive.within(0),
    ],
)
def test_impossible_settings_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_a_keepalive_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError):
        Server(lambda m: m, "127.0.0.1:0", keepalive="30")  # type: ignore[arg-type]


def test_the_blocking_client_applies_it() -> None:
    with Server(lambda m: m, "127.0.0.1:0") as server:
        setting = Keepalive(idle=7, interval=3, count=4, user_timeout=2.5)
        with connecteur.connect(server.address, keepalive=setting, timeout=TIMEOUT) as conn:
            assert applied(conn._sock) == (1, 7, 3, 4, 2500)
        with connecteur.connect(server.address, keepalive=12, timeout=TIMEOUT) as conn:
            assert applied(conn._sock) == (1, 6, 2, 3, 12000)


def test_the_asyncio_client_applies_it() -> None:
    async def main(address: object) -> tuple[int, ...]:
        conn = await connecteur.aio.connect(address, keepalive=Keepalive(idle=5, interval=2, count=6), timeout=TIMEOUT)
        try:
            return applied(conn._transport.get_extra_info("socket"))
        finally:
            await conn.close()

    with Server(lambda m: m, "127.0.0.1:0") as server:
        default_user_timeout = 0
        assert asyncio.run(main(server.address)) == (1, 5, 2, 6, default_user_timeout)


def test_a_blocked_send_fails_within_the_user_timeout() -> None:
    """The proxy swallows everything: its buffers fill, the window closes, and TCP_USER_TIMEOUT ends the send.

    Without it, the send would wait for the kernel's retransmissions (about
    15 minutes); the bound allows for a busy machine.
    """
    setting = Keepalive(idle=1, interval=1, count=2, user_timeout=1.0)
    with (
        Server(lambda m: None, "127.0.0.1:0") as server,
        Proxy(server.address, upstream=Faults(blackhole_after=0)) as proxy,
        connecteur.connect(proxy.address, keepalive=setting, timeout=None) as conn,
    ):
        start = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            for _ in range(64):  # 256 MiB at most: far more than the kernel and the proxy buffer
                conn.send(b"x" * 2**22)
        assert caught.value.errno == errno.ETIMEDOUT
        assert time.monotonic() - start < TIMEOUT


NAMESPACE_SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys, time
    import connecteur

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    errors = []
    class Handler:
        def received(self, peer, message):
            return message
        def closed(self, peer, error):
            errors.append((time.monotonic(), repr(error)))
    setting = connecteur.Keepalive(idle=1, interval=1, count=2)
    with connecteur.Server(Handler(), "127.0.0.1:0", keepalive=setting, idle_timeout=None) as server:
        conn = connecteur.connect(server.address, keepalive=setting, timeout=None)
        conn.request(b"hello")
        subprocess.run(["ip", "link", "set", "lo", "down"], check=True)  # nothing crosses, nothing is refused
        start = time.monotonic()
        try:
            conn.recv()
        except OSError as exc:
            client = (time.monotonic() - start, exc.errno)
        while not errors and time.monotonic() - start < 30:
            time.sleep(0.01)
        print(json.dumps({"client": client, "server": [errors[0][0] - start, errors[0][1]] if errors else None}))
        server.stop(0)
    """
)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs a user and network namespace (unshare -rn) with ip")
def test_keepalive_probes_end_an_idle_recv_on_both_sides() -> None:
    """In a network namespace of its own, the loopback goes down: probes go unanswered, both ends give up.

    Idle 1 s, then 2 probes 1 s apart: about 3 s, against the 2 h 11 min of
    the kernel's defaults; the bound allows for a busy machine.
    """
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        ["unshare", "-rn", sys.executable, "-c", NAMESPACE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    seconds, code = report["client"]
    assert code == errno.ETIMEDOUT
    assert 2 < seconds < 3 * TIMEOUT
    assert report["server"] is not None and "timed out" in report["server"][1]
    print(f"dead link noticed after {seconds:.2f} s by the client, {report['server'][0]:.2f} s by the server")


def test_aio_serve_applies_it_to_accepted_connections() -> None:
    async def main() -> tuple[int, ...]:
        async with await connecteur.aio.serve(
            lambda m: m, "127.0.0.1:0", keepalive=Keepalive(idle=8, interval=2, count=3)
        ) as server:
            conn = await connecteur.aio.connect(server.address, timeout=TIMEOUT)
            try:
                await conn.request(b"ping")  # accepted and configured by now
                port = conn._transport.get_extra_info("sockname")[1]
                with accepted_socket_with_peer_port(port) as accepted:
                    return applied(accepted)
            finally:
                await conn.close()

    assert asyncio.run(main()) == (1, 8, 2, 3, 0)


def accepted_socket_with_peer_port(port: int) -> socket.socket:
    """This process's TCP socket whose peer is `port` (a duplicate: the same socket, its own descriptor)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if sock.family == socket.AF_INET and sock.getpeername()[1] == port:
                return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError(f"no socket connected to port {port}")
