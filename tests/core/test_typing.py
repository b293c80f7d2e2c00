"""What a type checker sees of the clients: ``recv()`` is bytes without a codec, the codec's type with one.

mypy runs on a snippet, with connecteur's own sources (the package imported
here) on its path. mypy is in the dev extra, not the test extra: without it
these tests skip, and .ci/run runs them again once it has installed the dev extra.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import connecteur

SNIPPET = """
import socket

import connecteur
from connecteur import aio
from connecteur.codecs import Codec, Json, Text


def blocking() -> None:
    with connecteur.connect("127.0.0.1:1") as conn:
        reveal_type(conn.recv())
        reveal_type(conn.request(b"x"))
        for message in conn:
            reveal_type(message)
    with connecteur.connect("127.0.0.1:1", codec=Text()) as text:
        reveal_type(text.recv())
        reveal_type(text.request("x"))
    reveal_type(connecteur.Connection(socket.socket()).recv())
    reveal_type(connecteur.Connection(socket.socket(), codec=Json()).recv())


async def asyncio_client() -> None:
    conn = await aio.connect("127.0.0.1:1")
    reveal_type(await conn.recv())
    async for message in conn:
        reveal_type(message)
    text = await aio.connect("127.0.0.1:1", codec=Text())
    reveal_type(await text.request("x"))


def annotated(conn: connecteur.Connection, codec: Codec) -> None:
    pass  # a bare Connection or Codec is still accepted under --strict: Connection[Any], Codec[Any]
"""

EXPECTED = ["bytes", "bytes", "bytes", "str", "str", "bytes", "Any", "bytes", "bytes", "str"]


def test_recv_is_bytes_without_a_codec_and_the_codecs_type_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (the dev extra; .ci/run runs this test)")
    (tmp_path / "snippet.py").write_text(SNIPPET)
    # The connecteur these tests import, not another one installed (an editable install of a sibling clone).
    # Not when that is an installed copy: mypy refuses site-packages on MYPYPATH, and finds it there anyway.
    sources = Path(connecteur.__file__).resolve().parents[1]
    if sources.name not in ("site-packages", "dist-packages"):
        monkeypatch.setenv("MYPYPATH", str(sources))
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--config-file=",
            "--python-version=3.11",
            f"--cache-dir={tmp_path / 'cache'}",
            "--follow-imports=silent",  # connecteur itself is checked by `mypy --strict src`
            str(tmp_path / "snippet.py"),
        ]
    )
    revealed = re.findall(r'Revealed type is "([^"]+)"', stdout)
    assert [name.removeprefix("builtins.") for name in revealed] == EXPECTED, stdout
    assert status == 0, stdout + stderr
