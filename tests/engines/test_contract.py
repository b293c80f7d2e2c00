"""The contract every engine keeps, written once and run on each engine."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import connecteur
from connecteur import ConnectionClosed, Peer, Server, Timeout, connect
from connecteur.framing import Delimited, LengthPrefixed, Netstring
from connecteur.tools.apps import echo, upper
from tests.engines.conftest import engine_options
from tests.support import TIMEOUT, recv_until_closed, wait_until

Serve = Callable[..., Server]


def raw_client(server: Server) -> socket.socket:
    return socket.create_connection(server.address, timeout=TIMEOUT)


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_echo_with_fifty_concurrent_clients(serve: Serve) -> None:
    server = serve(echo)
    failures: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with connect(server.address, timeout=TIMEOUT) as conn:
                for i in range(20):
                    message = b"client %d message %d" % (n, i)
                    assert conn.request(message) == message
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not failures
    assert not any(thread.is_alive() for thread in threads)
    # With workers, counters arrive in reports: wait for the final figures.
    wait_until(lambda: server.stats.messages_out == 1000 and server.stats.active == 0, what="every connection counted")
    stats = server.stats
    assert (stats.accepted, stats.messages_in, stats.messages_out, stats.errors) == (50, 1000, 1000, 0)


def test_pipelining_twenty_thousand_messages_keeps_order(serve: Serve) -> None:
    server = serve(upper)
    messages = [b"m%d" % i for i in range(20_000)]
    with connect(server.address, timeout=TIMEOUT) as conn:
        sender = threading.Thread(target=conn.send_many, args=(messages,))
        sender.start()
        replies = [conn.recv() for _ in messages]
        sender.join(TIMEOUT)
    assert replies == [m.upper() for m in messages]


def test_fragmented_input_one_byte_per_segment(serve: Serve) -> None:
    server = serve(echo, framing=Netstring())
    framing = Netstring()
    wire = b"".join(framing.encode(m) for m in (b"first", b"", b"third message"))
    with raw_client(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(wire)):
            sock.sendall(wire[i : i + 1])
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == wire


def test_oversized_header_closes_only_that_connection(serve: Serve) -> None:
    server = serve(echo)
    with connect(server.address, timeout=TIMEOUT) as good, raw_client(server) as bad:
        assert good.request(b"before") == b"before"
        bad.sendall(struct.pack("!I", 2**32 - 1))
        assert recv_until_closed(bad) == b""
        assert good.request(b"after") == b"after"
    wait_until(lambda: server.stats.errors == 1, what="the error counted")


def grow_big(message: bytes) -> bytes:
    return message * 100 if message == b"big" else message


def test_a_reply_over_max_size_answers_the_messages_before_then_closes(serve: Serve) -> None:
    """Replies to one read are framed together: a refused one ends the connection after those before it."""
    server = serve(grow_big, framing=LengthPrefixed(max_size=50))
    framing = LengthPrefixed(max_size=50)
    with raw_client(server) as sock:
        sock.sendall(b"".join(framing.encode(m) for m in (b"one", b"two", b"big", b"never")))  # one read, likely
        assert recv_until_closed(sock) == framing.encode(b"one") + framing.encode(b"two")
    wait_until(lambda: server.stats.errors == 1, what="the error counted")
    with connect(server.address, framing=framing, timeout=TIMEOUT) as conn:
        assert conn.request(b"next") == b"next"


def test_large_and_small_messages_to_a_slow_reader_arrive_whole_and_in_order(serve: Serve) -> None:
    """Large replies leave in gathering writes, their bodies filled in place: what the socket does not take waits."""
    server = serve(echo)
    sizes = [2**20, 5, 3 * 2**16 + 1, 0, 2**20 + 3, 70_000, 7]
    messages = [bytes([n]) * size for n, size in enumerate(sizes)]
    with connect(server.address, timeout=TIMEOUT) as conn:
        conn.send_many(messages)
        time.sleep(0.2)  # the server's replies fill the socket buffers before anything is read
        assert [conn.recv() for _ in messages] == messages
        assert conn.request(b"after") == b"after"


def test_garbage_closes_the_connection_and_answers_what_came_before(serve: Serve) -> None:
    server = serve(echo, framing=Netstring())
    with raw_client(server) as sock:
        sock.sendall(b"2:ok,xx:garbage")
        assert recv_until_closed(sock) == b"2:ok,"
    with connect(server.address, framing=Netstring(), timeout=TIMEOUT) as conn:
        assert conn.request(b"next") == b"next"
    wait_until(lambda: server.stats.errors == 1, what="the error counted")


def test_reset_mid_message_leaves_the_server_serving(serve: Serve) -> None:
    server = serve(echo)
    for _ in range(5):
        sock = raw_client(server)
        sock.sendall(struct.pack("!I", 100) + b"only part")
        reset(sock)
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"alive") == b"alive"
    wait_until(lambda: server.stats.errors == 5 and server.stats.active == 0, what="reset connections closed")


def test_idle_timeout_closes_a_silent_connection(serve: Serve) -> None:
    server = serve(echo, idle_timeout=0.3)
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"hello") == b"hello"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            conn.recv()
        assert 0.2 < time.monotonic() - started < TIMEOUT
    wait_until(lambda: server.stats.errors == 1, what="the timeout counted")


def test_stray_bytes_do_not_keep_a_connection_alive(serve: Serve) -> None:
    server = serve(echo, idle_timeout=0.3)
    with raw_client(server) as sock:
        sock.sendall(struct.pack("!I", 1000))
        deadline = time.monotonic() + TIMEOUT
        closed = False
        while not closed and time.monotonic() < deadline:
            sock.sendall(b"x")  # a byte at a time, never a whole message
            time.sleep(0.05)
            try:
                sock.setblocking(False)
                closed = sock.recv(1) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed = True
            finally:
                sock.setblocking(True)
        assert closed


def test_message_timeout_closes_a_slow_message(serve: Serve) -> None:
    server = serve(echo, message_timeout=0.3)
    with raw_client(server) as sock:
        sock.sendall(struct.pack("!I", 10) + b"half")
        started = time.monotonic()
        assert recv_until_closed(sock) == b""
        assert 0.2 < time.monotonic() - started < TIMEOUT
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"whole") == b"whole"


def test_max_connections_refuses_extra_connections_and_serves_the_rest(engine: str, serve: Serve) -> None:
    if "*" in engine:
        pytest.skip("with workers, max_connections applies to each worker, and the kernel picks the worker")
    server = serve(echo, max_connections=2)
    with connect(server.address, timeout=TIMEOUT) as a, connect(server.address, timeout=TIMEOUT) as b:
        assert a.request(b"a") == b"a"
        assert b.request(b"b") == b"b"
        with connect(server.address, timeout=TIMEOUT) as extra, pytest.raises((ConnectionClosed, OSError)):
            extra.request(b"extra")
        assert a.request(b"still") == b"still"
        assert server.stats.rejected >= 1
    wait_until(lambda: server.stats.active == 0, what="slots freed")
    with connect(server.address, timeout=TIMEOUT) as c:
        assert c.request(b"c") == b"c"


def test_graceful_stop_answers_what_was_received_before_a_half_close(engine: str) -> None:
    def slow_upper(message: bytes) -> bytes:
        time.sleep(0.002)
        return message.upper()

    server = Server(slow_upper, "127.0.0.1:0", **engine_options(engine))
    server.start()
    try:
        messages = [b"request %d" % i for i in range(200)]
        with connect(server.address, timeout=TIMEOUT) as conn:
            conn.send_many(messages)
            conn.shutdown_write()
            stopper = threading.Thread(target=server.stop, kwargs={"timeout": TIMEOUT})
            stopper.start()
            replies = list(conn)
            stopper.join(TIMEOUT)
        assert replies == [m.upper() for m in messages]
        assert not stopper.is_alive()
        with pytest.raises(OSError):
            connect(server.address, timeout=TIMEOUT).close()
    finally:
        server.stop(timeout=1.0)


def test_stop_deadline_closes_connections_that_stay_open(engine: str) -> None:
    server = Server(echo, "127.0.0.1:0", **engine_options(engine))
    server.start()
    try:
        with connect(server.address, timeout=TIMEOUT) as conn:
            assert conn.request(b"hi") == b"hi"
            started = time.monotonic()
            server.stop(timeout=0.3)
            assert time.monotonic() - started < TIMEOUT
            with pytest.raises((ConnectionClosed, OSError)):
                conn.recv()
    finally:
        server.stop(timeout=1.0)


def fragile(message: bytes) -> bytes:
    if message == b"boom":
        raise RuntimeError("handler bug")
    return message


def test_handler_exception_closes_its_connection_and_counts(serve: Serve) -> None:
    server = serve(fragile)
    with connect(server.address, timeout=TIMEOUT) as bystander, connect(server.address, timeout=TIMEOUT) as victim:
        victim.send(b"boom")
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            victim.recv()
        assert time.monotonic() - started < TIMEOUT / 2  # closed, not timed out
        assert bystander.request(b"fine") == b"fine"
    wait_until(lambda: server.stats.errors == 1, what="the error counted")


def in_process_only(engine: str) -> None:
    if engine == "processes" or "*" in engine:
        pytest.skip("the handler runs in a forked child: its log records go to the child's stderr, not to caplog")


def test_handler_exception_is_logged_with_its_traceback(
    engine: str, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    in_process_only(engine)
    server = serve(fragile)
    with caplog.at_level(logging.ERROR, logger="connecteur.server"):
        with connect(server.address, timeout=TIMEOUT) as victim, pytest.raises(ConnectionClosed):
            victim.request(b"boom")
        wait_until(lambda: server.stats.errors == 1, what="the error counted")
    records = [r for r in caplog.records if r.name == "connecteur.server" and r.exc_info]
    assert records and isinstance(records[0].exc_info[1], RuntimeError)  # type: ignore[index]


class Journal:
    """A file the handler writes events to: it works across processes too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def write(self, event: str) -> None:
        with self.path.open("a") as file:
            file.write(event + "\n")

    def events(self) -> list[str]:
        return self.path.read_text().splitlines()


