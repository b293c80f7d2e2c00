"""Reconnecting clients: back-off, on_connect, and no message ever executed twice unless retry=True."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import connecteur
from connecteur import Backoff, ConnectionClosed, Server, Timeout
from connecteur.tools.proxy import Faults, Proxy
from tests.support import TIMEOUT, close_while_greeting, wait_until
from tests.tls_support import make_pki

FAST = Backoff(initial=0.01, factor=2, maximum=0.1)
STOP = 0.2
"""Seconds a stop waits for the clients still connected: these tests' clients wait for nothing."""


class Executions:
    """A handler that counts how often each request was executed; ``drop:`` requests close the link unanswered once."""

    def __init__(self) -> None:
        self.count: Counter[bytes] = Counter()
        self.lock = threading.Lock()

    def received(self, peer: connecteur.Peer, message: bytes) -> bytes | None:
        with self.lock:
            self.count[message] += 1
            first = self.count[message] == 1
        if message.startswith(b"drop:") and first:
            peer.close()  # executed, never answered: the link dies with the request in flight
            return None
        return b"done " + message


@pytest.fixture
def executions() -> Executions:
    return Executions()


@pytest.fixture
def server(executions: Executions) -> Iterator[Server]:
    with Server(executions, "127.0.0.1:0") as running:
        yield running


def test_backoff_waits_grow_to_the_maximum_with_jitter() -> None:
    plain = Backoff(initial=0.5, factor=3, maximum=5, jitter=0)
    delays = plain.delays()
    assert [next(delays) for _ in range(5)] == [0.5, 1.5, 4.5, 5, 5]
    spread = Backoff(initial=1, factor=1, maximum=1, jitter=0.5).delays(random.Random(1).random)
    waits = [next(spread) for _ in range(100)]
    assert all(0.5 <= wait <= 1.5 for wait in waits)
    assert len(set(waits)) > 90


@pytest.mark.parametrize(
    "options",
    [
        {"initial": 0},
        {"factor": 0.5},
        {"initial": 2, "maximum": 1},
        {"attempts": 0},
        {"jitter": 1.5},
        {"attempts": True},
    ],
)
def test_impossible_backoffs_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**options)


def test_on_connect_needs_reconnect(server: Server) -> None:
    with pytest.raises(ValueError, match="on_connect"):
        connecteur.connect(server.address, on_connect=lambda conn: None)


def test_a_restarted_server_is_reached_again_and_on_connect_runs_on_each_link(executions: Executions) -> None:
    greeted: list[object] = []
    first = Server(executions, "127.0.0.1:0")
    first.start()
    port = first.address[1]
    try:
        conn = connecteur.connect(
            first.address,
            timeout=TIMEOUT,
            reconnect=FAST,
            on_connect=lambda link: greeted.append(link.request(b"hello")),
        )
        with conn:
            assert conn.request(b"one") == b"done one"
            first.stop(STOP)
            # The same port, bound again (SO_REUSEADDR): the old connections' TIME_WAIT does not stop it.
            second = Server(executions, f"127.0.0.1:{port}")
            second.start()
            try:
                assert conn.request(b"two") == b"done two"
            finally:
                second.stop(STOP)
            assert (conn.connects, conn.reconnects) == (2, 1)
    finally:
        first.stop(STOP)
    assert greeted == [b"done hello", b"done hello"]
    assert executions.count == Counter({b"hello": 2, b"one": 1, b"two": 1})


def test_the_first_connection_is_attempted_again_until_the_server_listens(executions: Executions) -> None:
    probe = Server(executions, "127.0.0.1:0")
    probe.start()
    port = probe.address[1]
    probe.stop(STOP)
    later = Server(executions, f"127.0.0.1:{port}")
    starter = threading.Timer(0.3, later.start)
    starter.start()
    try:
        with connecteur.connect(f"127.0.0.1:{port}", timeout=TIMEOUT, reconnect=FAST) as conn:
            assert conn.request(b"late") == b"done late"
            assert conn.failed_attempts >= 1
    finally:
        starter.join()
        later.stop(STOP)


