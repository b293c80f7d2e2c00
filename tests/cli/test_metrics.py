"""`connecteur serve --metrics` and `--log-format`: scrapes match the traffic; logs are one object a line."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

import connecteur
from connecteur.address import TcpAddress
from connecteur.cli import main
from connecteur.cli._logging import JsonFormatter
from connecteur.errors import FramingError
from connecteur.server import Server
from connecteur.tools.metrics import COUNTERS, MetricsExporter
from tests.cli.test_cli import COMMAND, assert_one_line_error, run, run_in_process
from tests.support import TIMEOUT, recv_until_closed, wait_until

MESSAGES = [b"one", b"two", b"three", b"four", b"five"]
WIRE_BYTES = sum(4 + len(message) for message in MESSAGES)  # LengthPrefixed: a 4-byte header each


@dataclass
class Served:
    process: subprocess.Popen[str]
    address: str
    metrics_url: str


@pytest.fixture
def serve_metrics() -> Iterator[Callable[..., Served]]:
    processes: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Served:
        process = subprocess.Popen(
            [*COMMAND, "serve", "127.0.0.1:0", "--metrics", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        processes.append(process)
        assert process.stdout is not None
        serving, metrics = process.stdout.readline(), process.stdout.readline()
        served = re.fullmatch(r"serving \w+ on (\S+) \(framing: [^;]+; codec: [^)]+\)\n", serving)
        url = re.fullmatch(r"metrics on (http://127\.0\.0\.1:\d+/metrics)\n", metrics)
        assert served and url, (serving, metrics, process.stderr.read() if process.poll() is not None else "")  # type: ignore[union-attr]
        return Served(process, served.group(1), url.group(1))

    try:
        yield start
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=TIMEOUT)


def scrape(url: str) -> dict[str, float]:
    """Every sample's value by name, labels left out, from one scrape."""
    assert url.startswith("http://127.0.0.1:")  # loopback only
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


ENGINES = [
    pytest.param(["--engine", "select"], id="select"),
    pytest.param(["--engine", "threads"], id="threads"),
    pytest.param(["--engine", "asyncio"], id="asyncio"),
    pytest.param(["--engine", "processes"], id="processes"),
    pytest.param(["--engine", "select", "--workers", "2"], id="select-2-workers"),
]


@pytest.mark.parametrize("options", ENGINES)
def test_scraped_counters_match_the_traffic(serve_metrics: Callable[..., Served], options: list[str]) -> None:
    """Counters are read at scrape time; with workers or processes, they add up every process."""
    served = serve_metrics(*options)
    with connecteur.connect(served.address, timeout=TIMEOUT) as conn:
        assert conn.request(MESSAGES[0]) == MESSAGES[0]
        # Workers report every 0.2 s: wait (bounded) rather than expect it at once.
        wait_until(lambda: scrape(served.metrics_url)["connecteur_connections_active"] == 1, what="one active")
        for message in MESSAGES[1:3]:
            assert conn.request(message) == message
    with connecteur.connect(served.address, timeout=TIMEOUT) as conn:
        for message in MESSAGES[3:]:
            assert conn.request(message) == message

    def settled() -> bool:
        metrics = scrape(served.metrics_url)
        return (
            metrics["connecteur_messages_sent_total"] == len(MESSAGES) and metrics["connecteur_connections_active"] == 0
        )

    wait_until(settled, what="every message counted")
    metrics = scrape(served.metrics_url)
    assert metrics == {
        "connecteur_connections_accepted_total": 2,
        "connecteur_connections_rejected_total": 0,
        "connecteur_messages_received_total": len(MESSAGES),
        "connecteur_messages_sent_total": len(MESSAGES),
        "connecteur_bytes_received_total": WIRE_BYTES,
        "connecteur_bytes_sent_total": WIRE_BYTES,
        "connecteur_connection_errors_total": 0,
        "connecteur_handshake_errors_total": 0,
        "connecteur_connections_evicted_total": 0,
        "connecteur_worker_restarts_total": 0,
        "connecteur_messages_skipped_total": 0,
        "connecteur_messages_dropped_total": 0,
        "connecteur_connections_active": 0,
        "connecteur_queued_bytes": 0,
        "connecteur_server_info": 1,
    }
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(TIMEOUT) == 0


@pytest.mark.parametrize("options", [ENGINES[0], ENGINES[3], ENGINES[4]])
def test_skipped_messages_are_scraped(serve_metrics: Callable[..., Served], options: list[str]) -> None:
    """``serve --on-oversize skip``: the connection goes on, and the skip is counted over every process."""
    served = serve_metrics(*options, "--max-size", "100", "--on-oversize", "skip")
    with connecteur.connect(served.address, timeout=TIMEOUT) as conn:
        conn.send_many([b"small", b"x" * 101, b"x" * 5000])
        assert conn.request(b"after") == b"small"
        assert conn.recv() == b"after"
    wait_until(lambda: scrape(served.metrics_url)["connecteur_messages_skipped_total"] == 2, what="the skips counted")
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(TIMEOUT) == 0


