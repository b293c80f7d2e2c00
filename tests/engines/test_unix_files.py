"""A Unix socket server's file: removed at stop, a stale one replaced, nothing else touched."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import connecteur
from tests.engines.conftest import VARIANTS, engine_options
from tests.support import TIMEOUT


def echo(message: bytes) -> bytes:
    return message


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_stale_socket_file_from_a_crashed_server_is_replaced(variant: str, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    crashed = socket.socket(socket.AF_UNIX)
    crashed.bind(str(path))
    crashed.close()  # the file stays, nobody listens: what a killed server leaves
    assert path.exists()
    server = connecteur.Server(echo, f"unix:{path}", **engine_options(variant))
    with server, connecteur.connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"fresh") == b"fresh"
    assert not path.exists()


def test_a_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with connecteur.Server(echo, f"unix:{path}") as first:
        with pytest.raises(OSError), connecteur.Server(echo, f"unix:{path}"):
            pass
        with connecteur.connect(first.address, timeout=TIMEOUT) as conn:
            assert conn.request(b"still first") == b"still first"


def test_a_regular_file_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("precious")
    with pytest.raises(OSError), connecteur.Server(echo, f"unix:{path}"):
        pass
    assert path.read_text() == "precious"


def test_the_socket_file_permissions_follow_the_umask(tmp_path: Path) -> None:
    """Access to a Unix socket is the file system's: here the umask decides who may connect."""
    path = tmp_path / "s.sock"
    previous = os.umask(0o077)
    try:
        with connecteur.Server(echo, f"unix:{path}"):
            assert path.stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(previous)