def test_a_request_in_flight_when_the_link_dies_raises_and_is_never_sent_again(
    server: Server, executions: Executions
) -> None:
    with connecteur.connect(server.address, timeout=TIMEOUT, reconnect=FAST) as conn:
        with pytest.raises(ConnectionClosed, match="in flight"):
            conn.request(b"drop:1")
        assert conn.request(b"next") == b"done next"  # a new link, at once
        assert (conn.interrupted, conn.resent, conn.reconnects) == (1, 0, 1)
    assert executions.count[b"drop:1"] == 1


def test_retry_true_sends_it_again(server: Server, executions: Executions) -> None:
    with connecteur.connect(server.address, timeout=TIMEOUT, reconnect=FAST) as conn:
        assert conn.request(b"drop:2", retry=True) == b"done drop:2"
        assert (conn.interrupted, conn.resent) == (0, 1)
    assert executions.count[b"drop:2"] == 2


def test_the_timeout_bounds_the_whole_call_with_its_redials(executions: Executions) -> None:
    """The server is gone for good: each call gives up at its deadline, well before the 60 s we'd otherwise wait."""
    server = Server(executions, "127.0.0.1:0")
    server.start()
    try:
        conn = connecteur.connect(server.address, timeout=0.5, reconnect=Backoff(initial=0.05, maximum=0.2))
    finally:
        server.stop(STOP)
    with conn:
        start = time.monotonic()
        with pytest.raises(Timeout, match="could not connect"):
            conn.request(b"nobody")
        assert time.monotonic() - start < TIMEOUT
        assert conn.failed_attempts >= 1


def test_attempts_run_out_then_the_client_is_closed(executions: Executions) -> None:
    server = Server(executions, "127.0.0.1:0")
    server.start()
    try:
        conn = connecteur.connect(server.address, timeout=TIMEOUT, reconnect=Backoff(initial=0.01, attempts=3))
    finally:
        server.stop(STOP)
    with pytest.raises(ConnectionRefusedError):
        conn.request(b"nobody")
    assert conn.failed_attempts == 3 and conn.is_closed
    with pytest.raises(ConnectionClosed, match="giving up"):
        conn.request(b"again")


def test_recv_reports_each_lost_link_once_then_listens_on_a_new_one(server: Server) -> None:
    subscribed: list[int] = []
    with connecteur.connect(
        server.address, timeout=TIMEOUT, reconnect=FAST, on_connect=lambda link: subscribed.append(1)
    ) as conn:
        conn.send(b"drop:3")  # the server closes this link
        with pytest.raises(ConnectionClosed, match="while waiting"):
            conn.recv()
        conn.send(b"drop:3")  # a new link; this time it is answered
        assert conn.recv() == b"done drop:3"
    assert len(subscribed) == 2


@pytest.mark.parametrize("reset", [False, True], ids=["cut", "reset"])
@pytest.mark.parametrize("retry", [False, True], ids=["once", "retry"])
def test_through_cuts_and_resets_no_request_is_lost_or_doubled(
    server: Server, executions: Executions, reset: bool, retry: bool
) -> None:
    """Every link dies after a few requests (either direction): each request ends with its own reply or an error.

    Executed at most once without retry; with retry, every request is answered.
    """
    rng = random.Random(20)
    outcomes: dict[bytes, bytes | None] = {}
    with (
        Proxy(server.address, reset=reset) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT, reconnect=FAST) as conn,
    ):
        for number in range(120):
            if number % 10 == 0:  # the next links are cut after one to ten exchanges, up or down
                cut = Faults(cut_after=rng.randrange(60, 400), reset=reset)
                proxy.set_faults(
                    upstream=cut if rng.random() < 0.5 else Faults(),
                    downstream=Faults(cut_after=rng.randrange(60, 400), reset=reset),
                )
            request = f"req {number} {rng.random()}".encode()
            try:
                outcomes[request] = conn.request(request, retry=retry)
            except ConnectionClosed:
                outcomes[request] = None
        lost = sum(reply is None for reply in outcomes.values())
        assert conn.interrupted == lost
    for request, reply in outcomes.items():
        if reply is not None:
            assert reply == b"done " + request  # its own reply, never another's
        if not retry:
            assert executions.count[request] <= 1
            assert reply is None or executions.count[request] == 1
    if retry:
        assert lost == 0 and conn.resent > 0
    else:
        assert lost > 0 and conn.reconnects > 0


