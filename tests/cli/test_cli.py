"""The command line, through real subprocesses and in-process `main(argv)`."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from connecteur.cli import main
from connecteur.cli._options import framing_by_name, size_argument
from connecteur.framing import Netstring
from connecteur.server import Server
from connecteur.server.workers import MAX_DEATHS
from tests.support import TIMEOUT, kill_children, recv_until_closed

COMMAND = [sys.executable, "-m", "connecteur"]


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT * 3)


def run_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`main(argv)` for a usage error, a subprocess's start saved; a server it would build fails the test instead.

    So an option checked too late fails at once rather than serving (or
    hanging the tests); `test_unknown_framing_is_one_line_and_status_2` runs
    the real command, for the status and the one line as the shell sees them.
    """
    monkeypatch.setattr("connecteur.cli.serve.Server", lambda *_, **__: pytest.fail("serve got past its checks"))
    status = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


def send_here(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``connecteur send`` in-process (`main(argv)`), where a test is about the server or the output.

    A subprocess's start saved each time (seconds on a busy machine);
    `test_serve_and_send_arguments_then_sigint_exits_zero` and
    `test_send_reads_stdin_lines` run send as the shell does.
    """
    capsys.readouterr()  # what came before is not this command's
    status = main(["send", *args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["send", *args], status, captured.out, captured.err)


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert result.returncode == status, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("connecteur: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


class Served:
    def __init__(self, process: subprocess.Popen[str], address: str) -> None:
        self.process = process
        self.address = address


@pytest.fixture
def serve_cli() -> Iterator[object]:
    processes: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Served:
        process = subprocess.Popen(
            [*COMMAND, "serve", "127.0.0.1:0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"serving \w+ on (\S+) \(framing: [^;]+; codec: [^)]+\)\n", line)
        assert match, (line, process.stderr.read() if process.poll() is not None else "")  # type: ignore[union-attr]
        return Served(process, match.group(1))

    try:
        yield start
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=TIMEOUT)


def test_serve_and_send_arguments_then_sigint_exits_zero(serve_cli) -> None:  # type: ignore[no-untyped-def]
    served = serve_cli("--app", "upper")
    result = run("send", served.address, "hello", "wörld", "")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "HELLO\nWöRLD\n\n"
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(TIMEOUT) == 0


def test_send_reads_stdin_lines(serve_cli) -> None:  # type: ignore[no-untyped-def]
    served = serve_cli("--app", "echo", "--framing", "netstring")
    result = run("send", served.address, "--framing", "netstring", stdin="one\ntwo\r\nthree\n")
    assert (result.returncode, result.stdout) == (0, "one\ntwo\nthree\n")


def test_sigterm_stops_the_server_gracefully(serve_cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    served = serve_cli("--framing", "line")
    assert send_here(capsys, served.address, "--framing", "line", "x").stdout == "x\n"
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(TIMEOUT) == 0


def test_discard_app_sends_no_reply(serve_cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    served = serve_cli("--app", "discard")
    result = send_here(capsys, served.address, "a", "b", "--allow-unanswered")
    assert (result.returncode, result.stdout) == (0, "")


def test_undecodable_reply_bytes_are_escaped(serve_cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    served = serve_cli("--framing", "fixed:2")
    result = send_here(capsys, served.address, "--framing", "fixed:2", "\u00e9")  # é is two bytes in UTF-8
    assert result.stdout == "\u00e9\n"
    raw = subprocess.run(
        [*COMMAND, "send", served.address, "--framing", "fixed:2"], input=b"\xff\xfe\n", capture_output=True,
        timeout=TIMEOUT * 3,
    )  # fmt: skip
    assert raw.stdout == b"\\xff\\xfe\n"


def test_unix_socket_address(tmp_path: object, serve_cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    path = f"{tmp_path}/cli.sock"
    process = subprocess.Popen([*COMMAND, "serve", f"unix:{path}", "--app", "upper"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert (
            process.stdout.readline() == f"serving upper on unix:{path} (framing: 4-byte length prefix; codec: none)\n"
        )
        assert send_here(capsys, f"unix:{path}", "sock").stdout == "SOCK\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
        assert not os.path.exists(path)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


@pytest.mark.parametrize("command", ["serve", "send"])
@pytest.mark.parametrize("address", ["nowhere", "localhost:99999", "::1:80", "unix:"])
def test_bad_address_is_one_line_and_status_2(
    command: str, address: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_in_process(monkeypatch, capsys, command, address)
    assert_one_line_error(result, 2, repr(address.rpartition(":")[2]) if "999" in address else "")


@pytest.mark.parametrize("command", ["serve", "send"])
def test_unknown_framing_is_one_line_and_status_2(command: str) -> None:
    assert_one_line_error(run(command, "127.0.0.1:1", "--framing", "bogus"), 2, "'bogus'", "netstring")


def test_unreachable_server_names_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert_one_line_error(send_here(capsys, f"127.0.0.1:{port}", "x"), 1, f"127.0.0.1:{port}")


def test_busy_port_is_one_line_and_status_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(run("serve", f"127.0.0.1:{port}"), 1, f"127.0.0.1:{port}")


def test_serve_exits_1_when_its_workers_keep_dying(serve_cli) -> None:  # type: ignore[no-untyped-def]
    """Never 0: a supervisor restarting on failure (systemd's Restart=on-failure) must restart it."""
    served = serve_cli("--workers", "2")
    kill_children(served.process.pid, MAX_DEATHS)
    _, stderr = served.process.communicate(timeout=TIMEOUT)
    assert served.process.returncode == 1, stderr
    *deaths, last = stderr.splitlines()
    assert re.fullmatch(r"connecteur: server stopped: 5 workers died within 10 s; the last, .* by SIGKILL", last)
    assert len(deaths) == MAX_DEATHS and all("was killed by SIGKILL" in line for line in deaths), stderr
    assert "Traceback" not in stderr


def test_framing_error_from_the_server_is_one_line_and_status_1() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        process = subprocess.Popen(
            [*COMMAND, "send", f"127.0.0.1:{port}", "--framing", "netstring", "x"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(Netstring().encode(b"fine") + b"zz:garbage")
                conn.recv(100)
            stdout, stderr = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 1
    assert stdout == "fine\n"
    assert stderr.startswith("connecteur: receiving from") and "netstring length" in stderr
    assert len(stderr.splitlines()) == 1


def test_main_in_process_reports_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "127.0.0.1:0", "--idle-timeout", "-1"]) == 2
    assert capsys.readouterr().err.startswith("connecteur: ")
    assert main([]) == 2
    assert main(["--version"]) == 0
    assert "connecteur" in capsys.readouterr().out


def test_demo_runs_and_checks_itself() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Every step gave the expected result." in result.stdout
    assert "FAIL" not in result.stdout


def test_codecs_on_the_command_line(serve_cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    served = serve_cli("--codec", "json")
    result = send_here(capsys, served.address, "--codec", "json", '{"a": [1, "é"]}', "3")
    assert (result.returncode, result.stdout) == (0, '{"a": [1, "é"]}\n3\n')
    bad = send_here(capsys, served.address, "--codec", "json", "{not json")
    assert_one_line_error(bad, 2, "not JSON")
    text = serve_cli("--codec", "text", "--app", "upper")
    assert send_here(capsys, text.address, "--codec", "text", "héllo").stdout == "HÉLLO\n"
    assert_one_line_error(send_here(capsys, text.address, "--codec", "yaml"), 2, "'yaml'", "json, text, msgpack")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda stop: stop.name)
def test_a_second_signal_stops_serve_at_once(serve_cli, stop: signal.Signals) -> None:  # type: ignore[no-untyped-def]
    """An idle client holds the graceful stop (5 s); the second signal ends it now, and the status says so."""
    served = serve_cli()
    host, port = served.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as client:
        served.process.send_signal(stop)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:  # until the graceful stop has begun: the listener is closed
            try:
                socket.create_connection((host, int(port)), timeout=TIMEOUT).close()
            except (ConnectionRefusedError, ConnectionResetError):
                break
            time.sleep(0.01)
        served.process.send_signal(stop)
        status = served.process.wait(TIMEOUT)
        client.settimeout(TIMEOUT)
        assert client.recv(1) == b""
    assert served.process.stderr is not None
    if stop == signal.SIGINT:
        assert (status, served.process.stderr.read()) == (130, "connecteur: interrupted\n")
    else:
        assert (status, served.process.stderr.read()) == (-signal.SIGTERM, "")


# --- --max-size and bounded framings ------------------------------------------------


_ABSURD = [
    (["--framing", "fixed:1000000000"], ["fixed:1000000000", "16777216", "--max-size"]),
    (["--framing", "fixed:" + "9" * 30], ["9" * 27, "16777216"]),
    (["--framing", "fixed:" + "9" * 5000], ["999..."]),
    (["--framing", "fixed:2000", "--max-size", "1KiB"], ["2000", "1024"]),
    (["--framing", "digits:30"], ["1 to 20 digits"]),
    (["--framing", "digits:" + "9" * 5000], ["1 to 20 digits"]),
    (["--framing", "fixed:0"], ["positive"]),
    (["--framing", "field:0:5"], ["'field:0:5'", "field:OFFSET:SIZE", "1, 2, 3, 4 or 8"]),
    (["--framing", "field:x:2"], ["'field:x:2'", "OFFSET"]),
    (["--framing", "field:0:2::2"], ["ADJUSTMENT"]),
    (["--framing", "field:" + "9" * 5000], ["999...", "field:OFFSET:SIZE"]),
    (["--framing", "field:0:1:-300"], ["describes no frame"]),
    (["--framing", "lines:5"], ["'lines:5'", "lines"]),
    (["--max-size", "0"], ["--max-size", "'0'"]),
    (["--max-size", "-5"], ["'-5'"]),
    (["--max-size", "lots"], ["'lots'"]),
    (["--max-size", "1e6"], ["'1e6'"]),
    (["--max-size", "16MB"], ["'16MB'"]),
    (["--max-size", "9" * 30], ["positive number of bytes"]),
]


@pytest.mark.parametrize(("options", "words"), _ABSURD)
def test_serve_refuses_absurd_sizes_in_one_line_with_status_2(
    options: list[str], words: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Were a check missing, building the server would fail the test (see `run_in_process`), not hang it."""
    assert_one_line_error(run_in_process(monkeypatch, capsys, "serve", "127.0.0.1:0", *options), 2, "serve: ", *words)


@pytest.mark.parametrize("command", ["send", "chat"])
@pytest.mark.parametrize(("options", "words"), _ABSURD)
def test_clients_refuse_absurd_sizes_in_one_line_with_status_2(
    command: str, options: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before connecting: nothing listens on port 1, so a check that came too late would fail with status 1."""
    more = ["x"] if command == "send" else ["--name", "ann"]
    assert main([command, "127.0.0.1:1", *more, *options]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"connecteur: {command}: "), err
    for word in words:
        assert word in err


@pytest.mark.parametrize(
    ("text", "size"), [("1", 1), ("65536", 65536), ("64KiB", 2**16), ("16MiB", 2**24), ("1gib", 2**30), ("10 B", 10)]
)
def test_max_size_takes_bytes_or_binary_units(text: str, size: int) -> None:
    assert size_argument(text) == size


@pytest.mark.parametrize(
    ("name", "max_size", "expected"),
    [
        ("length", None, 16 * 2**20),
        ("length", 1000, 1000),
        ("length:2", 2**20, 65535),
        ("line", None, 64 * 2**10),
        ("crlf", 10, 10),
        ("lines", None, 64 * 2**10),
        ("lines", 10, 10),
        ("field:4:2", None, 65541),  # Modbus/TCP: the 6-byte MBAP header and 65,535 bytes after it
        ("field:0:2:0:2", None, 65535),
        ("field:0:4le:-4:4", 1000, 1000),
        ("netstring", 1000, 1000),
        ("close", 1000, 1000),
        ("digits:10", None, 16 * 2**20),
        ("digits:10", 2**40, 10**10 - 1),
        ("digits:3", None, 999),
        ("fixed:16777216", None, 16 * 2**20),
        ("fixed:20000000", 2**25, 20_000_000),
    ],
)
def test_max_size_applies_to_the_chosen_framing(name: str, max_size: int | None, expected: int) -> None:
    assert framing_by_name(name, max_size).max_size == expected


def test_a_digits_10_server_refuses_a_ten_gigabyte_header(serve_cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """It used to accept it and wait for the 9,999,999,999 bytes; the close now comes at once."""
    served = serve_cli("--framing", "digits:10")
    host, _, port = served.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"9999999999" + b"x" * 100)
        assert recv_until_closed(sock) == b""
    assert send_here(capsys, served.address, "--framing", "digits:10", "ok").stdout == "ok\n"


def test_serve_on_oversize_skip_answers_the_messages_around_a_larger_one(  # type: ignore[no-untyped-def]
    serve_cli, capsys: pytest.CaptureFixture[str]
) -> None:
    served = serve_cli("--max-size", "1KiB", "--on-oversize", "skip")
    result = send_here(
        capsys, served.address, "--max-size", "1MiB", "--allow-unanswered", "first", "x" * 5000, "second"
    )
    assert (result.returncode, result.stdout) == (0, "first\nsecond\n"), result


def _grow(message: bytes) -> bytes:
    return b"y" * 300_000 if message == b"big" else message


def test_send_on_oversize_skip_drops_a_larger_reply(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """In process: a server whose replies the CLI cannot produce. The skipped reply counts as an answer."""
    server = Server(_grow, "127.0.0.1:0")
    server.start()
    try:
        address = f"127.0.0.1:{server.address[1]}"  # type: ignore[index]
        assert main(["send", address, "--max-size", "100", "--on-oversize", "skip", "first", "big", "second"]) == 0
    finally:
        server.stop(timeout=1.0)
    assert capsys.readouterr().out == "first\nsecond\n"
    (record,) = [r for r in caplog.records if r.name == "connecteur.client"]
    assert record.levelno == logging.WARNING
    assert re.fullmatch(
        r"skipping a message from 127\.0\.0\.1:\d+: length header announces 300000 bytes; max_size is 100",
        record.getMessage(),
    )


@pytest.mark.parametrize("command", ["serve", "send", "chat"])
@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            ["--framing", "netstring", "--on-oversize", "skip"],
            ["--framing netstring", "--on-oversize skip needs one of"],
        ),
        (["--framing", "fixed:4", "--on-oversize", "skip"], ["length, field, digits, line, crlf, lines, not fixed"]),
        (["--on-oversize", "drop"], ["--on-oversize", "'drop'", "close", "skip"]),
    ],
)
def test_on_oversize_errors_are_one_line_with_status_2(
    command: str, options: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before connecting or listening (nothing listens on port 1)."""
    more = {"serve": [], "send": ["x"], "chat": ["--name", "ann"]}[command]
    assert main([command, "127.0.0.1:1", *more, *options]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"connecteur: {command}: "), err
    for word in words:
        assert word in err


def test_serve_max_size_refuses_a_larger_message(serve_cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    served = serve_cli("--max-size", "1KiB")
    assert send_here(capsys, served.address, "x" * 1024).stdout == "x" * 1024 + "\n"
    refused = send_here(capsys, served.address, "--max-size", "1MiB", "x" * 1025)
    assert refused.stdout == ""  # the server closed the connection instead of echoing
    assert send_here(capsys, served.address, "still").stdout == "still\n"


def test_send_max_size_refuses_to_send_a_larger_message(serve_cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    served = serve_cli()
    assert_one_line_error(send_here(capsys, served.address, "--max-size", "4", "hello"), 1, "5 bytes", "max_size is 4")


@pytest.mark.parametrize("value", ["0", "-1", "lots", "16MB"])
def test_serve_refuses_a_nonsense_max_buffered_in_one_line(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_in_process(monkeypatch, capsys, "serve", "127.0.0.1:0", "--max-buffered", value)
    assert_one_line_error(result, 2, "serve: ", "--max-buffered", value)


def test_serve_passes_max_buffered_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--max-buffered 64MiB` reaches `Server(max_buffered=...)` (stopped before it serves)."""
    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def record(*args: object, **options: object) -> None:
        seen.update(options)
        raise Stop

    monkeypatch.setattr("connecteur.cli.serve.Server", record)
    with pytest.raises(Stop):
        main(["serve", "127.0.0.1:0", "--max-buffered", "64MiB"])
    assert seen["max_buffered"] == 64 * 2**20


# --- framings for peers from the wild ------------------------------------------------


def test_lines_server_answers_crlf_and_lf_peers(serve_cli) -> None:  # type: ignore[no-untyped-def]
    """A netcat-style peer sends \r\n and \n mixed; the echo comes back without the \r."""
    served = serve_cli("--app", "upper", "--framing", "lines")
    host, _, port = served.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"hello\r\nworld\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == b"HELLO\nWORLD\n"


def test_field_server_echoes_modbus_adus(serve_cli) -> None:  # type: ignore[no-untyped-def]
    """A hand-written Modbus/TCP request, cut inside its MBAP header, comes back whole."""
    served = serve_cli("--app", "echo", "--framing", "field:4:2")
    host, _, port = served.address.rpartition(":")
    adu = bytes.fromhex("0001 0000 0006 11 03 006B 0003")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(adu[:5])
        sock.sendall(adu[5:] + adu)
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_closed(sock) == adu + adu


def test_field_max_size_closes_at_the_header(serve_cli) -> None:  # type: ignore[no-untyped-def]
    """--max-size applies to the field: an MBAP length of 1,000 with --max-size 100 closes at once."""
    served = serve_cli("--app", "echo", "--framing", "field:4:2", "--max-size", "100")
    host, _, port = served.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(bytes.fromhex("0001 0000 03E8"))
        assert recv_until_closed(sock) == b""
