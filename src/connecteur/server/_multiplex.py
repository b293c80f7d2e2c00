"""The server's side of the multiplexing envelope: a handler around the user's, and heartbeats.

``Server(..., multiplexed=True)`` wraps the user's handler in a
`MultiplexedHandler` and the codec in an `EnvelopeCodec`, and the engines run
them as any handler and codec: the engines know nothing of envelopes. The
handler sees only payloads; its reply goes back under the request's id; its
exception becomes an error reply (the connection stays open); one-way
messages get no reply; pings get pongs.

A plain function without a codec (the common case) has a fast path, as on
plain connections: the session, told once per connection
(``EngineConfig.plain_envelopes``), hands each read's messages to
`MultiplexedHandler.answer_plain`, one loop that checks each request's
kind byte and prefixes its reply with the kind and the request's id bytes;
as a handler object, it would decode each message to an `Envelope` and
encode each `Outgoing` reply, about five times the cost of a plain request.

Replies leave in order on every engine but one: on the asyncio engine the
reply of an ``async def`` handler is an `Unordered` awaitable, which the
engine awaits beside the others instead of behind them, so each request is
answered as soon as its handler finishes.

Heartbeats (`HeartbeatWatch`) run on a thread of their own per process, alive
only while multiplexed connections with a heartbeat are open: engines have
no timer a handler could borrow, and a thread works the same on all four.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final, NamedTuple, final

from .._envelope import HEADER_SIZE, Envelope, Heartbeat, Kind, decode, encode, pack_header, unpack_header
from ..codecs import Codec
from ..errors import CodecError, ConnectionClosed, FramingError
from ..framing import Buffer
from ._handler import Handler, HandlerFailed, logger
from ._peer import Peer

__all__ = ["EnvelopeCodec", "HeartbeatWatch", "MultiplexedHandler", "Outgoing", "Unordered", "multiplexed"]

MAX_ERROR_TEXT: Final = 1024
"""Bytes of an exception's text an error reply carries at most: enough to debug, not a traceback."""

_FROM_CLIENTS: Final = frozenset({Kind.REQUEST, Kind.ONE_WAY, Kind.PING, Kind.PONG})
_REQUEST: Final = int(Kind.REQUEST)  # an int, not the enum: compared on every message of the fast path
_REPLY_KIND: Final = bytes((Kind.REPLY,))


def _request(message: bytes) -> Envelope:
    """The envelope of a request whose payload was handled already: its kind and id."""
    return Envelope(Kind.REQUEST, unpack_header(message)[1], b"")


class Outgoing(NamedTuple):
    """An envelope the server sends: what `MultiplexedHandler` returns and `EnvelopeCodec` encodes."""

    kind: Kind
    request_id: int
    payload: Buffer = b""


def _from_client(data: bytes) -> Envelope:
    """`EnvelopeCodec.decode`, for the fast path too."""
    try:
        envelope = decode(data)
    except FramingError as exc:
        raise CodecError(str(exc)) from None
    if envelope.kind not in _FROM_CLIENTS:
        raise CodecError(f"a client never sends {envelope.kind.name} (request id {envelope.request_id})")
    return envelope


@final
class EnvelopeCodec:
    """The codec the engines see: a message is an `Envelope`, a reply an `Outgoing`.

    A value that is not an `Outgoing` (``peer.send(value)``) leaves as a
    one-way message, through the user's codec if there is one.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: Codec | None) -> None:
        self._inner = inner

    def decode(self, data: bytes) -> Envelope:
        """The envelope of one message from a client.

        Raises:
            CodecError: not an envelope, or a kind clients never send: the
                peer does not speak it (the connection is closed as for any
                undecodable message).
        """
        return _from_client(data)

    def encode(self, value: Any) -> bytes:
        """The bytes of a reply (`Outgoing`), or of a one-way message carrying `value`.

        Raises:
            CodecError: the user's codec cannot encode `value`, or without a
                codec it is not bytes-like.
        """
        if type(value) is Outgoing:  # the id came from the peer's 4 bytes: it fits
            return pack_header(value.kind, value.request_id) + value.payload
        payload = value if self._inner is None else self._inner.encode(value)
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise CodecError(f"a message must be bytes without a codec, not {type(payload).__name__}")
        return encode(Kind.ONE_WAY, 0, payload)


@final
class Unordered:
    """An async handler's reply that an event loop may send before the replies ahead of it."""

    __slots__ = ("_coroutine",)

    def __init__(self, coroutine: Awaitable[Outgoing | None]) -> None:
        self._coroutine = coroutine

    def __await__(self) -> Generator[Any, None, Outgoing | None]:
        return self._coroutine.__await__()


