"""The command line's TLS and authentication options, through real subprocesses."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.cli.test_cli import COMMAND, Served, assert_one_line_error, run, serve_cli
from tests.support import TIMEOUT

__all__ = ["serve_cli"]  # the fixture, imported to be shared

Serve = Callable[..., Served]


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, and a server certificate for 127.0.0.1 it signed, as PEM files."""
    folder = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    other = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    return {name: str(folder / f"{name}.pem") for name in ("ca", "other-ca", "server")}


def send(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "send", *args], capture_output=True, text=True, timeout=TIMEOUT * 3, env=env, input=""
    )


def test_send_over_tls_to_serve_over_tls(serve_cli: Serve, pems: dict[str, str]) -> None:
    served = serve_cli("--app", "upper", "--tls-cert", pems["server"])
    result = send(served.address, "hello", "world", "--tls-ca", pems["ca"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HELLO", "WORLD"]


def test_an_untrusted_server_certificate_is_one_line_and_status_1(serve_cli: Serve, pems: dict[str, str]) -> None:
    served = serve_cli("--tls-cert", pems["server"])
    assert_one_line_error(send(served.address, "x", "--tls-ca", pems["other-ca"]), 1, "TLS handshake", "certificate")


def test_tls_insecure_skips_the_check(serve_cli: Serve, pems: dict[str, str]) -> None:
    served = serve_cli("--tls-cert", pems["server"])
    result = send(served.address, "x", "--tls-insecure")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "x\n"


def test_missing_certificate_file_is_a_usage_error() -> None:
    assert_one_line_error(run("serve", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem"), 2, "TLS files")


def test_auth_key_from_a_file_and_from_the_environment(serve_cli: Serve, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"s3cret\n")
    served = serve_cli("--auth-key-file", str(key_file))
    result = send(served.address, "in", env={**os.environ, "CONNECTEUR_AUTH_KEY": "s3cret"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "in\n"
    wrong = send(served.address, "in", env={**os.environ, "CONNECTEUR_AUTH_KEY": "guess"})
    assert_one_line_error(wrong, 1, "keys differ")


def test_a_client_without_the_key_gets_nothing_through(serve_cli: Serve, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"s3cret")
    served = serve_cli("--auth-key-file", str(key_file), "--handshake-timeout", "0.5")
    env = {key: value for key, value in os.environ.items() if key != "CONNECTEUR_AUTH_KEY"}
    result = send(served.address, "hello", env=env)
    # Its "hello" was taken for an answer to the challenge, and refused: no echo.
    assert "#CHALLENGE#" in result.stdout and "#FAILURE#" in result.stdout
    assert "hello" not in result.stdout


def test_an_unreadable_key_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run("serve", "127.0.0.1:0", "--auth-key-file", str(tmp_path / "missing"))
    assert_one_line_error(result, 2, "--auth-key-file")