# --- asyncio -----------------------------------------------------------------


def test_aio_restart_in_flight_and_retry(executions: Executions) -> None:
    greeted: list[object] = []

    async def greet(link: connecteur.aio.Connection[bytes]) -> None:
        greeted.append(await link.request(b"hello"))

    async def main(first: Server) -> None:
        port = first.address[1]
        conn = await connecteur.aio.connect(first.address, timeout=TIMEOUT, reconnect=FAST, on_connect=greet)
        async with conn:
            assert await conn.request(b"one") == b"done one"
            await asyncio.to_thread(first.stop, STOP)
            second = Server(executions, f"127.0.0.1:{port}")
            second.start()
            try:
                assert await conn.request(b"two") == b"done two"
                with pytest.raises(ConnectionClosed, match="in flight"):
                    await conn.request(b"drop:a")
                assert await conn.request(b"drop:b", retry=True) == b"done drop:b"
            finally:
                await asyncio.to_thread(second.stop, STOP)
            assert (conn.reconnects, conn.interrupted, conn.resent) == (3, 1, 1)

    first = Server(executions, "127.0.0.1:0")
    first.start()
    try:
        asyncio.run(main(first))
    finally:
        first.stop(STOP)
    assert greeted == [b"done hello"] * 4
    assert executions.count[b"drop:a"] == 1 and executions.count[b"drop:b"] == 2


def test_aio_deadline_and_attempts(executions: Executions) -> None:
    async def main(address: object) -> None:
        conn = await connecteur.aio.connect(address, timeout=0.5, reconnect=Backoff(initial=0.05, maximum=0.2))
        async with conn:
            await asyncio.to_thread(server.stop, STOP)
            with pytest.raises(Timeout, match="could not connect"):
                await conn.request(b"nobody")
        with pytest.raises(ConnectionRefusedError):
            await connecteur.aio.connect(address, timeout=TIMEOUT, reconnect=Backoff(initial=0.01, attempts=2))

    server = Server(executions, "127.0.0.1:0")
    server.start()
    try:
        asyncio.run(main(server.address))
    finally:
        server.stop(STOP)


def test_a_link_the_server_closed_between_requests_is_replaced_before_sending(executions: Executions) -> None:
    """The server's idle timeout closed the link while the client was quiet: nothing was in flight, nothing raises."""
    with (
        Server(executions, "127.0.0.1:0", idle_timeout=0.1) as server,
        connecteur.connect(server.address, timeout=TIMEOUT, reconnect=FAST) as conn,
    ):
        assert conn.request(b"before") == b"done before"
        wait_until(lambda: server.stats.active == 0, what="the idle timeout")
        assert conn.request(b"after") == b"done after"
        assert (conn.reconnects, conn.interrupted) == (1, 0)


def test_over_tls_the_close_notify_then_fin_is_seen_before_sending(executions: Executions) -> None:
    pki = make_pki()
    with (
        Server(executions, "127.0.0.1:0", tls=pki.server, idle_timeout=0.1) as server,
        connecteur.connect(server.address, timeout=TIMEOUT, tls=pki.client, reconnect=FAST) as conn,
    ):
        assert conn.request(b"before") == b"done before"
        wait_until(lambda: server.stats.active == 0, what="the idle timeout")
        assert conn.request(b"after") == b"done after"
        assert (conn.reconnects, conn.interrupted) == (1, 0)


