"""The proxy's HTTP control API, driven with urllib as a test in another language would; and its CLI options."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import connecteur
from connecteur.cli import main
from connecteur.tools.apps import echo
from connecteur.tools.proxy import Faults, Proxy
from tests.support import TIMEOUT, wait_until

COMMAND = [sys.executable, "-m", "connecteur"]


@pytest.fixture
def server() -> Iterator[connecteur.Server]:
    with connecteur.Server(echo, "127.0.0.1:0") as server:
        yield server


@pytest.fixture
def proxy(server: connecteur.Server) -> Iterator[Proxy]:
    with Proxy(server.address, control="127.0.0.1:0") as proxy:
        yield proxy


def call(proxy: Proxy, method: str, path: str, body: object = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    """One request to the control API: (status, the JSON answer)."""
    assert proxy.control_address is not None
    host, port = proxy.control_address
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_list_add_change_remove(proxy: Proxy) -> None:
    """Every verb, each answering with the faults in force, which are the proxy's own."""
    assert call(proxy, "GET", "/faults") == (200, {"upstream": {}, "downstream": {}})
    assert call(proxy, "POST", "/faults/downstream", {"delay": 0.1}) == (
        201, {"upstream": {}, "downstream": {"delay": 0.1}}
    )  # fmt: skip
    assert proxy.downstream == Faults(delay=0.1)
    status, answer = call(proxy, "POST", "/faults/downstream", {"delay": 0.2})
    assert status == 409 and "delay" in answer["error"]
    assert call(proxy, "PATCH", "/faults", {"delay": 0.2, "fragment": 3})[1] == {
        "upstream": {"delay": 0.2, "fragment": 3}, "downstream": {"delay": 0.2, "fragment": 3}
    }  # fmt: skip
    assert call(proxy, "PUT", "/faults/upstream", {"cut_after": 5})[1]["upstream"] == {"cut_after": 5}
    assert call(proxy, "DELETE", "/faults/downstream/delay") == (
        200, {"upstream": {"cut_after": 5}, "downstream": {"fragment": 3}}
    )  # fmt: skip
    assert call(proxy, "DELETE", "/faults/downstream/delay")[0] == 404
    assert call(proxy, "DELETE", "/faults") == (200, {"upstream": {}, "downstream": {}})
    assert (proxy.upstream, proxy.downstream) == (Faults(), Faults())


@pytest.mark.parametrize(
    ("method", "path", "raw", "status"),
    [("POST", "/faults", b"{not json", 400), ("PATCH", "/faults", b"[1, 2]", 400),
     ("PATCH", "/faults", b'{"latency": 1}', 400), ("PATCH", "/faults", b'{"fragment": 0}', 400),
     ("PATCH", "/faults", b'{"toxicity": 2}', 400), ("PUT", "/faults/sideways", b"{}", 404),
     ("GET", "/toxics", None, 404), ("DELETE", "/faults/upstream/nonsense", None, 404)],
)  # fmt: skip
def test_bad_requests_get_a_one_line_error(
    proxy: Proxy, method: str, path: str, raw: bytes | None, status: int
) -> None:
    """Bad JSON, an unknown fault, an impossible value, an unknown path: an error status, one line, nothing changed."""
    code, answer = call(proxy, method, path, raw=raw)
    assert code == status
    assert isinstance(answer["error"], str) and "\n" not in answer["error"] and answer["error"]
    assert (proxy.upstream, proxy.downstream) == (Faults(), Faults())


def test_a_change_applies_to_open_connections(proxy: Proxy) -> None:
    """As Toxiproxy's: a fault added through the API acts on a connection already open."""
    with connecteur.connect(proxy.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"before") == b"before"
        assert call(proxy, "PATCH", "/faults/downstream", {"reset_after": 0})[0] == 200
        wait_until(lambda: proxy.active == 0, what="the reset")
        with pytest.raises(ConnectionResetError):
            conn.request(b"after")


@pytest.mark.parametrize("address", [":0", "0.0.0.0:0", "[::]:0", "unix:/tmp/control.sock"])
def test_the_control_api_refuses_addresses_beyond_loopback(address: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|TCP"):
        Proxy("127.0.0.1:1", control=address)


def test_control_allow_remote_lifts_the_refusal(server: connecteur.Server) -> None:
    """Asked explicitly, an address beyond loopback is accepted (checked without starting: tests bind loopback only)."""
    Proxy(server.address, control="0.0.0.0:0", control_allow_remote=True)
    Proxy(server.address, control="[::1]:0")  # IPv6 loopback needs no permission
    with Proxy(server.address, control="127.0.0.2:0") as proxy:  # nor any of 127.0.0.0/8
        assert call(proxy, "GET", "/faults")[0] == 200


# --- the command line ----------------------------------------------------------------


def test_cli_serves_the_control_api(server: connecteur.Server) -> None:
    """connecteur proxy --control prints the API's URL; a PATCH through it applies."""
    target = f"127.0.0.1:{server.address[1]}"
    process = subprocess.Popen(
        [*COMMAND, "proxy", "127.0.0.1:0", target, "--control", "127.0.0.1:0", "--reset-after", "60000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("proxying ")
        line = process.stdout.readline()
        match = re.fullmatch(r"control API on (http://127\.0\.0\.1:\d+/faults)\n", line)
        assert match, line
        with urllib.request.urlopen(match.group(1), timeout=TIMEOUT) as answer:
            faults = json.loads(answer.read())
        assert faults == {"upstream": {"reset_after": 60.0}, "downstream": {"reset_after": 60.0}}
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


@pytest.mark.parametrize(
    "args",
    [["--toxicity", "1.5"], ["--slow-close", "-1"], ["--timeout", "never"], ["--reset-after", "nan"],
     ["--fragment-delay", "5"], ["--fragment", "3", "--fragment-variation", "3"], ["--control", "0.0.0.0:0"],
     ["--control", "unix:/tmp/x.sock"]],
)  # fmt: skip
def test_cli_bad_fault_is_one_line_and_status_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (each case exits before listening): one line on stderr, status 2."""
    assert main(["proxy", "127.0.0.1:0", "127.0.0.1:1", *args]) == 2
    stderr = capsys.readouterr().err
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("connecteur: proxy: "), stderr