def test_handler_object_hooks_and_peer_state(serve: Serve, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "events")

    class Counter:
        def connected(self, peer: Peer) -> None:
            peer.data["count"] = 0
            journal.write(f"connected {type(peer.address).__name__}")

        def received(self, peer: Peer, message: bytes) -> bytes:
            peer.data["count"] += 1
            return b"%d:%s" % (peer.data["count"], message)

        def closed(self, peer: Peer, error: BaseException | None) -> None:
            journal.write(f"closed {error!r}")

    server = serve(Counter())
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"a") == b"1:a"
        assert conn.request(b"b") == b"2:b"
    wait_until(lambda: len(journal.events()) == 2, what="the closed hook")
    assert journal.events() == ["connected tuple", "closed None"]


def test_peer_send_from_another_thread_and_peer_close(engine: str, serve: Serve, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "events")

    def push_then_close(peer: Peer) -> None:
        for i in range(100):
            peer.send(b"push %d" % i)
        peer.close()
        try:
            peer.send(b"too late")
        except ConnectionClosed:
            journal.write("send after close raised ConnectionClosed")

    class Hub:
        def connected(self, peer: Peer) -> None:
            threading.Thread(target=push_then_close, args=(peer,)).start()

    server = serve(Hub())
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert [conn.recv() for _ in range(100)] == [b"push %d" % i for i in range(100)]
        with pytest.raises(ConnectionClosed):
            conn.recv()
    if engine != "processes":  # a child exits, threads and all, once its connection ends
        wait_until(lambda: journal.events() == ["send after close raised ConnectionClosed"], what="the late send")


