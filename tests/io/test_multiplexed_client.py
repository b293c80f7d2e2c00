"""The blocking multiplexed client over a fake stream: how a request's wait ends, race by race."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

from connecteur import ConnectionClosed, Timeout
from connecteur._envelope import Kind, decode, encode
from connecteur._multiplexed import MultiplexedConnection
from tests.support import TIMEOUT, wait_until


class FakeStream:
    """What the client runs over: sends are kept, `recv` returns what the test feeds (None: the end)."""

    address = ("127.0.0.1", 1)
    timeout: float | None = None
    is_closed = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.incoming: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def send(self, message: Any) -> None:
        self.sent.append(message)

    def recv(self) -> Any:
        message = self.incoming.get(timeout=TIMEOUT)
        if message is None:
            raise ConnectionClosed("the fake server closed the connection")
        return message

    def close(self) -> None:
        self.is_closed = True

    def _interrupt(self) -> None:
        self.incoming.put(None)


def _request_in_thread(conn: MultiplexedConnection[bytes], **options: Any) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(conn.request(b"ping me", **options))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_reply_settled_as_the_request_times_out_is_returned_not_lost() -> None:
    """The reader took the request out of the table, then its timeout ran out before the wake-up: the reply wins."""
    stream = FakeStream()
    conn: MultiplexedConnection[bytes] = MultiplexedConnection(stream)
    try:
        thread, outcome = _request_in_thread(conn, timeout=0.05)
        wait_until(lambda: stream.sent, what="the request sent")
        request_id = decode(stream.sent[0]).request_id
        with conn._lock:  # as the reader does: settle under the lock, wake after it
            waiter = conn._table.settle(request_id)
            assert waiter is not None
            thread.join(0.2)  # past its timeout: it now waits for this lock, or is about to
        waiter.envelope = decode(encode(Kind.REPLY, request_id, b"pong"))
        waiter.wake()
        thread.join(TIMEOUT)
        assert outcome == [b"pong"]
        assert conn.late_replies == 0 and conn.in_flight == 0
    finally:
        conn.close()


def test_replies_timeouts_and_the_end_each_wake_their_own_request() -> None:
    stream = FakeStream()
    conn: MultiplexedConnection[bytes] = MultiplexedConnection(stream)
    try:
        with pytest.raises(Timeout):
            conn.request(b"unanswered", timeout=0.01)
        answered, answered_outcome = _request_in_thread(conn)
        wait_until(lambda: len(stream.sent) == 2, what="the second request sent")
        stream.incoming.put(encode(Kind.REPLY, decode(stream.sent[1]).request_id, b"yes"))
        stream.incoming.put(encode(Kind.REPLY, decode(stream.sent[0]).request_id, b"too late"))
        answered.join(TIMEOUT)
        assert answered_outcome == [b"yes"]
        wait_until(lambda: conn.late_replies == 1, what="the late reply dropped")
        ended, ended_outcome = _request_in_thread(conn)
        wait_until(lambda: conn.in_flight == 1, what="the third request in flight")
        stream.incoming.put(None)  # the server goes away
        ended.join(TIMEOUT)
        assert len(ended_outcome) == 1 and isinstance(ended_outcome[0], ConnectionClosed)
    finally:
        conn.close()
