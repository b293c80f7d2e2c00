"""`connecteur fetch URL` against a real `python -m http.server`, and a raw socket."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from connecteur import __version__
from connecteur.cli import main
from tests.support import TIMEOUT, recv_until_closed, wait_until

COMMAND = [sys.executable, "-m", "connecteur"]

BODY = bytes(range(256)) * 400 + b"\r\n\r\nHTTP/1.0 200 OK\r\n\x00end"
"""100 KiB and more, every byte value, and what looks like a second reply."""


def fetch(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*COMMAND, "fetch", *args], capture_output=True, timeout=TIMEOUT * 3)


def one_error_line(result: subprocess.CompletedProcess[bytes], status: int) -> str:
    assert result.returncode == status, result
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("connecteur: "), result.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    except OSError:
        return False
    return True


def start_http_server(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """http.server cannot pick a port itself: try a free one, and once more if it was taken meanwhile."""
    started = try_http_server(directory, free_port()) or try_http_server(directory, free_port())
    if started is None:
        raise AssertionError("http.server exited at start twice in a row")
    return started


def try_http_server(directory: Path, port: int) -> tuple[subprocess.Popen[bytes], int] | None:
    """Start http.server on `port`; None if it exited (the port was taken meanwhile)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: process.poll() is not None or accepts(port), what="http.server to listen")
    except BaseException:
        stop(process)
        raise
    return (process, port) if process.poll() is None else None


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(TIMEOUT)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of an http.server serving `BODY` as /data.bin and an empty directory /sub/."""
    root = tmp_path_factory.mktemp("site")
    (root / "data.bin").write_bytes(BODY)
    (root / "sub").mkdir()
    process, port = start_http_server(root)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def test_body_is_printed_byte_for_byte(site: str) -> None:
    result = fetch(f"{site}/data.bin")
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == BODY


def test_verbose_prints_status_line_and_headers_on_stderr(site: str) -> None:
    result = fetch("-v", f"{site}/data.bin")
    assert result.returncode == 0
    assert result.stdout == BODY
    lines = result.stderr.decode().splitlines()
    assert lines[0] == "HTTP/1.0 200 OK"
    assert f"Content-Length: {len(BODY)}" in lines
    assert any(line.startswith("Server: SimpleHTTP") for line in lines)


def test_http_error_status_is_one_line_and_status_1(site: str) -> None:
    result = fetch(f"{site}/missing")
    assert one_error_line(result, 1) == "connecteur: HTTP 404 File not found"


def test_redirect_is_not_followed(site: str) -> None:
    """http.server answers /sub with a 301 to /sub/; fetch prints that reply and says so."""
    result = fetch("-v", f"{site}/sub")
    assert result.returncode == 0
    lines = result.stderr.decode().splitlines()
    assert lines[0] == "HTTP/1.0 301 Moved Permanently"
    assert "Location: /sub/" in lines
    assert lines[-1] == "connecteur: HTTP 301 Moved Permanently: redirect to /sub/ not followed"


def test_reply_over_max_size_is_one_line_and_status_1(site: str) -> None:
    line = one_error_line(fetch("--max-size", "1000", f"{site}/data.bin"), 1)
    assert "--max-size 1000" in line


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://127.0.0.1/", "HTTPS is not supported"),
        ("HTTPS://example.com/x", "HTTPS is not supported"),
        ("ftp://127.0.0.1/", "only http://"),
        ("127.0.0.1:80/path", "only http://"),
        ("http://", "malformed URL"),
        ("http://127.0.0.1:http/", "malformed URL"),
        ("http://127.0.0.1:0/", "malformed URL"),
        ("http://user:secret@127.0.0.1/", "malformed URL"),
    ],
)
def test_unsupported_or_malformed_url_is_one_line_and_status_2(
    url: str, words: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """In-process (`main(argv)`): a refusal before any connection; the real command's status is tested below."""
    status = main(["fetch", url])
    captured = capsysbinary.readouterr()
    line = one_error_line(subprocess.CompletedProcess(["fetch", url], status, captured.out, captured.err), 2)
    assert words in line and repr(url) in line


def test_unreachable_port_names_the_address() -> None:
    port = free_port()
    line = one_error_line(fetch(f"http://127.0.0.1:{port}/"), 1)
    assert f"127.0.0.1:{port}" in line


class RawServer:
    """Accepts one connection, records the request until the client's half-close, sends `reply`, closes."""

    def __init__(self, reply: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.reply = reply
        self.request: bytes | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            self.request = recv_until_closed(conn)  # returns at the client's shutdown_write()
            conn.sendall(self.reply)

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.close()
        self.thread.join(TIMEOUT)


def test_request_is_http_1_0_then_a_half_close() -> None:
    with RawServer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok") as server:
        result = fetch(f"http://127.0.0.1:{server.port}/a%20b/c d?q=1&r=é#fragment")
    assert (result.returncode, result.stdout) == (0, b"ok")
    assert server.request is not None
    request_line, *headers = server.request.decode("ascii").split("\r\n")
    assert request_line == "GET /a%20b/c%20d?q=1&r=%C3%A9 HTTP/1.0"
    assert headers[:3] == [
        f"Host: 127.0.0.1:{server.port}",
        f"User-Agent: connecteur/{__version__}",
        "Connection: close",
    ]
    assert headers[3:] == ["", ""]  # the blank line, then nothing: the request ends with the half-close


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (b"", "without replying"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nshort", "5 of the 10 bytes"),
        (b"HTTP/1.0 200 OK\r\nContent-", "inside its headers"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP status line"),
    ],
)
def test_bad_reply_is_one_line_and_status_1(reply: bytes, words: str) -> None:
    with RawServer(reply) as server:
        line = one_error_line(fetch(f"http://127.0.0.1:{server.port}/"), 1)
    assert f"127.0.0.1:{server.port}" in line and words in line


def test_lf_only_headers_and_extra_bytes_past_content_length() -> None:
    with RawServer(b"HTTP/1.0 200 OK\nContent-Length: 3\n\nabcdef") as server:
        result = fetch(f"http://127.0.0.1:{server.port}/")
    assert (result.returncode, result.stdout) == (0, b"abc")


def test_help_says_redirects_are_not_followed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch", "--help"]) == 0
    assert "Redirects are not followed" in " ".join(capsys.readouterr().out.split())