def test_on_connect_refusing_is_raised_at_once(server: Server) -> None:
    def refuse(link: connecteur.Connection[bytes]) -> None:
        raise PermissionError("not today")

    with pytest.raises(PermissionError):
        connecteur.connect(server.address, timeout=TIMEOUT, reconnect=FAST, on_connect=refuse)
    wait_until(lambda: server.stats.active == 0, what="the refused link to close")


def test_close_wakes_a_receiver_and_ends_iteration(server: Server) -> None:
    conn = connecteur.connect(server.address, timeout=None, reconnect=FAST)
    failures: list[BaseException] = []

    def listen() -> None:
        try:
            for _ in conn:
                pass
        except ConnectionClosed as exc:
            failures.append(exc)

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        time.sleep(0.05)  # let it block in recv()
        conn.close()
        listener.join(TIMEOUT)
        assert not listener.is_alive()
    finally:
        conn.close()
        listener.join(TIMEOUT)
    assert failures and "close()" in str(failures[0])


ON_CONNECT_WAITS = ["on an event", "on its link"]


@pytest.mark.parametrize("waits", ON_CONNECT_WAITS)
def test_close_while_another_thread_runs_on_connect_closes_the_new_link(
    server: Server, executions: Executions, waits: str
) -> None:
    """close() comes while a call re-dials and its on_connect runs: close() closes that link, and the call raises.

    "on its link": on_connect waits for a message the server never sends, and
    turns the link's end into an error of its own, as an authentication step
    would; the call still says that close() ended it.
    """
    greeting, gate = threading.Event(), threading.Event()
    links: list[connecteur.Connection[bytes]] = []

    def greet(link: connecteur.Connection[bytes]) -> None:
        links.append(link)
        if len(links) == 1:
            return
        assert link.request(b"hello") == b"done hello"  # the server has this link: it sees it end
        greeting.set()
        if waits == "on an event":
            gate.wait(TIMEOUT)
            return
        try:
            link.recv()  # only close() ends this wait
        except ConnectionClosed as exc:
            raise PermissionError("not authenticated") from exc

    conn = connecteur.connect(server.address, timeout=TIMEOUT, reconnect=FAST, on_connect=greet)
    assert conn.connection is not None
    conn.connection.close()  # the next call re-dials
    failures = close_while_greeting(conn, lambda: server.stats.active, greeting, gate, lambda: conn.request(b"late"))
    assert len(failures) == 1 and isinstance(failures[0], ConnectionClosed), failures
    assert "with close()" in str(failures[0])
    assert links[1].is_closed and conn.connection is None
    assert executions.count[b"late"] == 0


@pytest.mark.parametrize("waits", ON_CONNECT_WAITS)
def test_aio_close_while_another_task_runs_on_connect_closes_the_new_link(
    server: Server, executions: Executions, waits: str
) -> None:
    async def main() -> None:
        greeting, gate = asyncio.Event(), asyncio.Event()
        links: list[connecteur.aio.Connection[bytes]] = []

        async def greet(link: connecteur.aio.Connection[bytes]) -> None:
            links.append(link)
            if len(links) == 1:
                return
            assert await link.request(b"hello") == b"done hello"  # the server has this link: it sees it end
            greeting.set()
            if waits == "on an event":
                await gate.wait()
                return
            try:
                await link.recv()  # only close() ends this wait
            except ConnectionClosed as exc:
                raise PermissionError("not authenticated") from exc

        conn = await connecteur.aio.connect(server.address, timeout=TIMEOUT, reconnect=FAST, on_connect=greet)
        try:
            assert conn.connection is not None
            await conn.connection.close()  # the next call re-dials
            request = asyncio.ensure_future(conn.request(b"late"))
            await greeting.wait()
            await conn.close()
            deadline = time.monotonic() + TIMEOUT / 2
            while server.stats.active:
                assert time.monotonic() < deadline, "close() did not close the link being greeted"
                await asyncio.sleep(0.005)
            gate.set()
            with pytest.raises(ConnectionClosed, match=r"with close\(\)"):
                await request
            assert links[1].is_closed and conn.connection is None
        finally:
            gate.set()
            await conn.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert executions.count[b"late"] == 0


