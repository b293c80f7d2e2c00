"""TLS over memory buffers: one sans-I/O TLS session for every loop.

`ssl.SSLObject` with two `ssl.MemoryBIO` buffers, the way asyncio's
``sslproto`` drives OpenSSL: the loop hands in the bytes it read from the
socket and writes out what the session gives back; nothing here touches a
socket or waits. So the blocking client, the thread and process engines, the
select engine and both asyncio loops share one TLS behaviour: the same
handshake steps, the same end of stream, and half-close in both directions
(TLS 1.3 lets each side send ``close_notify`` and keep reading).

Every complete record is decrypted as soon as it arrives, so no plaintext is
ever left waiting inside OpenSSL where a ``select`` on the socket could not
see it.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Final, final

from .framing import Buffer

__all__ = ["TlsSession"]

READ_SIZE: Final = 64 * 2**10
"""Plaintext taken out of OpenSSL per call; a TLS record carries at most
16 KiB, so one call takes several records."""


@final
class TlsSession:
    """One side of a TLS connection, fed and drained by the caller.

    Args:
        context: the `ssl.SSLContext` (certificates, verification).
        server_side: True on the accepting side.
        server_hostname: the name the server's certificate must carry
            (client side, when the context checks host names).

    Raises:
        ValueError: the context checks host names and none was given.
    """

    __slots__ = ("_incoming", "_object", "_outgoing", "is_handshaken", "peer_closed")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.is_handshaken = False
        """True once the handshake is complete: application data may flow."""
        self.peer_closed = False
        """True once the peer's ``close_notify`` arrived: it sends nothing more."""
        if not server_side:
            self._try_handshake()  # queues the ClientHello

    def _try_handshake(self) -> None:
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            return
        self.is_handshaken = True

    def receive(self, data: Buffer) -> bytes:
        """Add bytes read from the socket; return the plaintext they complete.

        During the handshake this returns ``b""`` (and queues the next
        handshake flight: see `data_to_send`); plaintext that follows the
        handshake in the same read is returned at once.

        Raises:
            ssl.SSLError: the handshake failed (a certificate that does not
                verify, no common protocol) or a record is corrupt. An alert
                for the peer may be waiting in `data_to_send`.
        """
        if data:
            self._incoming.write(data)
        if not self.is_handshaken:
            self._try_handshake()
            if not self.is_handshaken:
                return b""
        chunks = []
        while not self.peer_closed:
            try:
                chunk = self._object.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:
                self.peer_closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def encrypt(self, data: Buffer) -> bytes:
        """Return the bytes to write for `data`, after anything already queued."""
        view = memoryview(data)
        while view:
            view = view[self._object.write(view) :]
        return self._outgoing.read()

    def data_to_send(self) -> bytes:
        """Take the bytes queued for the peer (handshake flights, alerts)."""
        return self._outgoing.read()

    def close_write(self) -> bytes:
        """Send ``close_notify``: "I have finished sending"; keep reading.

        Returns:
            The bytes to write before shutting the socket's write side.
        """
        # Our close_notify is queued; the peer's may never come, which is fine.
        with contextlib.suppress(ssl.SSLError):
            self._object.unwrap()
        return self._outgoing.read()
