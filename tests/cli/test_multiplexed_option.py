"""``--multiplexed`` and ``--heartbeat INTERVAL[,DEADLINE]`` on serve and send."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from connecteur import Heartbeat, Server
from connecteur.cli import main
from tests.support import TIMEOUT

COMMAND = [sys.executable, "-m", "connecteur"]


class Stop(Exception):
    pass


@pytest.mark.parametrize("command", ["serve", "send"])
@pytest.mark.parametrize("value", ["0", "-1", "soon", "1,", "1,0", ",2", "1,2,3", "inf", "nan,1"])
def test_a_bad_heartbeat_is_a_one_line_usage_error(
    command: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "127.0.0.1:1", "--multiplexed", "--heartbeat", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("connecteur: ") and "--heartbeat" in err and "INTERVAL" in err


@pytest.mark.parametrize("command", ["serve", "send"])
def test_a_heartbeat_without_the_envelope_is_refused(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "127.0.0.1:1", "x" if command == "send" else "-v", "--heartbeat", "5"]) == 2
    err = capsys.readouterr().err
    assert err == "connecteur: --heartbeat needs --multiplexed: pings travel in the envelope\n"


def test_allow_unanswered_is_for_plain_connections(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "127.0.0.1:1", "x", "--multiplexed", "--allow-unanswered"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-unanswered" in err


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], {}),
        (["--multiplexed"], {"multiplexed": True, "heartbeat": None}),
        (["--multiplexed", "--heartbeat", "5"], {"multiplexed": True, "heartbeat": Heartbeat(5, 5)}),
        (["--multiplexed", "--heartbeat", "0.5,2"], {"multiplexed": True, "heartbeat": Heartbeat(0.5, 2)}),
    ],
)
def test_serve_passes_them_to_the_server(
    options: list[str], expected: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def record(*args: object, **given: object) -> None:
        seen.update(given)
        raise Stop

    monkeypatch.setattr("connecteur.cli.serve.Server", record)
    with pytest.raises(Stop):
        main(["serve", "127.0.0.1:0", *options])
    assert {name: seen[name] for name in ("multiplexed", "heartbeat") if name in seen} == expected


def answer(message: bytes) -> bytes:
    if message == b"fail":
        raise ValueError("asked to fail")
    return message.upper()


def test_send_multiplexed_prints_each_reply_and_says_which_request_failed(capsys: pytest.CaptureFixture[str]) -> None:
    with Server(answer, "127.0.0.1:0", multiplexed=True, heartbeat=(1, 1)) as server:
        address = f"127.0.0.1:{server.address[1]}"
        status = main(["send", address, "one", "fail", "two", "--multiplexed", "--heartbeat", "1,2"])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "ONE\nTWO\n")
    assert err == "connecteur: request 2 failed on the server: ValueError: asked to fail\n"


def test_send_multiplexed_to_a_plain_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with Server(answer, "127.0.0.1:0") as server:  # echoes the envelope: a request, which no server sends
        status = main(["send", f"127.0.0.1:{server.address[1]}", "one", "--multiplexed"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and err.startswith("connecteur: request 1 to 127.0.0.1:")


def test_send_plain_to_a_multiplexed_server_hints_at_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    with Server(answer, "127.0.0.1:0", multiplexed=True) as server:  # "one" is no envelope: it closes the link
        status = main(["send", f"127.0.0.1:{server.address[1]}", "one"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and "unanswered" in err and "not --multiplexed" in err


def test_serve_and_send_multiplexed_through_real_processes() -> None:
    server = subprocess.Popen(
        [*COMMAND, "serve", "127.0.0.1:0", "--app", "upper", "--multiplexed", "--heartbeat", "2,3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.endswith("multiplexed, heartbeat: ping after 2 s of silence, close after 5 s)\n"), line
        address = re.search(r"on (\S+) ", line).group(1)  # type: ignore[union-attr]
        sent = subprocess.run(
            [*COMMAND, "send", address, "--multiplexed", "--heartbeat", "1"],
            input="hello\nwörld\n",
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 3,
        )
        assert (sent.returncode, sent.stdout, sent.stderr) == (0, "HELLO\nWöRLD\n", "")  # upper: bytes, ASCII only
    finally:
        server.terminate()
        server.communicate(timeout=TIMEOUT)
    assert server.returncode == 0
