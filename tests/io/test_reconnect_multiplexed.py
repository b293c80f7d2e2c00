"""Reconnecting multiplexed clients: many threads (or tasks) share one link, and a new one when it dies.

Every request in flight on a dying link raises `ConnectionClosed` unless it
was marked ``retry=True`` (then it goes once more on the next link);
`on_connect` runs on each new link before any request waiting for it; each
call's timeout bounds its wait for a re-dial, made by itself or another
caller; heartbeats run on every link; each link has its own request table.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import connecteur
from connecteur import Backoff, ConnectionClosed, Heartbeat, RemoteError, Server, Timeout
from connecteur._multiplexed import NotSent
from connecteur.tools.proxy import Faults, Proxy
from tests.support import TIMEOUT, close_while_greeting, wait_until

FAST = Backoff(initial=0.01, factor=2, maximum=0.1)
STOP = 0.2
"""Seconds a stop waits for the clients still connected: these tests' clients wait for nothing."""
CALLERS = 8


class Log:
    """The server's handler: logs (link, message) in order, holds ``hold:`` requests the first time."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, bytes]] = []
        self.count: Counter[bytes] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()

    def received(self, peer: connecteur.Peer, message: bytes) -> bytes:
        with self.lock:
            self.seen.append((peer.address, message))
            self.count[message] += 1
            first = self.count[message] == 1
        if message.startswith(b"hold:") and first:
            self.release.wait(TIMEOUT)  # until the test has cut the link under it
        if message.startswith(b"fail"):
            raise ValueError("asked to fail")
        if message.startswith(b"slow"):
            time.sleep(0.3)
        return b"done " + message

    def first_messages(self) -> list[bytes]:
        """The first message each link carried."""
        firsts: dict[Any, bytes] = {}
        with self.lock:
            for link, message in self.seen:
                firsts.setdefault(link, message)
        return list(firsts.values())


@pytest.fixture
def log() -> Iterator[Log]:
    log = Log()
    try:
        yield log
    finally:
        log.release.set()


@pytest.fixture
def proxy(log: Log) -> Iterator[Proxy]:
    with (
        Server(log, "127.0.0.1:0", engine="threads", multiplexed=True) as server,
        Proxy(server.address) as running,
    ):
        yield running


def cut_when(proxy: Proxy, ready: Any, log: Log) -> None:
    """Reset the link through `proxy` once `ready()`, then let new links through and release held handlers."""
    wait_until(ready, what="every request in flight")
    time.sleep(0.05)  # registered, then sent: a request sent after the cut is not in flight, and goes on link 2
    proxy.set_faults(Faults(reset_after=0.0))
    wait_until(lambda: proxy.active == 0, what="the cut")
    proxy.set_faults(Faults())
    log.release.set()


def check_outcomes(
    outcomes: dict[bytes, bytes | BaseException], log: Log, retry: bool, counts: tuple[int, int, int]
) -> None:
    """Each request got its own reply or raised "in flight"; executed twice only if retryable; all counted.

    Link 1 ran the first held request, the others waited behind it (engine "threads"): those were in
    flight all the same. Without retry, every one raises, but one sent only after the cut, which is
    not in flight: it goes on link 2 by itself (rare: the cut waits for the sends).
    """
    assert len(outcomes) == CALLERS
    raised = [message for message, outcome in outcomes.items() if isinstance(outcome, BaseException)]
    for message, outcome in outcomes.items():
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, ConnectionClosed) and "in flight" in str(outcome) and not retry
            assert log.count[message] <= 1
        else:
            assert outcome == b"done " + message
            assert log.count[message] == 1 or (retry and log.count[message] == 2)
    connects, interrupted, resent = counts
    assert connects == 2
    assert interrupted == len(raised)
    if retry:
        twice = sum(log.count[message] == 2 for message in outcomes)
        assert not raised and 1 <= twice <= resent
    else:
        assert interrupted >= 1 and resent == 0


@pytest.mark.parametrize("retry", [False, True], ids=["once", "retry"])
def test_every_request_in_flight_on_a_dying_link_raises_unless_retryable(proxy: Proxy, log: Log, retry: bool) -> None:
    """8 threads, 8 requests in flight on one link; the link is reset; on_connect greets each link first."""

    def greet(link: connecteur.MultiplexedConnection[bytes]) -> None:
        assert link.request(b"hello") == b"done hello"

    outcomes: dict[bytes, bytes | BaseException] = {}
    with connecteur.connect(proxy.address, multiplexed=True, reconnect=FAST, on_connect=greet, timeout=TIMEOUT) as conn:

        def call(n: int) -> None:
            message = f"hold:{n}".encode()
            try:
                outcomes[message] = conn.request(message, retry=retry)
            except ConnectionClosed as exc:
                outcomes[message] = exc

        threads = [threading.Thread(target=call, args=(n,)) for n in range(CALLERS)]
        for thread in threads:
            thread.start()
        try:
            cut_when(proxy, lambda: conn.in_flight == CALLERS, log)
        finally:
            for thread in threads:
                thread.join(TIMEOUT)
        assert conn.request(b"after") == b"done after"
        counts = (conn.connects, conn.interrupted, conn.resent)
    check_outcomes(outcomes, log, retry, counts)
    assert log.first_messages() == [b"hello", b"hello"]  # before any request queued for the new link
    assert log.count[b"hello"] == 2


def test_a_call_waiting_for_another_threads_redial_gives_up_at_its_own_deadline(log: Log) -> None:
    """The server is gone: one caller re-dials for long, another's 0.3 s bounds its wait, well before the first's."""
    server = Server(log, "127.0.0.1:0", multiplexed=True)
    server.start()
    try:
        conn = connecteur.connect(
            server.address, multiplexed=True, timeout=TIMEOUT, reconnect=Backoff(initial=0.05, maximum=0.1)
        )
    finally:
        server.stop(STOP)
    ended: list[BaseException] = []

    def long_call() -> None:
        try:
            conn.request(b"patient", timeout=3 * TIMEOUT)
        except ConnectionClosed as exc:
            ended.append(exc)

    patient = threading.Thread(target=long_call)
    try:
        wait_until(lambda: conn.connection is None or conn.connection.is_closed, what="the loss")
        patient.start()
        wait_until(conn._dialling.locked, what="the patient call to re-dial")
        started = time.monotonic()
        with pytest.raises(Timeout, match=r"within 0\.3 s"):
            conn.request(b"hurried", timeout=0.3)
        assert time.monotonic() - started < TIMEOUT  # not the patient call's 30 s
        assert conn.failed_attempts >= 1
    finally:
        conn.close()  # wakes the patient call's back-off wait
        patient.join(TIMEOUT)
    assert not patient.is_alive()
    assert ended and "close()" in str(ended[0])


def test_ids_start_again_on_each_link_and_a_late_reply_of_the_old_one_reaches_nobody(proxy: Proxy, log: Log) -> None:
    """Link 1's request 1 times out (a tombstone); link 2's request 1 gets its own reply, not the late one."""
    with connecteur.connect(proxy.address, multiplexed=True, reconnect=FAST, timeout=TIMEOUT) as conn:
        first = conn.connection
        with pytest.raises(Timeout):
            conn.request(b"slow old", timeout=0.05)  # request id 1 on link 1, answered 0.3 s later
        assert first is not None and first.in_flight == 0
        proxy.set_faults(Faults(reset_after=0.0))
        wait_until(lambda: first.is_closed, what="the cut")
        proxy.set_faults(Faults())
        assert conn.request(b"slow new") == b"done slow new"  # request id 1 again, on link 2
        assert conn.connection is not first and conn.connection is not None
        assert conn.connection._table._next_id == 1  # the same id as the timed-out one
        assert (conn.reconnects, conn.interrupted) == (1, 0)
    assert log.count[b"slow old"] == 1 and log.count[b"slow new"] == 1


def test_heartbeats_run_on_every_link(log: Log) -> None:
    """Each link is blackholed in turn: its heartbeat ends it within interval + deadline, the next call re-dials."""
    with (
        Server(log, "127.0.0.1:0", engine="threads", multiplexed=True) as server,
        Proxy(server.address) as proxy,
        connecteur.connect(
            proxy.address, multiplexed=True, reconnect=FAST, heartbeat=(0.1, 0.2), timeout=TIMEOUT
        ) as conn,
    ):
        links = []
        for n in range(2):
            assert conn.request(b"ping %d" % n) == b"done ping %d" % n
            link = conn.connection
            assert link is not None and link.heartbeat == Heartbeat(0.1, 0.2)
            links.append(link)
            proxy.set_faults(Faults(blackhole_after=0))
            wait_until(lambda: link.is_closed, what="the heartbeat to end a blackholed link")  # noqa: B023
            proxy.set_faults(Faults())
        assert conn.request(b"last") == b"done last"
        assert links[0] is not links[1] and conn.reconnects == 2 and conn.interrupted == 0


def test_a_remote_error_and_a_timeout_leave_the_link_open(proxy: Proxy) -> None:
    with connecteur.connect(proxy.address, multiplexed=True, reconnect=FAST, timeout=TIMEOUT) as conn:
        with pytest.raises(RemoteError, match="asked to fail"):
            conn.request(b"fail")
        with pytest.raises(Timeout):
            conn.request(b"slow", timeout=0.05)
        assert conn.request(b"ok") == b"done ok"
        assert conn.connects == 1
        wait_until(lambda: conn.late_replies == 1, what="the late reply")


def test_a_link_found_closed_is_replaced_before_sending_and_nothing_raises(log: Log) -> None:
    """Closed by the server's idle timeout between calls: the request never left, so it goes without retry."""
    with (
        Server(log, "127.0.0.1:0", multiplexed=True, idle_timeout=0.1) as server,
        connecteur.connect(server.address, multiplexed=True, reconnect=FAST, timeout=TIMEOUT) as conn,
    ):
        assert conn.request(b"before") == b"done before"
        wait_until(lambda: conn.connection is not None and conn.connection.is_closed, what="the idle timeout")
        assert conn.request(b"after") == b"done after"
        assert (conn.reconnects, conn.interrupted, conn.resent) == (1, 0, 0)