def test_every_metric_has_help_a_type_and_the_server_labels(serve_metrics: Callable[..., Served]) -> None:
    served = serve_metrics("--workers", "2")
    with urllib.request.urlopen(served.metrics_url, timeout=TIMEOUT) as response:
        families = {family.name: family for family in text_string_to_metric_families(response.read().decode())}
    assert {name for name, _, _ in COUNTERS} <= families.keys()
    assert all(families[name].type == "counter" for name, _, _ in COUNTERS)
    assert families["connecteur_connections_active"].type == families["connecteur_queued_bytes"].type == "gauge"
    assert all(family.documentation for family in families.values())
    (info,) = families["connecteur_server_info"].samples
    assert info.labels == {"engine": "select", "workers": "2", "version": connecteur.__version__}


def test_exporter_stops_with_close() -> None:
    """The HTTP endpoint listens from construction until close(); then its port refuses connections."""
    with Server(lambda message: message, "127.0.0.1:0") as server:
        exporter = MetricsExporter(server, TcpAddress("127.0.0.1", 0))
        with exporter:
            with connecteur.connect(server.address, timeout=TIMEOUT) as conn:
                conn.request(b"x")
            wait_until(lambda: scrape(exporter.url)["connecteur_connections_active"] == 0)
            assert scrape(exporter.url)["connecteur_messages_received_total"] == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((exporter.address.host, exporter.address.port), timeout=TIMEOUT).close()


@pytest.mark.parametrize("value", ["unix:/tmp/metrics.sock", "nowhere", "127.0.0.1:99999"])
def test_bad_metrics_address_is_one_line_and_status_2(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_in_process(monkeypatch, capsys, "serve", "127.0.0.1:0", "--metrics", value)
    assert_one_line_error(result, 2, "--metrics")
    assert result.stdout == ""


def test_metrics_port_in_use_is_one_line_and_status_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}")
    assert_one_line_error(result, 1, "--metrics", f"127.0.0.1:{port}")
    assert result.stdout == ""  # it failed before serving


def test_missing_prometheus_client_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed: importing it fails
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))  # serve configures logging
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    assert main(["serve", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("connecteur: --metrics: ")
    assert "pip install 'connecteur[metrics]'" in err


@pytest.mark.parametrize(
    ("log_format", "options"),
    [
        pytest.param("json", [], id="json"),
        pytest.param("json", ["--engine", "processes"], id="json-processes"),
        pytest.param("json", ["--workers", "2"], id="json-2-workers"),
        pytest.param("text", [], id="text"),
    ],
)
def test_verbose_logs_a_closing_with_its_reason(
    serve_metrics: Callable[..., Served], log_format: str, options: list[str]
) -> None:
    """With ``--log-format json``, every stderr line is one JSON object, from any process."""
    served = serve_metrics("-v", "--log-format", log_format, *options)
    host, port = served.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"\xff\xff\xff\xff")  # a LengthPrefixed header announcing 4 GiB - 1
        assert sock.recv(1) == b""  # the server closed it
    wait_until(lambda: scrape(served.metrics_url)["connecteur_connection_errors_total"] == 1)
    served.process.send_signal(signal.SIGINT)
    _, stderr = served.process.communicate(timeout=TIMEOUT)
    assert served.process.returncode == 0
    lines = stderr.splitlines()
    if log_format == "text":  # the format as it was: "connecteur: " and the message
        (line,) = lines
        reason = "length header announces 4294967295 bytes; max_size is 16777216"
        assert re.fullmatch(rf"connecteur: closing 127\.0\.0\.1:\d+: {reason}", line), line
        return
    entries = [json.loads(line) for line in lines]  # every line parses
    (closing,) = [entry for entry in entries if "closing" in entry["message"]]
    assert closing["level"] == "WARNING" and closing["logger"] == "connecteur.server"
    assert "4294967295" in closing["message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", closing["time"])


def test_a_refusal_is_counted_and_logged(serve_metrics: Callable[..., Served]) -> None:
    served = serve_metrics("--max-connections", "1", "-v", "--log-format", "json")
    host, port = served.address.rsplit(":", 1)
    with connecteur.connect(served.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"x") == b"x"
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as extra:
            assert recv_until_closed(extra) == b""
        wait_until(lambda: scrape(served.metrics_url)["connecteur_connections_rejected_total"] == 1)
        assert scrape(served.metrics_url)["connecteur_connections_accepted_total"] == 1
    served.process.send_signal(signal.SIGINT)
    _, stderr = served.process.communicate(timeout=TIMEOUT)
    (refusal,) = [json.loads(line) for line in stderr.splitlines()]
    assert refusal["level"] == "INFO" and "max_connections (1) reached" in refusal["message"]


def test_json_formatter_puts_a_traceback_in_one_field() -> None:
    try:
        raise ZeroDivisionError("a handler's bug")
    except ZeroDivisionError:
        record = logging.LogRecord(
            "connecteur.server", logging.ERROR, __file__, 1, "closing %s", ("x",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["message"], entry["exc_type"]) == ("ERROR", "closing x", "ZeroDivisionError")
    assert entry["exc"].startswith("Traceback (most recent call last):\n")
    assert entry["exc"].endswith("ZeroDivisionError: a handler's bug")


def test_json_formatter_names_non_builtin_exceptions_with_their_module() -> None:
    error = FramingError("bad bytes")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "m", (), (type(error), error, None))
    assert json.loads(JsonFormatter().format(record))["exc_type"] == "connecteur.errors.FramingError"
