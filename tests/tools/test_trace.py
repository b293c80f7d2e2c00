"""The message trace: byte-exact relaying, one event per message, framing errors that never stop the bytes."""

from __future__ import annotations

import hashlib
import json
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from connecteur.cli import main
from connecteur.codecs import Json
from connecteur.framing import CloseDelimited, Delimited, Framing, LengthPrefixed
from connecteur.tools.trace import Trace, TraceEvent, format_json, format_text
from tests.support import TIMEOUT, recv_until_closed, wait_until

COMMAND = [sys.executable, "-m", "connecteur"]
LENGTH = LengthPrefixed()


class Peer:
    """One end of a traced link, on a real socket: writes `data` in small random chunks while it reads.

    With `reply_after_eof`, it writes only once it has read the other side's
    EOF, which a relay passes on only as a half-close.
    """

    def __init__(self, sock: socket.socket, data: bytes, seed: int, *, reply_after_eof: bool = False) -> None:
        sock.settimeout(TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each chunk its own segment, mostly
        self.sock = sock
        self._data = data
        self._rng = random.Random(seed)
        self._reply_after_eof = reply_after_eof
        self.received = hashlib.sha256()
        self.received_size = 0
        self._got_eof = threading.Event()
        self._threads = [threading.Thread(target=self._read, daemon=True), threading.Thread(target=self._write)]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def _write(self) -> None:
        if self._reply_after_eof:
            self._got_eof.wait(TIMEOUT)
        pos = 0
        while pos < len(self._data):
            size = self._rng.randint(1, 300)
            self.sock.sendall(self._data[pos : pos + size])
            pos += size
        self.sock.shutdown(socket.SHUT_WR)

    def _read(self) -> None:
        while chunk := self.sock.recv(65536):
            self.received.update(chunk)
            self.received_size += len(chunk)
        self._got_eof.set()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "a peer never finished"
        self.sock.close()


@contextmanager
def traced(framing: Framing, **options: object) -> Iterator[tuple[socket.socket, socket.socket, list[TraceEvent]]]:
    """A target listening, a trace in front of it, a client connected through: (client, target side, events)."""
    events: list[TraceEvent] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        with Trace(listener.getsockname(), framing=framing, report=events.append, **options) as trace:  # type: ignore[arg-type]
            client = socket.create_connection(trace.address, timeout=TIMEOUT)
            try:
                target, _ = listener.accept()
            except BaseException:
                client.close()
                raise
            with client, target:
                yield client, target, events


def wire(framing: Framing, messages: list[bytes]) -> bytes:
    return b"".join(framing.encode(message) for message in messages)


def random_messages(rng: random.Random, count: int) -> list[bytes]:
    return [rng.randbytes(rng.choice([0, 1, rng.randint(2, 100), rng.randint(100, 5000)])) for _ in range(count)]


def exchange(
    framing: Framing, upstream: bytes, downstream: bytes, **options: object
) -> tuple[list[TraceEvent], Peer, Peer]:
    """Relay `upstream` (client to target) and `downstream` through a trace; return its events once closed."""
    with traced(framing, **options) as (client_sock, target_sock, events):
        client = Peer(client_sock, upstream, seed=1)
        target = Peer(target_sock, downstream, seed=2, reply_after_eof=True)
        client.join()
        target.join()
        wait_until(lambda: any(event.kind == "close" for event in events), what="the trace's close event")
    assert target.received.digest() == hashlib.sha256(upstream).digest(), "client -> target bytes changed"
    assert client.received.digest() == hashlib.sha256(downstream).digest(), "target -> client bytes changed"
    return events, client, target


def of(events: list[TraceEvent], kind: str, direction: str = "") -> list[TraceEvent]:
    return [event for event in events if event.kind == kind and (not direction or event.direction == direction)]


# --- the bytes, and one event per message ----------------------------------------------


def test_every_byte_passes_both_ways_and_each_message_is_one_event() -> None:
    """Random-size messages, written in random small chunks both ways: hashes match, events match the messages.

    The target replies only after the client's EOF: the half-close is relayed as one.
    """
    rng = random.Random(22)
    up, down = random_messages(rng, 150), random_messages(rng, 120)
    events, _, _ = exchange(LENGTH, wire(LENGTH, up), wire(LENGTH, down))
    assert [event.size for event in of(events, "message", "->")] == [len(m) for m in up]
    assert [event.size for event in of(events, "message", "<-")] == [len(m) for m in down]
    assert [event.preview for event in of(events, "message", "->")] == [m[:64] for m in up]
    assert not of(events, "error")
    assert events[0].kind == "open" and events[-1].kind == "close"
    assert events[-1].detail == f"{len(wire(LENGTH, up))} B ->, {len(wire(LENGTH, down))} B <-"
    assert {event.connection for event in events} == {1}


def test_a_message_is_forwarded_before_it_is_reported() -> None:
    """The relay comes first: when the report runs (on the relay's thread), the target can already read the message.

    (Once the connection to the target is made: until then, a client's bytes
    are queued, and reporting them delays them by the report's time.)

    Were decoding first, the target's recv below would wait for bytes held by
    the very thread it blocks, and time out.
    """
    seen: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        accepted: list[socket.socket] = []

        def report(event: TraceEvent) -> None:
            if event.kind == "message" and event.direction == "->":
                target = accepted[0]
                target.settimeout(TIMEOUT)
                seen.append(target.recv(100))

        with (
            Trace(listener.getsockname(), framing=LENGTH, report=report) as trace,
            socket.create_connection(trace.address, timeout=TIMEOUT) as client,
        ):
            accepted.append(listener.accept()[0])
            with accepted[0]:
                # A reply first: once it is through, the relay's connection to
                # the target is made (before, a client's bytes wait for it).
                accepted[0].sendall(LENGTH.encode(b"hi"))
                assert client.recv(100) == LENGTH.encode(b"hi")
                client.sendall(LENGTH.encode(b"first"))
                wait_until(lambda: seen, what="the report")
    assert seen == [LENGTH.encode(b"first")]


def test_a_framing_error_mid_stream_is_reported_once_and_the_bytes_still_pass() -> None:
    """Garbage after two good messages: one error for that direction; the other direction is still decoded."""
    framing = LengthPrefixed(max_size=1000)
    rng = random.Random(5)
    garbage = b"GET / HTTP/1.0\r\n\r\n" + rng.randbytes(20_000)
    up = wire(framing, [b"one", b"two"]) + garbage + wire(framing, [b"never decoded"])
    down_messages = random_messages(random.Random(6), 30)
    down_messages = [message[:1000] for message in down_messages]
    events, _, _ = exchange(framing, up, wire(framing, down_messages))
    assert [event.preview for event in of(events, "message", "->")] == [b"one", b"two"]
    (error,) = of(events, "error")
    assert error.direction == "->"
    assert "1195725856 bytes" in error.detail and "'GET '" in error.detail  # the framing's own words
    assert [event.size for event in of(events, "message", "<-")] == [len(m) for m in down_messages]


def test_a_message_over_max_size_passes_whole_and_stops_decoding_that_direction() -> None:
    """A valid 200 KB message with max_size 1 KiB: reported at its header, relayed byte for byte."""
    framing = LengthPrefixed(max_size=1024)
    big = random.Random(7).randbytes(200_000)
    up = wire(framing, [b"small"]) + LENGTH.encode(big) + wire(framing, [b"after"])
    events, _, _ = exchange(framing, up, b"")
    assert [event.preview for event in of(events, "message", "->")] == [b"small"]
    (error,) = of(events, "error", "->")
    assert "200000 bytes; max_size is 1024" in error.detail


def test_a_line_with_no_end_is_an_error_once_its_bytes_pass_max_size() -> None:
    """A delimited framing's bound: the decoder gives up after max_size bytes, never holds the rest."""
    framing = Delimited(b"\n", max_size=4096)
    up = b"short\n" + b"x" * 100_000 + b"\nlast\n"
    events, _, _ = exchange(framing, up, b"")
    assert [event.preview for event in of(events, "message", "->")] == [b"short"]
    (error,) = of(events, "error", "->")
    assert "max_size is 4096" in error.detail


def test_the_end_of_the_stream_completes_a_close_framing_or_is_a_truncation() -> None:
    """eof() is fed too: a close-delimited message is reported at the EOF; a cut length prefix, as an error."""
    events, _, _ = exchange(CloseDelimited(), b"all of it", b"")
    assert [event.preview for event in of(events, "message", "->")] == [b"all of it"]
    events, _, _ = exchange(LENGTH, LENGTH.encode(b"whole") + LENGTH.encode(b"cut")[:-1], b"")
    assert [event.preview for event in of(events, "message", "->")] == [b"whole"]
    (error,) = of(events, "error", "->")
    assert error.detail == "the stream ended inside a message (6 bytes of it received)"


def test_connections_are_numbered_and_an_unreachable_target_is_a_close_event() -> None:
    events: list[TraceEvent] = []
    with socket.create_server(("127.0.0.1", 0)) as probe:
        address = probe.getsockname()  # closed below: nothing listens there any more
    with Trace(address, framing=LENGTH, report=events.append) as trace:
        for _ in range(2):
            with socket.create_connection(trace.address, timeout=TIMEOUT) as client:
                client.settimeout(TIMEOUT)
                assert client.recv(1) == b""
        wait_until(lambda: len(of(events, "close")) == 2, what="two close events")
    assert [(event.connection, event.kind) for event in events] == [
        (1, "open"),
        (1, "close"),
        (2, "open"),
        (2, "close"),
    ]
    assert events[1].detail.startswith("the target could not be reached")


def test_a_failing_report_is_logged_and_relaying_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    reported: list[TraceEvent] = []

    def report(event: TraceEvent) -> None:
        reported.append(event)
        if len(of(reported, "message")) == 1:
            raise RuntimeError("a bug in the callback")

    up = wire(LENGTH, [b"one", b"two"])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        with (
            Trace(listener.getsockname(), framing=LENGTH, report=report) as trace,
            socket.create_connection(trace.address, timeout=TIMEOUT) as client,
        ):
            target, _ = listener.accept()
            with target:
                client.sendall(up)
                client.shutdown(socket.SHUT_WR)
                target.settimeout(TIMEOUT)
                assert recv_until_closed(target) == up
                target.shutdown(socket.SHUT_WR)
                wait_until(lambda: any(event.kind == "close" for event in reported), what="the close event")
    assert [event.preview for event in of(reported, "message")] == [b"one", b"two"]
    assert "a bug in the callback" in caplog.text


# --- previews and lines ------------------------------------------------------------------


def event(message: bytes, preview: int = 8, value: str | None = None, detail: str = "") -> TraceEvent:
    return TraceEvent(0.0, 3, "message", "<-", len(message), message[:preview], value, detail)


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (b"hello", "'hello'"),
        (b"a\tb\r", "'a\\tb\\r'"),
        (b"\x00\x01\xffabc", "00 01 ff 61 62 63"),
        (b"0123456789", "'01234567'..."),
        ("abcdefg\u00e9".encode(), "'abcdefg'..."),  # "\u00e9" cut in two: text up to it
        (b"\xe2\x80\xa8x", "e2 80 a8 78"),  # U+2028 would break a line
        (b"", "''"),
    ],
)
def test_text_lines_show_text_quoted_and_anything_else_in_hex(message: bytes, shown: str) -> None:
    line = format_text(event(message))
    assert re.fullmatch(rf"\d\d:\d\d:\d\d\.\d{{6}} <- #3 {len(message)} B (.*)", line), line
    assert line.split(" B ", 1)[1] == shown