def test_an_ended_multiplexed_link_says_a_message_was_not_sent(log: Log) -> None:
    """`NotSent`, a `ConnectionClosed`, is what lets the reconnecting client send it on the next link."""
    with Server(log, "127.0.0.1:0", multiplexed=True) as server:
        link = connecteur.connect(server.address, multiplexed=True, timeout=TIMEOUT)
        link.close()
        with pytest.raises(NotSent):
            link.request(b"never")
        with pytest.raises(NotSent):
            link.send(b"never")

        async def aio_link() -> None:
            link = await connecteur.aio.connect(server.address, multiplexed=True, timeout=TIMEOUT)
            await link.close()
            with pytest.raises(NotSent):
                await link.request(b"never")

        asyncio.run(aio_link())
    assert log.count[b"never"] == 0


def test_a_link_that_ended_just_before_the_send_passes_the_request_to_the_next(
    proxy: Proxy, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link ends between the call's look at it and its send: nothing left, so no error and no retry needed."""
    with connecteur.connect(proxy.address, multiplexed=True, reconnect=FAST, timeout=TIMEOUT) as conn:
        original = conn._link

        def ending_once(deadline: float | None, seconds: float | None) -> Any:
            link = original(deadline, seconds)
            if conn.connects == 1:
                link.close()  # as if the peer had just gone: the request meets an ended link
            return link

        monkeypatch.setattr(conn, "_link", ending_once)
        assert conn.request(b"one") == b"done one"
        assert (conn.connects, conn.interrupted, conn.resent) == (2, 0, 0)
    assert log.count[b"one"] == 1


def test_aio_a_link_that_ended_just_before_the_send_passes_the_request_to_the_next(
    proxy: Proxy, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with await connecteur.aio.connect(
            proxy.address, multiplexed=True, reconnect=FAST, timeout=TIMEOUT
        ) as conn:
            original = conn._link

            async def ending_once(deadline: float | None, seconds: float | None) -> Any:
                link = await original(deadline, seconds)
                if conn.connects == 1:
                    await link.close()
                return link

            monkeypatch.setattr(conn, "_link", ending_once)
            assert await conn.request(b"two") == b"done two"
            assert (conn.connects, conn.interrupted, conn.resent) == (2, 0, 0)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert log.count[b"two"] == 1


def test_close_while_another_thread_runs_on_connect_closes_the_new_link(log: Log) -> None:
    """close() does not wait for on_connect to end: it closes the link being greeted, and the call raises."""
    greeting, gate = threading.Event(), threading.Event()
    links: list[connecteur.MultiplexedConnection[bytes]] = []

    def greet(link: connecteur.MultiplexedConnection[bytes]) -> None:
        links.append(link)
        if len(links) == 2:
            assert link.request(b"hello") == b"done hello"  # the server has this link: it sees it end
            greeting.set()
            gate.wait(TIMEOUT)  # close() comes now

    with Server(log, "127.0.0.1:0", engine="threads", multiplexed=True) as server:
        conn = connecteur.connect(server.address, multiplexed=True, reconnect=FAST, on_connect=greet, timeout=TIMEOUT)
        assert conn.connection is not None
        conn.connection.close()  # the next call re-dials
        failures = close_while_greeting(
            conn, lambda: server.stats.active, greeting, gate, lambda: conn.request(b"late")
        )
    assert len(failures) == 1 and isinstance(failures[0], ConnectionClosed), failures
    assert "with close()" in str(failures[0])
    assert links[1].is_closed
    assert log.count[b"late"] == 0


def test_aio_close_during_on_connect_closes_the_new_link_and_nothing_is_sent_on_it(proxy: Proxy, log: Log) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        links: list[connecteur.aio.MultiplexedConnection[bytes]] = []

        async def greet(link: connecteur.aio.MultiplexedConnection[bytes]) -> None:
            links.append(link)
            if len(links) == 2:
                await gate.wait()  # close() comes now

        conn = await connecteur.aio.connect(
            proxy.address, multiplexed=True, reconnect=FAST, on_connect=greet, timeout=TIMEOUT
        )
        assert conn.connection is not None
        await conn.connection.close()
        request = asyncio.ensure_future(conn.request(b"late"))
        while len(links) < 2:  # bounded by wait_for below
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(conn.close())
        await asyncio.sleep(0)
        gate.set()
        await closing
        with pytest.raises(ConnectionClosed, match=r"close\(\)"):
            await request
        assert links[1].is_closed

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert log.count[b"late"] == 0


def test_on_connect_without_reconnect_is_refused_on_multiplexed_clients_too() -> None:
    with pytest.raises(ValueError, match="on_connect"):
        connecteur.connect("127.0.0.1:9", multiplexed=True, on_connect=print)  # type: ignore[call-overload]


# --- asyncio -----------------------------------------------------------------


@pytest.mark.parametrize("retry", [False, True], ids=["once", "retry"])
def test_aio_every_request_in_flight_on_a_dying_link_raises_unless_retryable(
    proxy: Proxy, log: Log, retry: bool
) -> None:
    greeted = 0

    async def greet(link: connecteur.aio.MultiplexedConnection[bytes]) -> None:
        nonlocal greeted
        greeted += 1
        assert await link.request(b"hello") == b"done hello"

    async def call(conn: Any, message: bytes) -> bytes | BaseException:
        try:
            reply: bytes = await conn.request(message, retry=retry)
        except ConnectionClosed as exc:
            return exc
        return reply

    async def main() -> tuple[list[bytes | BaseException], tuple[int, int, int]]:
        conn = await connecteur.aio.connect(
            proxy.address, multiplexed=True, reconnect=FAST, on_connect=greet, timeout=TIMEOUT
        )
        async with conn:
            calls = [asyncio.ensure_future(call(conn, f"hold:{n}".encode())) for n in range(CALLERS)]
            await asyncio.to_thread(cut_when, proxy, lambda: conn.in_flight == CALLERS, log)
            outcomes = await asyncio.gather(*calls)
            assert await conn.request(b"after") == b"done after"
            return outcomes, (conn.connects, conn.interrupted, conn.resent)

    outcomes, counts = asyncio.run(asyncio.wait_for(main(), 3 * TIMEOUT))
    check_outcomes({f"hold:{n}".encode(): outcome for n, outcome in enumerate(outcomes)}, log, retry, counts)
    assert greeted == 2 and log.first_messages() == [b"hello", b"hello"]


def test_aio_a_task_waiting_for_another_tasks_redial_gives_up_at_its_own_deadline(log: Log) -> None:
    async def main(server: Server) -> None:
        conn = await connecteur.aio.connect(
            server.address, multiplexed=True, timeout=TIMEOUT, reconnect=Backoff(initial=0.05, maximum=0.1)
        )
        await asyncio.to_thread(server.stop, STOP)
        patient = asyncio.ensure_future(conn.request(b"patient", timeout=3 * TIMEOUT))
        try:
            while not conn._dialling.locked():  # bounded by wait_for below
                await asyncio.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(Timeout, match=r"within 0\.3 s"):
                await conn.request(b"hurried", timeout=0.3)
            assert time.monotonic() - started < TIMEOUT  # not the patient call's 30 s
        finally:
            await conn.close()
        with pytest.raises(ConnectionClosed, match=r"close\(\)"):
            await patient

    server = Server(log, "127.0.0.1:0", multiplexed=True)
    server.start()
    try:
        asyncio.run(asyncio.wait_for(main(server), 2 * TIMEOUT))
    finally:
        server.stop(STOP)


def test_aio_ids_and_heartbeats_on_each_link(log: Log) -> None:
    async def main(proxy: Proxy) -> None:
        conn = await connecteur.aio.connect(
            proxy.address, multiplexed=True, reconnect=FAST, heartbeat=(0.1, 0.2), timeout=TIMEOUT
        )
        async with conn:
            with pytest.raises(Timeout):
                await conn.request(b"slow old", timeout=0.05)
            first = conn.connection
            assert first is not None and first.heartbeat == Heartbeat(0.1, 0.2)
            proxy.set_faults(Faults(blackhole_after=0))
            while not first.is_closed:  # the heartbeat ends it; bounded by wait_for below
                await asyncio.sleep(0.01)
            proxy.set_faults(Faults())
            assert await conn.request(b"new") == b"done new"  # not slow: pings wait behind requests on "threads"
            second = conn.connection
            assert second is not first and second is not None and second.heartbeat == Heartbeat(0.1, 0.2)
            assert second._table._next_id == 1
            assert (conn.reconnects, conn.interrupted) == (1, 0)

    with (
        Server(log, "127.0.0.1:0", engine="threads", multiplexed=True) as server,
        Proxy(server.address) as proxy,
    ):
        asyncio.run(asyncio.wait_for(main(proxy), 2 * TIMEOUT))
