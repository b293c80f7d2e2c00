"""TLS and handshake helpers shared by the engine tests: a test CA, and a handler that keeps a journal."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Protocol

import trustme

from connecteur import Peer, Server
from tests.support import wait_until

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
"""What the server certificate is valid for: every loopback name a test connects to."""


@dataclass(frozen=True)
class Pki:
    """A test CA, a server context with its certificate, and client contexts.

    Attributes:
        server: the server side, with a certificate for `SERVER_NAMES`.
        client: a client side that trusts the CA.
        stranger: a client side that trusts another CA only.
    """

    ca: trustme.CA
    server: ssl.SSLContext
    client: ssl.SSLContext
    stranger: ssl.SSLContext


def make_pki() -> Pki:
    """A fresh CA and the contexts of both sides, as an application would make them."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*SERVER_NAMES).configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    return Pki(ca, server, client, stranger)


class Writer(Protocol):
    def write(self, event: str) -> None: ...


class Witness:
    """An echo handler that writes every hook call to `journal` (a file, so it works across processes)."""

    def __init__(self, journal: Writer) -> None:
        self._journal = journal

    def connected(self, peer: Peer) -> None:
        self._journal.write("connected")

    def received(self, peer: Peer, message: bytes) -> bytes:
        self._journal.write(f"received {message!r}")
        return message

    def closed(self, peer: Peer, error: BaseException | None) -> None:
        self._journal.write(f"closed {error!r}")


def logs_reach_caplog(engine: str) -> bool:
    """False when connections are served in forked children, whose log records go to their stderr."""
    return engine != "processes" and "*" not in engine


def wait_for_one_handshake_error(server: Server) -> None:
    """Wait until the server counted one failed handshake, its only error, and closed it."""
    wait_until(
        lambda: server.stats.handshake_errors == 1 and server.stats.active == 0, what="the handshake error counted"
    )
    assert server.stats.errors == 1