def test_reply_then_close_from_inside_the_handler(serve: Serve) -> None:
    def last_word(peer: Peer, message: bytes) -> bytes:
        peer.close()
        return b"bye"

    class Handler:
        received = staticmethod(last_word)

    server = serve(Handler())
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"quit") == b"bye"
        with pytest.raises(ConnectionClosed):
            conn.recv()


def test_empty_message_and_none_reply(serve: Serve) -> None:
    server = serve(lambda m: None if m == b"quiet" else m)
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"") == b""
        conn.send(b"quiet")
        assert conn.request(b"loud") == b"loud"


def test_stats_count_bytes_with_framing(serve: Serve) -> None:
    server = serve(echo, framing=Delimited(b"\n"))
    with connect(server.address, framing=Delimited(b"\n"), timeout=TIMEOUT) as conn:
        assert conn.request(b"abc") == b"abc"
    wait_until(lambda: server.stats.accepted == 1 and server.stats.active == 0, what="the connection counted")
    stats = server.stats
    assert (stats.bytes_in, stats.bytes_out, stats.messages_in, stats.messages_out) == (4, 4, 1, 1)
    assert isinstance(stats, connecteur.Stats)


def test_stats_count_an_open_connection_and_keep_its_counts_once_closed(engine: str, serve: Serve) -> None:
    """Counts live per writer (an event loop, or a connection's thread) until that writer is done.

    The processes engine is the exception: a child reports when its connection ends.
    """
    server = serve(echo)
    live = not engine.startswith("processes")
    with connect(server.address, timeout=TIMEOUT) as first:
        for message in (b"a", b"bc"):
            assert first.request(message) == message
        if live:
            wait_until(lambda: server.stats.messages_out == 2, what="the replies counted")
            stats = server.stats
            assert (stats.active, stats.messages_in, stats.bytes_in, stats.bytes_out) == (1, 2, 11, 11)
        with connect(server.address, timeout=TIMEOUT) as second:
            assert second.request(b"def") == b"def"
            if live:
                wait_until(lambda: server.stats.messages_out == 3, what="the second connection's reply counted")
    wait_until(lambda: server.stats.active == 0 and server.stats.messages_out == 3, what="both connections counted")
    stats = server.stats
    assert (stats.messages_in, stats.messages_out, stats.bytes_in, stats.bytes_out) == (3, 3, 18, 18)