@final
class MultiplexedHandler:
    """The user's handler (either form) behind the envelope: payloads in, replies under their ids out."""

    __slots__ = ("_codec", "_function", "_user", "_watch")

    def __init__(self, handler: object, codec: Codec | None, heartbeat: Heartbeat | None) -> None:
        self._user = Handler(handler)  # the codec is applied here, so that its failures become error replies
        # A plain function is called straight, as Handler.answer_plain does: a wrapper's call costs on every message.
        self._function: Callable[[Any], object] | None = handler if self._user.is_plain else None  # type: ignore[assignment]
        self._codec = codec
        self._watch = None if heartbeat is None else HeartbeatWatch(heartbeat)

    def connected(self, peer: Peer) -> object:
        if self._watch is not None:
            self._watch.add(peer)
        try:
            return self._user.connected(peer)
        except HandlerFailed as exc:
            raise exc.__cause__ or exc from None  # the outer Handler wraps it again, naming the hook

    def closed(self, peer: Peer, error: BaseException | None) -> object:
        if self._watch is not None:
            self._watch.remove(peer)
        try:
            return self._user.closed(peer, error)
        except HandlerFailed as exc:
            raise exc.__cause__ or exc from None

    @property
    def is_plain(self) -> bool:
        """True for a plain ``message -> reply`` function without a codec: `answer_plain` serves it."""
        return self._function is not None and self._codec is None

    def answer_plain(self, peer: Peer, messages: list[bytes], replies: list[Buffer]) -> list[Unordered]:
        """Answer one read's messages for a plain function (`is_plain`), appending the replies' envelopes.

        The session's fast path for a multiplexed connection, chosen once per
        connection as the plain one is (``Handler.answer_plain``): one loop,
        and for a request whose handler returns bytes only a check of its
        kind byte and the reply's prefix (the request's id bytes, copied) on
        top of the plain path. Anything else (pings, one-way messages,
        failures, other replies) is answered as `received` answers it. A
        plain function has no peer, so no message can close the connection
        halfway: every message gets its call.

        Returns:
            The async replies (asyncio engine), for the session to chain: they
            leave as each finishes, in any order.

        Raises:
            HandlerFailed: a message that is no client's envelope (a peer
                fault: the connection closes); `replies` holds the replies to
                the messages before it.
        """
        function = self._function
        assert function is not None and self._codec is None
        if self._watch is not None:
            self._watch.saw(peer)  # once for the read: its messages all came now
        unordered: list[Unordered] = []
        outcome: Outgoing | Unordered | None
        for message in messages:
            if len(message) >= HEADER_SIZE and message[0] == _REQUEST:
                try:
                    result = function(message[HEADER_SIZE:])
                except Exception as exc:
                    outcome = self._failed(peer, _request(message), exc)
                else:
                    if type(result) is bytes:  # the common case, first: the reply's id is the request's 4 bytes
                        replies.append(_REPLY_KIND + message[1:HEADER_SIZE] + result)
                        continue
                    outcome = self._outcome(peer, _request(message), result)
            else:
                outcome = self._answer_other(peer, message)
            if isinstance(outcome, Unordered):
                unordered.append(outcome)
            elif outcome is not None:
                replies.append(pack_header(outcome.kind, outcome.request_id) + outcome.payload)
        return unordered

    def _answer_other(self, peer: Peer, message: bytes) -> Outgoing | Unordered | None:
        """`answer_plain`'s message that is no request: decoded and answered as `received` answers it."""
        try:
            envelope = _from_client(message)
        except CodecError as exc:
            raise HandlerFailed("received", exc, peer_fault=True) from exc
        return self._answer(peer, envelope)

    def received(self, peer: Peer, envelope: Envelope) -> Outgoing | Unordered | None:
        """Answer one envelope: a pong, the handler's reply, an error reply, or nothing."""
        if self._watch is not None:
            self._watch.saw(peer)
        return self._answer(peer, envelope)

    def _answer(self, peer: Peer, envelope: Envelope) -> Outgoing | Unordered | None:
        kind, request_id = envelope.kind, envelope.request_id
        if kind is Kind.PING:
            return Outgoing(Kind.PONG, request_id)
        if kind is Kind.PONG:
            return None
        function = self._function
        try:
            if function is not None and self._codec is None:
                result = function(envelope.payload)
            else:
                value = envelope.payload if self._codec is None else self._codec.decode(envelope.payload)
                result = self._user.received_value(peer, value)
        except Exception as exc:  # the handler's, or the codec's CodecError: this request's failure alone
            return self._failed(peer, envelope, exc)
        if type(result) is bytes and envelope.kind is Kind.REQUEST:  # the common case, first
            return Outgoing(Kind.REPLY, envelope.request_id, result)
        return self._outcome(peer, envelope, result)

    def _outcome(self, peer: Peer, envelope: Envelope, result: object) -> Outgoing | Unordered | None:
        """The answer to `envelope` of a handler that returned `result`: an awaitable's comes later."""
        if inspect.isawaitable(result):
            if not _loop_running():  # an engine without an event loop: this request fails, not the connection
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: say why in the error reply, not in a RuntimeWarning
                error = TypeError("an async handler needs engine='asyncio'")
                return self._failed(peer, envelope, HandlerFailed("received", error))
            return Unordered(self._later(peer, envelope, result))
        return self._reply(peer, envelope, result)

    async def _later(self, peer: Peer, envelope: Envelope, result: Awaitable[object]) -> Outgoing | None:
        try:
            reply = await result
        except Exception as exc:
            return self._failed(peer, envelope, HandlerFailed("received", exc))
        return self._reply(peer, envelope, reply)

    def _reply(self, peer: Peer, envelope: Envelope, reply: object) -> Outgoing | None:
        """The envelope of a handler's `reply` (None: an empty payload), or of the failure to encode it."""
        if envelope.kind is not Kind.REQUEST:
            return None
        if reply is None:
            return Outgoing(Kind.REPLY, envelope.request_id)
        try:
            payload = reply if self._codec is None else self._codec.encode(reply)
        except Exception as exc:  # CodecError, or a codec's bug: this request's failure alone
            return self._failed(peer, envelope, HandlerFailed("received", exc))
        if not isinstance(payload, bytes | bytearray | memoryview):
            error = TypeError(f"a handler must return bytes or None, not {type(payload).__name__}")
            return self._failed(peer, envelope, HandlerFailed("received", error))
        return Outgoing(Kind.REPLY, envelope.request_id, payload)

    def _failed(self, peer: Peer, envelope: Envelope, error: Exception) -> Outgoing | None:
        """Log a request's failure; the error reply for a request (a one-way message gets none)."""
        cause = error.__cause__ if isinstance(error, HandlerFailed) and error.__cause__ is not None else error
        what = f"{envelope.kind.name.lower().replace('_', '-')} {envelope.request_id}"
        if isinstance(cause, CodecError):  # the peer's bytes, not our bug: one line
            logger.info("%s from %s does not decode: %s", what, peer, cause)
        else:
            logger.error("the handler failed on %s from %s", what, peer, exc_info=cause)
        if envelope.kind is not Kind.REQUEST:
            return None
        text = f"{type(cause).__name__}: {cause}".encode(errors="replace")[:MAX_ERROR_TEXT]
        return Outgoing(Kind.ERROR, envelope.request_id, text)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def multiplexed(
    handler: object, codec: Codec | None, heartbeat: Heartbeat | None
) -> tuple[MultiplexedHandler, EnvelopeCodec]:
    """The handler and codec a multiplexed server gives its engine."""
    return MultiplexedHandler(handler, codec, heartbeat), EnvelopeCodec(codec)


