"""``--keepalive SECONDS`` on serve, send and chat."""

from __future__ import annotations

import pytest

from connecteur import Keepalive
from connecteur.cli import main


@pytest.mark.parametrize("command", ["serve", "send", "chat"])
@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf", "3000000"])
def test_a_bad_keepalive_is_a_one_line_usage_error(
    command: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    more = ["--name", "ann"] if command == "chat" else []
    assert main([command, "127.0.0.1:1", *more, "--keepalive", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("connecteur: ") and "--keepalive" in err


class Stop(Exception):
    pass


def test_serve_passes_it_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def record(*args: object, **options: object) -> None:
        seen.update(options)
        raise Stop

    monkeypatch.setattr("connecteur.cli.serve.Server", record)
    with pytest.raises(Stop):
        main(["serve", "127.0.0.1:0", "--keepalive", "20"])
    assert seen["keepalive"] == 20.0
    assert Keepalive.within(20) == Keepalive(idle=10, interval=10 / 3, count=3, user_timeout=20)


@pytest.mark.parametrize("command", ["send", "chat"])
def test_clients_pass_it_to_connect(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def record(*args: object, **options: object) -> None:
        seen.update(options)
        raise Stop

    monkeypatch.setattr("connecteur.cli._security.connect", record)
    more = ["--name", "ann"] if command == "chat" else ["hello"]
    with pytest.raises(Stop):
        main([command, "127.0.0.1:1", *more, "--keepalive", "7.5"])
    assert seen["keepalive"] == 7.5