def test_unix_socket_server_removes_its_file(serve: Serve, tmp_path: Path) -> None:
    path = f"{tmp_path}/server.sock"
    server = serve(upper, f"unix:{path}")
    assert server.address == f"unix:{path}"
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"unix") == b"UNIX"
    server.stop(timeout=1.0)
    import os

    assert not os.path.exists(path)


def test_ipv6_loopback(serve: Serve) -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    try:
        server = serve(upper, "[::1]:0")
    except OSError as exc:
        pytest.skip(f"cannot listen on [::1]: {exc}")
    assert server.address[0] == "::1"
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"six") == b"SIX"


def test_client_timeout_against_a_silent_handler(serve: Serve) -> None:
    server = serve(lambda m: None, framing=LengthPrefixed("!H"))
    with connect(server.address, framing=LengthPrefixed("!H"), timeout=0.2) as conn, pytest.raises(Timeout):
        conn.request(b"anyone?")


def test_a_reply_the_framing_cannot_carry_is_the_handlers_error(
    engine: str, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(lambda m: b"x" * 300, framing=LengthPrefixed("!B"))
    with caplog.at_level(logging.ERROR, logger="connecteur.server"):
        with connect(server.address, framing=LengthPrefixed("!B"), timeout=TIMEOUT) as conn:
            conn.send(b"hi")
            with pytest.raises(ConnectionClosed):
                conn.recv()
        wait_until(lambda: server.stats.errors == 1, what="the error counted")
    if engine != "processes" and "*" not in engine:  # a child's log records do not reach caplog
        assert any("MessageTooLarge" in r.getMessage() for r in caplog.records)


def test_stop_serves_connections_still_waiting_in_the_backlog(engine: str, tmp_path: Path) -> None:
    """Clients that connected before the stop get their replies, accepted or not yet."""
    release = tmp_path / "release"  # files, so that a forked child sees them too
    holding = tmp_path / "holding"

    def gate(message: bytes) -> bytes:
        if message == b"hold":  # on the select engine this holds the whole loop
            holding.touch()
            deadline = time.monotonic() + TIMEOUT
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        return message.upper()

    server = Server(gate, "127.0.0.1:0", **engine_options(engine))
    server.start()
    stopper = threading.Thread(target=server.stop, kwargs={"timeout": TIMEOUT})
    clients: list[connecteur.Connection] = []
    try:
        holder = connect(server.address, timeout=TIMEOUT)
        clients.append(holder)
        holder.send(b"hold")
        holder.shutdown_write()
        wait_until(holding.exists, what="the holding message")
        for i in range(5):
            late = connect(server.address, timeout=TIMEOUT)  # completes in the kernel's backlog
            clients.append(late)
            late.send(b"late %d" % i)
            late.shutdown_write()
        stopper.start()
        wait_until(lambda: server._engine is not None and server._engine._stop.deadline is not None, what="stop")
        release.touch()
        assert list(holder) == [b"HOLD"]
        for i, late in enumerate(clients[1:]):
            assert list(late) == [b"LATE %d" % i]
    finally:
        release.touch()
        for client in clients:
            client.close()
        if stopper.is_alive():
            stopper.join(TIMEOUT)
        server.stop(timeout=1.0)


def test_threads_engine_survives_a_thread_that_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process out of threads pauses accepting, keeps the connection, and serves it later."""
    with Server(echo, "127.0.0.1:0", engine="threads") as server:
        real_start = threading.Thread.start
        failures = [RuntimeError("can't start new thread")]

        def start_or_fail(self: threading.Thread) -> None:
            if failures and self.name.startswith("connecteur "):
                raise failures.pop()
            real_start(self)

        monkeypatch.setattr(threading.Thread, "start", start_or_fail)
        with connect(server.address, timeout=TIMEOUT) as unlucky:
            assert unlucky.request(b"first") == b"first"  # after the pause, not lost
        assert not failures
        with connect(server.address, timeout=TIMEOUT) as conn:
            assert conn.request(b"second") == b"second"
        wait_until(lambda: server.stats.active == 0, what="both connections closed")
        stats = server.stats
        assert (stats.accepted, stats.rejected, stats.errors, stats.messages_in) == (2, 0, 0, 2)
        assert not server._counters._traffic  # every connection's Traffic retired, the one that never started too


def test_peer_send_inside_the_handler_keeps_its_place_among_the_replies(serve: Serve) -> None:
    class Narrator:
        def received(self, peer: Peer, message: bytes) -> bytes:
            if message == b"b":
                peer.send(b"note before B")
            return message.upper()

    server = serve(Narrator())
    with connect(server.address, timeout=TIMEOUT) as conn:
        conn.send_many([b"a", b"b", b"c"])  # one write: usually one read on the server
        assert [conn.recv() for _ in range(4)] == [b"A", b"note before B", b"B", b"C"]


def test_through_a_proxy_that_fragments_to_one_byte_both_ways(serve: Serve) -> None:
    """The HOWTO's warning, reproduced: every byte its own segment, both directions."""
    from connecteur.tools.proxy import Proxy

    server = serve(upper, framing=Netstring())
    messages = [b"", b"x", b"fragmented message", bytes(range(256))]
    with (
        Proxy(server.address, fragment=1) as proxy,
        connect(proxy.address, framing=Netstring(), timeout=TIMEOUT) as conn,
    ):
        conn.send_many(messages)
        conn.shutdown_write()  # the proxy forwards the half-close; replies still come back
        assert list(conn) == [m.upper() for m in messages]


def test_replies_before_a_failing_message_are_sent_before_the_close(serve: Serve) -> None:
    server = serve(fragile)
    with connect(server.address, timeout=TIMEOUT) as conn:
        conn.send_many([b"before", b"boom", b"after"])  # one write: usually one read on the server
        assert conn.recv() == b"before"
        with pytest.raises(ConnectionClosed):
            conn.recv()
