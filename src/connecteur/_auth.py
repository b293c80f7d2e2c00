"""Sans-I/O shared-secret handshake, wire-compatible with `multiprocessing.connection`.

Layer: core, beside `framing` (no socket, clock or log here). An engine or a
client feeds the peer's bytes to `Authenticator.receive()`, writes what
`data_to_send()` returns, and stops once `is_done`; `leftover()` then holds the
peer's first application bytes.

The protocol is the one `multiprocessing.connection.Listener` and `Client` run
when given an ``authkey``. Every handshake message is framed like
``Connection.send_bytes``: a 4-byte big-endian length, then the payload; no
handshake message is longer than 256 bytes. Each side proves it knows the key
by answering the other's challenge:

1. the verifier sends ``#CHALLENGE#`` + challenge, where a Python 3.12+
   challenge is ``{sha256}`` followed by 40 random bytes (Python 3.11 and
   older send 20 random bytes and no ``{digest}`` prefix);
2. the answerer replies with the HMAC of the whole challenge (prefix
   included) under the key, as ``{sha256}`` + digest (older peers reply with
   the raw 16-byte HMAC-MD5);
3. the verifier replies ``#WELCOME#``, or ``#FAILURE#`` and closes.

The server side (a ``Listener``) verifies first and answers second; the client
side answers first and verifies second. We always challenge with ``{sha256}``.
MD5, in either direction, is accepted only with ``allow_legacy=True`` (the
``allow_legacy_auth=True`` of the public API).
"""

from __future__ import annotations

import enum
import hmac
import os
from typing import Final, final

from .errors import AuthenticationError, FramingError, MessageTooLarge
from .framing import Buffer, LengthPrefixed

__all__ = ["Authenticator"]

_MAX_MESSAGE_SIZE: Final = 256
"""Bytes: the largest handshake message, as ``recv_bytes(256)`` in multiprocessing.
A larger header cannot start a handshake message, so it is refused before its body arrives."""

_FRAMING: Final = LengthPrefixed("!I", max_size=_MAX_MESSAGE_SIZE)
"""``send_bytes`` framing: multiprocessing packs ``"!i"``, the same bytes for sizes under 2 GiB."""

_HEADER_SIZE: Final = len(_FRAMING.encode(b""))
"""Bytes of length header before each handshake message (4)."""

_CHALLENGE: Final = b"#CHALLENGE#"
_WELCOME: Final = b"#WELCOME#"
_FAILURE: Final = b"#FAILURE#"

_NONCE_SIZE: Final = 40
"""Random bytes in our challenge, as Python 3.12+ sends; more than 20, so that a
peer never mistakes it for a legacy challenge."""

_LEGACY_CHALLENGE_SIZE: Final = 20
"""Bytes in a Python <= 3.11 challenge: random bytes with no ``{digest}`` prefix."""

_MD5_SIZE: Final = 16
"""Bytes in a raw HMAC-MD5 digest: a legacy response has exactly this length."""

_CHALLENGE_DIGEST: Final = b"sha256"
"""The digest we ask for, as Python 3.12+ does."""

_DIGESTS: Final = frozenset({b"sha256", b"sha384", b"sha3_256", b"sha3_384"})
"""Digests accepted in ``{name}`` prefixes: Python 3.12's list, md5 aside."""

_LEGACY_DIGESTS: Final = frozenset({b"md5"})
"""Digests accepted only with ``allow_legacy=True``."""

_MAX_NAME_SIZE: Final = max(len(name) for name in _DIGESTS | _LEGACY_DIGESTS)
"""Bytes: the longest digest name, so a ``}`` is looked for only where one can be."""

_LEGACY_HINT: Final = (
    "pass allow_legacy_auth=True (--allow-legacy-auth on the command line) to accept peers older than Python 3.12"
)
"""Names the public parameter (of `connect`, `aio.connect`, `Server`, `aio.serve`), not this class's."""
_NO_KEY_HINT: Final = "does the peer use an auth key?"


class _Step(enum.Enum):
    """What the handshake waits for; the value names it in error messages."""

    CHALLENGE = "the challenge"
    RESPONSE = "the response to our challenge"
    WELCOME = "the welcome"
    DONE = "nothing"


_SERVER_STEPS: Final = (_Step.RESPONSE, _Step.CHALLENGE, _Step.WELCOME, _Step.DONE)
_CLIENT_STEPS: Final = (_Step.CHALLENGE, _Step.WELCOME, _Step.RESPONSE, _Step.DONE)


