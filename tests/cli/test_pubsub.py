"""The `PubSub` app on every one-process engine, `connecteur pub` / `connecteur sub`, and `serve --app pubsub`."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connecteur import Server, connect
from connecteur.address import format_address
from connecteur.framing import Decoder, LengthPrefixed
from connecteur.tools.apps import PubSub
from tests.support import TIMEOUT, wait_until

COMMAND = [sys.executable, "-m", "connecteur"]
ENGINES = ["select", "threads", "asyncio"]


@pytest.fixture(params=ENGINES)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with Server(PubSub(), "127.0.0.1:0", engine=request.param) as server:
        yield server


def test_subscribers_get_their_topics_publications_in_order(server: Server) -> None:
    with (
        connect(server.address, timeout=TIMEOUT) as ann,
        connect(server.address, timeout=TIMEOUT) as bob,
        connect(server.address, timeout=TIMEOUT) as publisher,
    ):
        assert ann.request(b"sub prices") == b"* subscribed prices"
        assert ann.request(b"sub news") == b"* subscribed news"
        assert bob.request(b"sub news") == b"* subscribed news"
        publisher.send_many([b"pub prices EUR 1.08", b"pub news hello", b"pub weather rain", b"pub news"])
        assert [ann.recv() for _ in range(3)] == [b"prices EUR 1.08", b"news hello", b"news"]
        assert [bob.recv() for _ in range(2)] == [b"news hello", b"news"]
        assert ann.request(b"unsub news") == b"* unsubscribed news"
        publisher.send(b"pub news later")
        assert bob.recv() == b"news later"
        publisher.send(b"pub prices EUR 1.09")
        assert ann.recv() == b"prices EUR 1.09"  # not "news later": unsubscribed


def test_bad_commands_get_an_error_and_the_connection_stays(server: Server) -> None:
    with connect(server.address, timeout=TIMEOUT) as client:
        assert client.request(b"subscribe x").startswith(b"* error: commands are")
        assert client.request(b"sub a b").startswith(b"* error: a topic is")
        assert client.request(b"pub " + b"t" * 65 + b" x").startswith(b"* error: a topic is")
        assert client.request(b"sub ok") == b"* subscribed ok"


def test_a_closed_subscriber_is_forgotten() -> None:
    app = PubSub()
    with Server(app, "127.0.0.1:0") as server:
        with connect(server.address, timeout=TIMEOUT) as client:
            assert client.request(b"sub t") == b"* subscribed t"
            assert repr(app) == "<PubSub 1 topics>"
        wait_until(lambda: repr(app) == "<PubSub 0 topics>", what="the topic forgotten")


def test_subscriptions_per_client_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PubSub, "MAX_SUBSCRIPTIONS", 2)
    with Server(PubSub(), "127.0.0.1:0") as server, connect(server.address, timeout=TIMEOUT) as client:
        assert client.request(b"sub a") == b"* subscribed a"
        assert client.request(b"sub b") == b"* subscribed b"
        assert client.request(b"sub c") == b"* error: at most 2 topics per client"
        assert client.request(b"sub a") == b"* subscribed a"  # already held: no more


def test_a_subscriber_that_does_not_read_misses_publications_and_slows_no_one(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    options = {"slow_consumer": "drop"}
    with Server(PubSub(), f"unix:{path}", **options) as server:  # Unix: the kernel takes little for the slow one
        slow, fast = unix_client(path), unix_client(path)
        with slow, fast, connect(server.address, timeout=TIMEOUT) as publisher:
            slow.sendall(LengthPrefixed().encode(b"sub t"))
            wait_until(lambda: any(peer.data.get("pubsub_topics") for peer in server.peers), what="subscribed")
            (slow_peer,) = [peer for peer in server.peers if peer.data.get("pubsub_topics")]
            decoder = LengthPrefixed().decoder()
            fast.sendall(LengthPrefixed().encode(b"sub t"))
            assert read_messages(fast, decoder, 1) == [b"* subscribed t"]
            count, batch, received = 3000, 100, []  # 3 MiB: over the slow one's kernel buffer and high_water
            for start in range(0, count, batch):  # the fast one reads each batch before the next is published
                publisher.send_many(b"pub t %04d" % index + b"." * 1024 for index in range(start, start + batch))
                received += read_messages(fast, decoder, batch)
            assert [message[2:6] for message in received] == [b"%04d" % index for index in range(count)]
            assert slow_peer.dropped > 0 and server.stats.dropped == slow_peer.dropped


def unix_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(TIMEOUT)
    sock.connect(str(path))
    return sock


def read_messages(sock: socket.socket, decoder: Decoder, count: int) -> list[bytes]:
    """Read `count` messages from `sock`, in reads as large as the socket gives."""
    messages: list[bytes] = []
    while len(messages) < count:
        data = sock.recv(1 << 18)
        assert data, f"closed after {len(messages)} messages"
        messages.extend(decoder.feed(data))
    return messages


# --- the command line ------------------------------------------------------------------


def test_pub_and_sub_on_the_command_line() -> None:
    with Server(PubSub(), "127.0.0.1:0") as server:
        address = format_address(server.address)
        sub = subprocess.Popen(
            [*COMMAND, "sub", address, "prices", "news", "--count", "3"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert sub.stderr is not None
            assert sub.stderr.readline() == "subscribed to prices, news\n"
            published = subprocess.run(
                [*COMMAND, "pub", address, "prices", "EUR 1.08", "USD 1.00"], capture_output=True, timeout=TIMEOUT
            )
            assert published.returncode == 0, published.stderr
            piped = subprocess.run(
                [*COMMAND, "pub", address, "news"], input=b"hello\n", capture_output=True, timeout=TIMEOUT
            )
            assert piped.returncode == 0, piped.stderr
            out, _ = sub.communicate(timeout=TIMEOUT)
            assert (sub.returncode, out) == (0, "prices EUR 1.08\nprices USD 1.00\nnews hello\n")
        finally:
            sub.kill()
            sub.wait(TIMEOUT)


def test_sub_against_another_app_fails_in_one_line() -> None:
    with Server(lambda message: message, "127.0.0.1:0") as server:
        result = subprocess.run(
            [*COMMAND, "sub", format_address(server.address), "t"], capture_output=True, text=True, timeout=TIMEOUT
        )
    assert result.returncode == 1
    assert "is it serving --app pubsub?" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("where", [["--workers", "2"], ["--engine", "processes"]])
def test_serve_refuses_pubsub_across_processes(where: list[str]) -> None:
    result = subprocess.run(
        [*COMMAND, "serve", "127.0.0.1:0", "--app", "pubsub", *where], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert result.stderr == (
        "connecteur: --app pubsub needs every connection in one process: "
        "use --engine select, threads or asyncio, one worker\n"
    )