def test_aio_a_link_the_server_closed_between_requests_is_replaced_before_sending(executions: Executions) -> None:
    async def main(server: Server) -> None:
        async with await connecteur.aio.connect(server.address, timeout=TIMEOUT, reconnect=FAST) as conn:
            assert await conn.request(b"before") == b"done before"
            while server.stats.active:  # bounded by the test's TIMEOUT on the connection
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)  # the loop reads the FIN
            assert await conn.request(b"after") == b"done after"
            assert (conn.reconnects, conn.interrupted) == (1, 0)

    with Server(executions, "127.0.0.1:0", idle_timeout=0.1) as server:
        asyncio.run(asyncio.wait_for(main(server), TIMEOUT))


SERVER_SCRIPT = """
import sys, time
import connecteur

def handler(message):
    if message == b"slow":
        time.sleep(60)  # killed before it answers
    return message.upper()

server = connecteur.Server(handler, sys.argv[1])
server.serve_forever(ready=lambda: print(server.address[1], flush=True))
"""


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start servers in subprocesses, each printing its port once listening; every one is killed at the end."""
    processes: list[subprocess.Popen[str]] = []

    def start(address: str) -> tuple[subprocess.Popen[str], int]:
        process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, address], stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout is not None
        return process, int(process.stdout.readline())

    try:
        yield start
    finally:
        for process in processes:
            process.kill()
            process.communicate(timeout=TIMEOUT)


def test_a_server_killed_mid_request_and_restarted_on_the_same_port(spawn: Any) -> None:
    first, port = spawn("127.0.0.1:0")
    with connecteur.connect(f"127.0.0.1:{port}", timeout=TIMEOUT, reconnect=FAST) as conn:
        assert conn.request(b"one") == b"ONE"
        killer = threading.Timer(0.2, first.kill)  # SIGKILL while the request is being handled
        killer.start()
        try:
            with pytest.raises(ConnectionClosed, match="in flight"):
                conn.request(b"slow")
        finally:
            killer.join()
        first.wait(TIMEOUT)
        spawn(f"127.0.0.1:{port}")  # the same port (SO_REUSEADDR), by a new process
        assert conn.request(b"two") == b"TWO"
        assert (conn.reconnects, conn.interrupted, conn.resent) == (1, 1, 0)


@pytest.mark.parametrize("retry", [False, True], ids=["once", "retry"])
def test_aio_through_cuts_and_resets_no_request_is_lost_or_doubled(
    server: Server, executions: Executions, retry: bool
) -> None:
    rng = random.Random(21)
    outcomes: dict[bytes, bytes | None] = {}

    async def main(proxy: Proxy) -> None:
        async with await connecteur.aio.connect(proxy.address, timeout=TIMEOUT, reconnect=FAST) as conn:
            for number in range(120):
                if number % 10 == 0:
                    reset = rng.random() < 0.5
                    proxy.set_faults(
                        upstream=Faults(cut_after=rng.randrange(60, 400), reset=reset)
                        if rng.random() < 0.5
                        else Faults(),
                        downstream=Faults(cut_after=rng.randrange(60, 400), reset=reset),
                    )
                request = f"req {number} {rng.random()}".encode()
                try:
                    outcomes[request] = await conn.request(request, retry=retry)
                except ConnectionClosed:
                    outcomes[request] = None
            assert conn.interrupted == sum(reply is None for reply in outcomes.values())

    with Proxy(server.address) as proxy:
        asyncio.run(main(proxy))
    for request, reply in outcomes.items():
        assert reply is None or reply == b"done " + request
        if not retry:
            assert executions.count[request] <= 1
    assert all(outcomes.values()) if retry else not all(outcomes.values())
