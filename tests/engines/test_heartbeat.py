"""Heartbeats on multiplexed connections: a silent peer is closed within interval + deadline, on both sides.

The blackholed link comes from the fault proxy: after a few bytes it forwards
nothing more while both TCP connections stay open, so TCP sees nothing wrong.
Durations are checked against `TIMEOUT` only (a bound no busy machine reaches,
several times the heartbeat's interval + deadline): without heartbeats these
waits would last for ever.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest

import connecteur
from connecteur import ConnectionClosed, Heartbeat, Peer, Server
from connecteur.server._multiplex import HeartbeatWatch
from connecteur.tools.proxy import Faults, Proxy
from tests.engines.conftest import engine_options, engine_per_family
from tests.engines.test_multiplexed import read_envelope, send_envelope
from tests.support import TIMEOUT, wait_until

engine = engine_per_family  # each engine family, not each variant: see FAMILIES

Serve = Callable[..., Server]

BEAT = Heartbeat(interval=0.1, deadline=0.2)

PATIENT_BEAT = Heartbeat(interval=0.1, deadline=0.2 * TIMEOUT / 10)
"""For peers that must stay connected: a busy machine (CONNECTEUR_TEST_TIMEOUT_FACTOR
set) can schedule a forked server's pong later than 0.2 s (0.318 s was seen at a
load average of 17 on 2 cores); the deadline grows with the factor."""

FIRST_EXCHANGE = 4 + 5 + 1
"""Bytes of one request or reply of one payload byte: length header, envelope header, payload."""


class Recorder:
    """A handler that answers and notes when its connection closed (in the serving process)."""

    def __init__(self) -> None:
        self.ended = threading.Event()

    def received(self, peer: Peer, message: bytes) -> bytes:
        return message

    def closed(self, peer: Peer, error: BaseException | None) -> None:
        self.ended.set()


def test_a_client_that_never_answers_pings_is_closed(serve: Serve) -> None:
    server = serve(lambda message: message, multiplexed=True, heartbeat=BEAT)
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        started = time.monotonic()
        kinds = []
        try:
            while True:
                kinds.append(read_envelope(sock)[0])
        except AssertionError:  # read_envelope's "closed"
            pass
        assert kinds and set(kinds) == {5}  # pings, unanswered, then the close
        assert time.monotonic() - started < TIMEOUT


def test_peers_that_answer_stay_connected_however_long_they_are_idle(serve: Serve) -> None:
    """Both sides ping, or only the server (a client without heartbeat still answers pings)."""
    server = serve(lambda message: message, multiplexed=True, heartbeat=PATIENT_BEAT)
    with (
        connecteur.connect(server.address, multiplexed=True, heartbeat=PATIENT_BEAT, timeout=TIMEOUT) as pinging,
        connecteur.connect(server.address, multiplexed=True, timeout=TIMEOUT) as quiet,
    ):
        time.sleep(2 * (PATIENT_BEAT.interval + PATIENT_BEAT.deadline))  # idle through rounds of pings both ways
        assert pinging.request(b"still there") == b"still there"
        assert quiet.request(b"me too") == b"me too"


def test_a_blackholed_link_is_closed_on_both_sides(engine: str) -> None:
    if engine == "processes" or "*" in engine:
        pytest.skip("the handler's closed() runs in another process: the test below covers these engines")
    recorder = Recorder()
    with (
        Server(recorder, "127.0.0.1:0", multiplexed=True, heartbeat=BEAT, **engine_options(engine)) as server,
        Proxy(server.address, blackhole_after=FIRST_EXCHANGE) as proxy,
        connecteur.connect(proxy.address, multiplexed=True, heartbeat=BEAT, timeout=TIMEOUT) as conn,
    ):
        assert conn.request(b"a") == b"a"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed, match="heartbeat"):
            conn.request(b"b")  # never reaches the server; the client's heartbeat ends it
        assert time.monotonic() - started < TIMEOUT
        assert recorder.ended.wait(TIMEOUT)  # and the server's ended its side


def test_a_blackholed_link_is_closed_by_the_server_on_every_engine(serve: Serve) -> None:
    """The client has no heartbeat here: the server's alone closes the connection, and the client sees it."""
    server = serve(lambda message: message, multiplexed=True, heartbeat=BEAT)
    with (
        Proxy(server.address, downstream=Faults(blackhole_after=0)) as proxy,
        socket.create_connection(proxy.address, timeout=TIMEOUT) as sock,
    ):
        send_envelope(sock, 1, 1, b"lost")  # reaches the server; its reply and pings do not come back
        wait_until(lambda: server.stats.accepted == 1, what="the proxied connection open")
        wait_until(lambda: server.stats.active == 0, what="the server closing the silent connection")


def test_the_aio_client_closes_a_blackholed_link() -> None:
    async def main(address: object) -> None:
        with Proxy(address, blackhole_after=FIRST_EXCHANGE) as proxy:
            async with await connecteur.aio.connect(
                proxy.address, multiplexed=True, heartbeat=BEAT, timeout=TIMEOUT
            ) as conn:
                assert await conn.request(b"a") == b"a"
                started = asyncio.get_running_loop().time()
                with pytest.raises(ConnectionClosed, match="heartbeat"):
                    await conn.request(b"b")
                assert asyncio.get_running_loop().time() - started < TIMEOUT

    with Server(lambda message: message, "127.0.0.1:0", multiplexed=True) as server:
        asyncio.run(main(server.address))


def test_a_send_blocked_by_a_server_that_stopped_reading_ends_with_the_heartbeat() -> None:
    """The documented bound for a send: it blocks while the server does not read, until heartbeats end it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn = connecteur.connect(listener.getsockname(), multiplexed=True, heartbeat=BEAT, timeout=TIMEOUT)
        accepted, _ = listener.accept()  # never reads, never answers a ping
        outcome: list[BaseException] = []

        def flood() -> None:
            try:
                while True:
                    conn.send(bytes(2**20))
            except BaseException as exc:
                outcome.append(exc)

        sender = threading.Thread(target=flood)
        try:
            sender.start()
            sender.join(TIMEOUT)
            assert not sender.is_alive()
            assert isinstance(outcome[0], ConnectionClosed) and "heartbeat" in str(outcome[0])
        finally:
            conn.close()
            accepted.close()
            sender.join(TIMEOUT)


def test_a_pinger_whose_watch_stopped_ends_even_if_a_new_watch_started_before_it_woke() -> None:
    """The race, step by step (white-box): the watch stops (no peer left) and wakes its pinger;
    before the pinger runs, a peer comes and starts a new pair. The old pinger must end.

    It once went on waiting beside the new pair's pinger, for ever: a server
    with peers coming and going gathered idle threads (the soak left three).
    """
    watch = HeartbeatWatch(Heartbeat(interval=60, deadline=60))
    with watch._lock:
        watch._running, watch._generation = True, 1
    pinger = threading.Thread(target=watch._ping, args=(1,), name="connecteur-ping", daemon=True)
    pinger.start()
    wait_until(lambda: watch._wake_pinger._waiters, what="the pinger to wait")  # type: ignore[attr-defined]
    with watch._lock:  # as _check finds nobody left, then, before the pinger wakes, as add starts a new pair
        watch._running = False
        watch._wake_pinger.notify_all()
        watch._running, watch._generation = True, 2
    pinger.join(TIMEOUT)
    assert not pinger.is_alive()