def test_json_lines_parse_and_carry_the_same_fields() -> None:
    entry = json.loads(format_json(event(b"\x00abcdefghij", value="{'a': 1}")))
    assert entry == {
        "time": "1970-01-01T00:00:00.000000+00:00",
        "kind": "message",
        "connection": 3,
        "direction": "<-",
        "size": 11,
        "truncated": True,
        "preview": "0061626364656667",
        "preview_format": "hex",
        "value": "{'a': 1}",
    }
    line = format_json(event("\u2028".encode(), detail="bad"))
    assert "\u2028" not in line and json.loads(line)["detail"] == "bad"


def test_a_codec_adds_the_value_truncated_or_why_it_failed() -> None:
    up = wire(LENGTH, [b'{"a": [1, 2]}', b"not json", b'"' + b"x" * 1000 + b'"', b'{"z": 1, "a": 2}'])
    events, _, _ = exchange(LENGTH, up, b"", codec=Json(), preview=16)
    first, bad, long, unsorted = of(events, "message", "->")
    assert first.value == "{'a': [1, 2]}" and not first.detail
    assert bad.value is None and "not JSON" in bad.detail
    assert long.value is not None and len(long.value) <= 16 + 3 and "..." in long.value
    assert unsorted.value == "{'z': 1, 'a': 2}"  # as sent: reprlib alone would sort the keys
    assert format_text(first).endswith(""" 13 B '{"a": [1, 2]}' = {'a': [1, 2]}""")