@final
class Authenticator:
    """One side of the handshake, driven by the caller's I/O loop. Not thread-safe.

    A server side queues its challenge at construction; a client side queues
    nothing until the challenge arrives. Loop: write `data_to_send()`, read,
    `receive()`, until `is_done`; then take `leftover()`. After a failure,
    write `data_to_send()` once more (it may hold ``#FAILURE#``) and close.

    Args:
        key: the shared secret. It never appears in an error message.
        server_side: True for the side that accepted the connection (it
            challenges first, like a ``Listener``); False for the side that
            connected (it answers first, like ``Client``).
        allow_legacy: accept HMAC-MD5 peers (Python 3.11 and older), in both
            directions. Off by default: MD5 is broken as a hash, and 3.12+
            peers never need it.

    Raises:
        TypeError: `key` is not ``bytes`` (as in multiprocessing).
        ValueError: `key` is empty (multiprocessing treats an empty key as
            no key at all and would skip the handshake).
    """

    __slots__ = (
        "_allow_legacy",
        "_challenge",
        "_decoder",
        "_failure",
        "_key",
        "_leftover",
        "_outgoing",
        "_plan",
        "_step",
    )

    def __init__(
        self, key: bytes, *, server_side: bool, allow_legacy: bool = False, _nonce: bytes | None = None
    ) -> None:
        # _nonce: tests only, to make our challenge a known vector.
        if not isinstance(key, bytes):
            raise TypeError(f"the auth key must be bytes, not {type(key).__name__}")
        if not key:
            raise ValueError("the auth key is empty: multiprocessing would skip the handshake")
        self._key = key
        self._allow_legacy = allow_legacy
        self._challenge = b"{%s}%s" % (_CHALLENGE_DIGEST, os.urandom(_NONCE_SIZE) if _nonce is None else _nonce)
        self._decoder = _FRAMING.decoder()
        self._outgoing = bytearray()
        self._leftover = bytearray()
        self._failure: AuthenticationError | None = None
        self._plan = iter(_SERVER_STEPS if server_side else _CLIENT_STEPS)
        self._step = _Step.CHALLENGE  # replaced at once by the plan's first step
        self._next_step()

    @property
    def is_done(self) -> bool:
        """True once both sides proved the key: application data may flow."""
        return self._step is _Step.DONE

    def data_to_send(self) -> bytes:
        """Return the framed bytes to write to the peer now, and forget them."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def leftover(self) -> bytes:
        """Return the bytes received after the last handshake message, and forget them.

        These are the peer's first application bytes, unchanged, for the
        application's framing decoder. Before `is_done` there are none (``b""``).
        """
        data = bytes(self._leftover)
        self._leftover.clear()
        return data

    def receive(self, data: Buffer) -> None:
        """Feed bytes from the peer, cut anywhere; answer what they complete.

        Once `is_done`, bytes fed here are kept for `leftover()`, unchanged.

        Raises:
            AuthenticationError: the handshake failed, or had already failed:
                a wrong digest, the peer's ``#FAILURE#``, an unexpected or
                oversized message, a legacy form without `allow_legacy`. When
                it was this side's turn to verify, ``#FAILURE#`` is queued in
                `data_to_send()` before raising.
        """
        if self.is_done:
            self._leftover += data
            return
        self._check_not_failed()
        try:
            self._receive(data)
        except AuthenticationError as exc:
            self._failure = exc
            if self._step is _Step.RESPONSE:
                self._send(_FAILURE)
            raise

    def receive_eof(self) -> None:
        """Tell the handshake the peer closed the connection.

        Does nothing once `is_done`: the end of the stream is then the
        application's business.

        Raises:
            AuthenticationError: the handshake was not finished (or had failed).
        """
        if self.is_done:
            return
        self._check_not_failed()
        pending = self._decoder.buffered
        partial = f" ({pending} bytes of a message received)" if pending else ""
        self._failure = AuthenticationError(f"peer closed the connection while waiting for {self._step.value}{partial}")
        raise self._failure

    # --- steps -------------------------------------------------------------------

    def _next_step(self) -> None:
        self._step = next(self._plan)
        if self._step is _Step.RESPONSE:
            self._send(_CHALLENGE + self._challenge)

    def _receive(self, data: Buffer) -> None:
        """Handle each message `data` completes; keep what follows the last one."""
        used = -self._decoder.buffered  # those bytes start the first message, from an earlier call
        try:
            messages, error = self._decoder.feed(data), None
        except FramingError as exc:  # it may concern application data after the handshake
            messages, error = exc.messages, exc
        for message in messages:
            self._handle(message)
            used += _HEADER_SIZE + len(message)
            if self.is_done:
                self._leftover += memoryview(data)[used:]
                return
        if error is not None:
            raise _framing_error(error, self._step) from error

    def _handle(self, message: bytes) -> None:
        match self._step:
            case _Step.CHALLENGE:
                self._send(self._answer(message))
            case _Step.RESPONSE:
                self._verify(message)
                self._send(_WELCOME)
            case _Step.WELCOME:
                _check_welcome(message)
        self._next_step()

    def _answer(self, message: bytes) -> bytes:
        """Return our response to the peer's ``#CHALLENGE#`` message."""
        if not message.startswith(_CHALLENGE):
            raise AuthenticationError(f"expected a challenge, got {len(message)} bytes: {_NO_KEY_HINT}")
        challenge = message[len(_CHALLENGE) :]
        if len(challenge) < _LEGACY_CHALLENGE_SIZE:
            raise AuthenticationError(
                f"the peer's challenge has {len(challenge)} bytes; at least {_LEGACY_CHALLENGE_SIZE} are required"
            )
        if len(challenge) == _LEGACY_CHALLENGE_SIZE:
            self._check_legacy_allowed(f"the peer sent a legacy {_LEGACY_CHALLENGE_SIZE}-byte HMAC-MD5 challenge")
            return _mac(self._key, challenge, b"md5")
        split = _split_digest_name(challenge)
        if split is None:
            raise AuthenticationError(f"the peer's challenge of {len(challenge)} bytes has no {{digest}} prefix")
        name = split[0]
        self._check_digest_allowed(name)
        return b"{%s}%s" % (name, _mac(self._key, challenge, name))

    def _verify(self, response: bytes) -> None:
        """Check the peer's response to our challenge."""
        if len(response) == _MD5_SIZE:
            self._check_legacy_allowed("the peer answered with legacy HMAC-MD5")
            name, digest = b"md5", response
        else:
            split = _split_digest_name(response)
            if split is None:
                raise AuthenticationError(
                    f"expected a response to our challenge, got {len(response)} bytes without a digest: {_NO_KEY_HINT}"
                )
            name, digest = split
            self._check_digest_allowed(name)
        expected = _mac(self._key, self._challenge, name)
        if len(digest) != len(expected):
            raise AuthenticationError(f"the peer's {name.decode()} digest has {len(digest)} bytes, not {len(expected)}")
        if not hmac.compare_digest(digest, expected):
            raise AuthenticationError("the peer's response to our challenge is wrong: the keys differ")

    # --- checks ------------------------------------------------------------------

    def _check_not_failed(self) -> None:
        if self._failure is not None:
            raise AuthenticationError(f"the handshake already failed: {self._failure}") from self._failure

    def _check_legacy_allowed(self, what: str) -> None:
        if not self._allow_legacy:
            raise AuthenticationError(f"{what}; {_LEGACY_HINT}")

    def _check_digest_allowed(self, name: bytes) -> None:
        if name in _LEGACY_DIGESTS:
            self._check_legacy_allowed(f"the peer uses the legacy digest {name.decode()}")
        elif name not in _DIGESTS:
            supported = ", ".join(sorted(n.decode() for n in _DIGESTS))
            raise AuthenticationError(f"the peer uses the unsupported digest {name!r}; supported: {supported}")

    def _send(self, message: bytes) -> None:
        self._outgoing += _FRAMING.encode(message)