@final
class HeartbeatWatch:
    """Pings peers that fell silent and closes those silent too long; one per server and process.

    Two threads, alive only while peers are watched: the watcher never
    blocks (it decides and closes), the pinger sends, which on the blocking
    engines waits while a peer does not read; the watcher's close ends that
    wait (engines shut the socket down without waiting for the send).
    """

    def __init__(self, heartbeat: Heartbeat, clock: Callable[[], float] = time.monotonic) -> None:
        self._heartbeat = heartbeat
        self._clock = clock
        self._pid = -1
        self._reset()

    def _reset(self) -> None:
        """Fresh state for this process: a forked worker inherits none of its parent's threads."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._last: dict[Peer, float] = {}  # when each peer was last heard
        self._pinged: dict[Peer, float] = {}  # when each was last pinged, while silent
        self._to_ping: list[Peer] = []
        self._wake_pinger = threading.Condition(self._lock)
        self._running = False
        # Which pair of threads is the current one: a pair that ended (no peers left)
        # must not go on beside the next pair, started as a peer came meanwhile.
        self._generation = 0

    def add(self, peer: Peer) -> None:
        """Watch `peer` from now on."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            self._last[peer] = self._clock()
            if not self._running:
                self._running = True
                self._generation += 1
                pair = (self._generation,)
                threading.Thread(target=self._watch, args=pair, name="connecteur-heartbeat", daemon=True).start()
                threading.Thread(target=self._ping, args=pair, name="connecteur-ping", daemon=True).start()

    def saw(self, peer: Peer) -> None:
        """A message came from `peer`: it is alive.

        No lock, on every message: one store in a dict the watcher only
        copies under the GIL. A peer removed between the test and the store
        comes back until the watcher expires it, harmlessly.
        """
        last = self._last
        if peer in last:
            last[peer] = self._clock()

    def remove(self, peer: Peer) -> None:
        """`peer` closed: stop watching it."""
        with self._lock:
            self._forget(peer)

    def _current(self, generation: int) -> bool:
        """Whether the threads of `generation` should go on (under the lock)."""
        return self._running and self._generation == generation

    def _watch(self, generation: int) -> None:
        """Every tick: close the peers silent past interval + deadline, queue pings for those past interval."""
        heartbeat, stop = self._heartbeat, threading.Event()
        while not stop.wait(heartbeat.tick):
            try:
                expired = self._check()
            except Exception:  # our bug: log it, but keep watching, or silent peers would stay open for ever
                logger.exception("the heartbeat watch failed; it goes on")
                continue
            for peer in expired:
                logger.info(
                    "closing %s: nothing received for %g s (heartbeat %g s + %g s)",
                    peer,
                    heartbeat.interval + heartbeat.deadline,
                    heartbeat.interval,
                    heartbeat.deadline,
                )
                peer.close()
            with self._lock:
                if not self._current(generation):
                    return

    def _check(self) -> list[Peer]:
        now, heartbeat = self._clock(), self._heartbeat
        silence = heartbeat.interval + heartbeat.deadline
        with self._lock:
            heard = list(self._last.items())  # a copy: `saw` stores without the lock
            expired = [peer for peer, last in heard if now - last > silence]
            for peer in expired:
                self._forget(peer)
            for peer, last in heard:
                # Silent for an interval, and not pinged for one: a ping per interval of silence.
                if now - max(last, self._pinged.get(peer, last)) >= heartbeat.interval and peer in self._last:
                    self._pinged[peer] = now
                    self._to_ping.append(peer)
            if not self._last:
                self._running = False
            self._wake_pinger.notify_all()
        return expired

    def _forget(self, peer: Peer) -> None:
        """`remove`, under the lock."""
        self._last.pop(peer, None)
        self._pinged.pop(peer, None)

    def _ping(self, generation: int) -> None:
        ping_id = 0
        while True:
            with self._lock:
                while not self._to_ping and self._current(generation):
                    self._wake_pinger.wait()
                if not self._current(generation):
                    return
                peers, self._to_ping = self._to_ping, []
            for peer in peers:
                ping_id = ping_id % 0xFFFFFFFF + 1
                with contextlib.suppress(ConnectionClosed, OSError):  # closing already: the engine reports it
                    peer.send(Outgoing(Kind.PING, ping_id))