class BuggyCodec:
    def encode(self, value: object) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> object:
        return 1 // len(data)


def test_a_codec_that_raises_its_own_error_is_reported_and_relaying_goes_on() -> None:
    events, _, _ = exchange(LENGTH, wire(LENGTH, [b"", b"x"]), b"", codec=BuggyCodec())
    empty, one = of(events, "message", "->")
    assert (empty.value, empty.detail) == (None, "ZeroDivisionError: integer division or modulo by zero")
    assert (one.value, one.detail) == ("1", "")


# --- the command line ----------------------------------------------------------------------


def start_cli(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*COMMAND, "trace", "127.0.0.1:0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, process.stdout.readline()


def read_lines(process: subprocess.Popen[str], count: int) -> list[str]:
    """The next `count` lines of the process's stdout, each waited for at most TIMEOUT s."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: [lines.put(stdout.readline()) for _ in range(count)], daemon=True).start()
    return [lines.get(timeout=TIMEOUT) for _ in range(count)]


def test_cli_prints_json_lines_for_each_message_and_exits_0_on_sigint() -> None:
    upstream = b'{"n": 1}\n{"n": 2}\n'
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        process, first = start_cli(target, "--framing", "line", "--codec", "json", "--json")
        try:
            start = json.loads(first)
            assert start["kind"] == "start" and start["target"] == target and start["codec"] == "json", first
            host, port = start["listen"].rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=TIMEOUT) as client:
                peer, _ = listener.accept()
                with peer:
                    client.sendall(upstream)
                    client.shutdown(socket.SHUT_WR)
                    peer.settimeout(TIMEOUT)
                    received = b""
                    while chunk := peer.recv(65536):
                        received += chunk
                    assert received == upstream
                    peer.sendall(b'"ok"\n')
            lines = [json.loads(line) for line in read_lines(process, 5)]  # open, 2 + 1 messages, close
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=TIMEOUT)
    assert (process.returncode, out, err) == (0, "", "")
    messages = [line for line in lines if line["kind"] == "message"]
    assert [(m["direction"], m["size"], m["value"]) for m in messages] == [
        ("->", 8, "{'n': 1}"),
        ("->", 8, "{'n': 2}"),
        ("<-", 4, "'ok'"),
    ]
    assert [line["kind"] for line in lines].count("close") == 1


def test_cli_text_start_line_names_the_framing_and_codec_and_sigterm_exits_0() -> None:
    process, first = start_cli("127.0.0.1:9", "--framing", "field:4:2")
    try:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=TIMEOUT)
    assert re.fullmatch(
        r"tracing 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:9 \(framing: 2-byte length field at offset 4; codec: none\)\n",
        first,
    )
    assert process.returncode == 0


def test_cli_ends_with_status_1_when_its_reader_leaves() -> None:
    """``connecteur trace ... | head -1``: the first line it cannot print ends it, quietly."""
    process, first = start_cli("127.0.0.1:9")
    try:
        assert first.startswith("tracing 127.0.0.1:")
        listen = first.split()[1]
        assert process.stdout is not None
        process.stdout.close()
        host, port = listen.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=TIMEOUT).close()  # an open line to print
        assert process.stderr is not None
        with process.stderr:
            err = process.stderr.read()
        process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=TIMEOUT)
    assert (process.returncode, err) == (1, "")


def assert_fails_in_one_line(capsys: pytest.CaptureFixture[str], args: list[str], status: int, *words: str) -> None:
    """In process, to spare a subprocess's start-up: the exit status and one ``connecteur: ...`` line on stderr."""
    assert main(["trace", *args]) == status
    err = capsys.readouterr().err
    assert err.startswith("connecteur: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--framing", "nope"], ["trace", "unknown framing"]),
        (["--framing", "fixed:100", "--max-size", "10"], ["trace: --framing fixed:100"]),
        (["--preview", "-1"], ["--preview"]),
        (["--codec", "pickle"], ["unknown codec"]),
    ],
)
def test_cli_bad_options_are_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], args: list[str], words: list[str]
) -> None:
    assert_fails_in_one_line(capsys, ["127.0.0.1:0", "127.0.0.1:9", *args], 2, *words)


def test_cli_a_busy_listen_address_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A failure, not a usage error: status 1, as for serve and proxy."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        assert_fails_in_one_line(capsys, [address, "127.0.0.1:9"], 1, f"cannot listen on {address}")