def _split_digest_name(message: bytes) -> tuple[bytes, bytes] | None:
    """Split ``{name}payload`` into name and payload; None without such a prefix."""
    if not message.startswith(b"{"):
        return None
    close = message.find(b"}", 1, _MAX_NAME_SIZE + 2)
    return None if close < 0 else (message[1:close], message[close + 1 :])


def _mac(key: bytes, message: bytes, name: bytes) -> bytes:
    """Return the HMAC of `message` under `key` with the digest `name` (one we allow)."""
    try:
        return hmac.new(key, message, name.decode()).digest()
    except ValueError as exc:  # e.g. MD5 disabled in a FIPS build
        raise AuthenticationError(f"HMAC-{name.decode()} is not available in this Python") from exc


def _check_welcome(message: bytes) -> None:
    if message == _FAILURE:
        raise AuthenticationError("the peer rejected our response to its challenge: the keys differ")
    if message != _WELCOME:
        raise AuthenticationError(f"expected #WELCOME# or #FAILURE#, got {len(message)} bytes")


def _framing_error(error: FramingError, step: _Step) -> AuthenticationError:
    if not isinstance(error, MessageTooLarge):  # not raised by LengthPrefixed today
        return AuthenticationError(f"bad handshake message while waiting for {step.value}: {error}")
    return AuthenticationError(
        f"the peer announced a message of {error.size} bytes while we waited for {step.value};"
        f" handshake messages are at most {_MAX_MESSAGE_SIZE} bytes: {_NO_KEY_HINT}"
    )
