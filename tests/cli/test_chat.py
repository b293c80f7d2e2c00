"""The `Chat` app on every one-process engine, `connecteur chat`, and `serve --app chat`."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from connecteur import ConnectionClosed, Server, connect
from connecteur.address import format_address
from connecteur.framing import Netstring
from connecteur.tools.apps import Chat
from tests.cli.test_cli import assert_one_line_error, run, run_in_process
from tests.support import TIMEOUT

COMMAND = [sys.executable, "-m", "connecteur"]
ENGINES = ["select", "threads", "asyncio"]


class ChatCli:
    """`connecteur chat` in a subprocess; its output lines are collected by a thread."""

    def __init__(self, address: str, name: str) -> None:
        self.process = subprocess.Popen(
            [*COMMAND, "chat", address, "--name", name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self) -> str | None:
        """The next line printed, or None once its output ended."""
        return self._lines.get(timeout=TIMEOUT)

    def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def finish(self) -> tuple[int, str]:
        """End its input; return its exit status and standard error."""
        assert self.process.stdin is not None and self.process.stderr is not None
        self.process.stdin.close()
        status = self.process.wait(TIMEOUT)
        return status, self.process.stderr.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)  # the process is gone: its stdout ends
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            assert pipe is not None
            pipe.close()


@pytest.fixture
def chat_cli() -> Iterator[type[ChatCli]]:
    started: list[ChatCli] = []

    class Started(ChatCli):
        def __init__(self, address: str, name: str) -> None:
            super().__init__(address, name)
            started.append(self)

    try:
        yield Started
    finally:
        for client in started:
            client.stop()


@pytest.mark.parametrize("engine", ENGINES)
def test_each_message_reaches_the_others_under_its_senders_name(engine: str, chat_cli: type[ChatCli]) -> None:
    """Two `connect()` clients and one `connecteur chat`: welcomes, joins, texts and leaves, never one's own text."""
    with Server(Chat(), "127.0.0.1:0", engine=engine) as server, connect(server.address, timeout=TIMEOUT) as ann:
        ann.send(b"ann")
        assert ann.recv() == b"* welcome ann; nobody else is here"
        bob = chat_cli(format_address(server.address), "bob")
        assert bob.line() == "* welcome bob; here: ann"
        assert ann.recv() == b"* bob joined"
        with connect(server.address, timeout=TIMEOUT) as cat:
            cat.send(b"cat")
            assert cat.recv() == b"* welcome cat; here: ann, bob"
            assert (ann.recv(), bob.line()) == (b"* cat joined", "* cat joined")

            ann.send(b"hello from ann")
            assert (bob.line(), cat.recv()) == ("ann: hello from ann", b"ann: hello from ann")
            bob.write("hello from bob, caf\u00e9\n")
            assert ann.recv() == cat.recv() == "bob: hello from bob, caf\u00e9".encode()
            cat.send(b"hello from cat")
            assert (ann.recv(), bob.line()) == (b"cat: hello from cat", "cat: hello from cat")

            cat.shutdown_write()
            assert list(cat) == []  # nothing more, its own text included, until the server closes
        assert (ann.recv(), bob.line()) == (b"* cat left", "* cat left")
        assert bob.finish() == (0, "")
        assert bob.line() is None
        assert ann.recv() == b"* bob left"
        ann.shutdown_write()
        assert list(ann) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_a_name_taken_or_malformed_is_refused_and_closed(engine: str) -> None:
    with Server(Chat(), "127.0.0.1:0", engine=engine) as server, connect(server.address, timeout=TIMEOUT) as ann:
        ann.send(b"ann")
        assert ann.recv() == b"* welcome ann; nobody else is here"
        for name, reason in [(b"ann", b"the name 'ann' is taken"), (b"a:b", b"a name is 1 to 32 letters")]:
            with connect(server.address, timeout=TIMEOUT) as other:
                other.send_many([name, b"sneaking in after a refused name"])
                assert other.recv().startswith(b"* refused: " + reason)
                with pytest.raises(ConnectionClosed):
                    other.recv()
        ann.send(b"still alone?")
        ann.shutdown_write()
        assert list(ann) == []  # nobody joined, so nothing was announced


@pytest.mark.parametrize("engine", ENGINES)
def test_a_text_the_framing_cannot_carry_with_the_name_is_answered(engine: str) -> None:
    server = Server(Chat(), "127.0.0.1:0", engine=engine, framing=Netstring(max_size=60))
    with server, connect(server.address, framing=Netstring(), timeout=TIMEOUT) as ann:
        ann.send(b"ann")
        ann.recv()
        with connect(server.address, framing=Netstring(), timeout=TIMEOUT) as bob:
            bob.send(b"bob")
            bob.recv()
            assert ann.recv() == b"* bob joined"
            bob.send(b"x" * 58)  # 63 bytes with "bob: "
            assert bob.recv() == b"* not sent: message has 63 bytes; max_size is 60"
            bob.send(b"x" * 55)
            assert ann.recv() == b"bob: " + b"x" * 55


def test_chat_cli_exits_1_when_the_server_closes_first(chat_cli: type[ChatCli]) -> None:
    """A refused name: the notice is printed, then one line, while standard input is still open."""
    with Server(Chat(), "127.0.0.1:0") as server, connect(server.address, timeout=TIMEOUT) as ann:
        ann.send(b"ann")
        ann.recv()
        address = format_address(server.address)
        late = chat_cli(address, "ann")
        assert late.line() == "* refused: the name 'ann' is taken"
        assert late.process.wait(TIMEOUT) == 1
        assert late.process.stderr is not None
        assert late.process.stderr.read() == f"connecteur: {address} closed the chat\n"


@pytest.mark.parametrize("options", [["--engine", "processes"], ["--workers", "2"]])
def test_serve_refuses_chat_across_processes(
    options: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_in_process(monkeypatch, capsys, "serve", "127.0.0.1:0", "--app", "chat", *options)
    assert_one_line_error(result, 2, "--app chat", "one process")


def test_chat_cli_usage_and_network_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The usage errors in-process (`main(argv)`), the network error through the real command."""
    assert_one_line_error(run_in_process(monkeypatch, capsys, "chat", "127.0.0.1:1"), 2, "--name")
    assert_one_line_error(run_in_process(monkeypatch, capsys, "chat", "127.0.0.1:1", "--name", "a b"), 2, "'a b'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert_one_line_error(run("chat", f"127.0.0.1:{port}", "--name", "ann"), 1, f"127.0.0.1:{port}")


def test_serve_app_chat_serves_a_room() -> None:
    process = subprocess.Popen(
        [*COMMAND, "serve", "127.0.0.1:0", "--app", "chat", "--engine", "threads", "--framing", "line"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        match = re.fullmatch(r"serving chat on (\S+) \(framing: [^;]+; codec: [^)]+\)\n", process.stdout.readline())
        assert match, process.stderr.read() if process.poll() is not None else ""  # type: ignore[union-attr]
        result = run("chat", match.group(1), "--name", "solo", "--framing", "line")
        assert (result.returncode, result.stdout, result.stderr) == (0, "* welcome solo; nobody else is here\n", "")
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)
