"""`Session`: what happens to one server connection between its bytes and the handler, with no I/O.

The model is websockets' ``protocol.py`` and h11's ``Connection``: the engine's
per-connection loop reads bytes and hands them in (`Session.receive_data`,
`Session.receive_eof`), writes what `Session.data_to_send` gives back, waits
until `Session.next_deadline` and then calls `Session.check_deadlines`, and
closes the socket when the session says so (`Session.close_expected`,
`Session.error`), then calls `Session.connection_lost`. In between, the
session runs the channel (PROXY header, TLS, authentication), the framing's
decoder, the handler calls, the framing of replies in order, the counts,
the deadlines, the memory budget's figure and the close report.

It owns no socket, no thread and no timer. It reads no clock either: its
`Deadlines` read the clock they are given (`time.monotonic` by default, a fake
one in tests), and only when a deadline is configured, as they did before;
`check_deadlines` takes the time from the loop. That keeps the hot path free
of clock reads when no timeout is set, which passing ``now`` into every
`receive_data` would not.

Fast paths are chosen once, when a session is made, from the framing and its
decoder (`Capabilities`), never probed per read.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, final

from .._channel import HANDSHAKE_ERRORS, Channel
from ..errors import FramingError, MessageTooLarge
from ..framing import LARGE_MESSAGE, BodyPool, Buffer, Decoder, DirectDecoder, Framing, batch_encoder, direct_decoder
from ._budget import Budget, Holder
from ._engine import EngineConfig, PlainEnvelopes, Traffic, channel_opened
from ._handler import HandlerFailed, frame_replies, log_closing, log_skipped, logger
from ._peer import Link, Peer

__all__ = ["Capabilities", "Lock", "Session"]


class Lock(Protocol):
    """A `threading.Lock`, as the session uses it (it imports no threading of its own)."""

    def acquire(self) -> bool:
        """Wait for the lock and take it."""
        ...

    def release(self) -> None:
        """Let the lock go."""
        ...


@final
@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a framing and its decoders can do beyond the `Framing` protocol, found out once.

    Attributes:
        encode_all: the wire bytes of several messages in one call (`batch_encoder`).
        encode_parts: a large message's header and body as separate buffers, for
            one gathering write with no copy; None when the framing cannot.
        direct_reads: its decoder can take a read straight into a large
            message's body (`DirectDecoder`).
        pools_bodies: its decoder can borrow large bodies from a `BodyPool`.
        reports_held: its decoder says how much memory it holds (``held``), which
            the budget counts; others are counted by the bytes they buffered.
        skips_oversize: its decoder drops messages over `max_size` instead of
            failing (``on_oversize="skip"``), and reports each to ``on_skip``.
    """

    encode_all: Callable[[Sequence[Buffer]], bytes]
    encode_parts: Callable[[Buffer], list[Buffer]] | None
    direct_reads: bool
    pools_bodies: bool
    reports_held: bool
    skips_oversize: bool

    @classmethod
    def probe(cls, framing: Framing, decoder: Decoder) -> Capabilities:
        """The capabilities of `framing`, whose `decoder` is given."""
        return cls(
            encode_all=batch_encoder(framing),
            encode_parts=getattr(framing, "encode_parts", None),
            direct_reads=direct_decoder(decoder) is not None,
            pools_bodies=hasattr(decoder, "use_pool"),
            reports_held=hasattr(decoder, "held"),
            skips_oversize=getattr(framing, "on_oversize", "close") == "skip",
        )


@final
class Session:
    """One server connection, sans I/O: bytes in, bytes out, handler calls in between.

    Args:
        config: the engine's configuration.
        address: the peer's address as accepted.
        link: what the `Peer` calls for ``send`` and ``close`` (the engine's
            per-connection object, which knows its threads).
        traffic: where the messages and bytes are counted.
        budget: the process's memory budget; `holder` is what it pauses and evicts.
        holder: the engine's per-connection object, as the budget sees it.
        body_pool: where the decoder borrows large bodies, if it can.
        lock: held around what another thread's send shares with this
            session (counts, TLS encryption and decryption, the outgoing list):
            engines that send from any thread pass one; event loops, None.
        on_open: called once the handshakes are done, before the handler's
            ``connected``.
        async_replies: the loop awaits replies (asyncio): a handler may return
            an awaitable, which the session hands out (`take_async_replies`)
            for the loop to await in order and give back (`reply`).
        on_reply: for loops that write each reply at once (the blocking ones:
            a slow handler must not hold back the reply before it), called
            after each reply is queued while handler calls run. None: the
            replies to one read leave together after it.
        clock: what the deadlines read; `time.monotonic` but in tests.

    Attributes:
        peer: the connection as the handler sees it.
        capabilities: what the framing can do, probed once.
        direct: the decoder, when the next read may go straight into the body
            of a large message under way (see `DirectDecoder`): a loop reads
            into ``direct.recv_buffer()`` while ``direct.reading_body``, then
            calls `buffer_filled`. None when it cannot (no such decoder, or a
            channel in front that must see every byte). An attribute, not a
            call: a loop checks it before every read.
        closing: True once no more bytes are to be read: close when what
            `data_to_send` gave is written, or at once if `error` is set.
        error: why the connection ends, once it fails (logged already).
        new_deadline: True when a deadline may have moved earlier since the
            loop last asked `next_deadline`; the loop clears it.
        pending_replies: async replies handed out or to be, not back yet
            (later replies wait behind them): a loop with none skips
            `take_async_replies`, and stops reading past a limit.
    """

    __slots__ = (
        "_announced",
        "_async_replies",
        "_awaiting",
        "_batch",
        "_budget",
        "_channel",
        "_config",
        "_deadlines",
        "_decoder",
        "_decoder_held",
        "_direct",
        "_ended",
        "_envelopes",
        "_held",
        "_holder",
        "_lock",
        "_on_open",
        "_on_reply",
        "_out",
        "_plain",
        "_queued",
        "_traffic",
        "capabilities",
        "closing",
        "direct",
        "error",
        "new_deadline",
        "peer",
        "pending_replies",
    )

    def __init__(
        self,
        config: EngineConfig,
        address: object,
        link: Link,
        *,
        traffic: Traffic,
        budget: Budget,
        holder: Holder,
        body_pool: BodyPool | None = None,
        lock: Lock | None = None,
        on_open: Callable[[], object] | None = None,
        async_replies: bool = False,
        on_reply: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self.peer = Peer(link, address, config.handler.encode_value)
        self._decoder = config.framing.decoder()
        self.capabilities = Capabilities.probe(config.framing, self._decoder)
        if self.capabilities.pools_bodies and body_pool is not None:
            self._decoder.use_pool(body_pool)  # type: ignore[attr-defined]
        if self.capabilities.skips_oversize:
            self._decoder.on_skip = self._skipped  # type: ignore[attr-defined]
        # None: it cannot read straight into a large message.
        self._direct: DirectDecoder | None = direct_decoder(self._decoder)
        # PROXY header, TLS, authentication; None once open if it has nothing left to do.
        self._channel = config.channel.open(address)
        self.direct = self._direct if self._channel is None else None
        self._deadlines = config.deadlines(clock)
        self._traffic = traffic
        self._budget = budget
        self._holder: Holder | None = holder  # None once ended: it holds this session (a cycle)
        self._held = 0  # bytes held, as last told to the budget
        self._decoder_held = 0  # the decoder's memory after the last read, for the budget
        self._queued = 0  # the loop's bytes not yet written, as it last told (`account`)
        self._lock = lock
        self._on_open = on_open
        self._on_reply = on_reply
        self._async_replies = async_replies
        self._awaiting: list[tuple[object, bool]] = []  # for take_async_replies: (reply, counts)
        self.pending_replies = 0
        self._out: list[Buffer] = []  # for data_to_send, in order
        self._plain = config.handler.is_plain  # answered in _received
        # A multiplexed plain function: a fast path of its own, the plain one's loop inside the envelope.
        self._envelopes = config.plain_envelopes
        # While handler calls run, the replies and peer.send() messages they
        # produce, to leave as one buffer after them; a close waits for them.
        self._batch: list[bytes] | None = None
        self._announced = False  # the handler's connected() was called
        self._ended = False  # connection_lost() ran
        self.closing = False
        self.error: BaseException | None = None
        self.new_deadline = False

    # --- opening -----------------------------------------------------------------

    def start(self) -> None:
        """Begin: the channel's first handshake bytes, or the handler's ``connected``."""
        self.new_deadline = True
        if self._channel is not None:
            self._out_append(self._channel.data_to_send())
        else:
            self._announce()

    def _announce(self) -> None:
        self._announced = True
        if self._on_open is not None:
            self._on_open()
        try:
            started = self._config.handler.connected(self.peer)
        except HandlerFailed as exc:
            self.fail(exc)
            return
        if self._async_replies and inspect.isawaitable(started):
            self._chain(started, counts=False)

    def _unwrap(self, data: Buffer) -> Buffer | None:
        """Pass what was read through the channel; None if nothing is left for the decoder."""
        channel = self._channel
        assert channel is not None
        was_open = channel.is_open
        lock = self._lock
        if lock is not None:  # decrypting must not run while another thread encrypts
            lock.acquire()
        try:
            data = channel.receive(data) if data else self._receive_eof(channel)
        except HANDSHAKE_ERRORS as exc:
            self._out_append(channel.data_to_send())  # an alert or #FAILURE# for the peer, if it still reads
            self.fail(exc)
            return None
        finally:
            if lock is not None:
                lock.release()
        self._out_append(channel.data_to_send())
        if not was_open and channel.is_open:
            self._channel = channel_opened(channel, self.peer, self._deadlines)
            if self._channel is None:
                self.direct = self._direct
            self.new_deadline = True
            self._announce()
        return data if self._announced and self.error is None else None

    @staticmethod
    def _receive_eof(channel: Channel) -> bytes:
        channel.receive_eof()
        return b""

    # --- bytes in ----------------------------------------------------------------

    def buffer_filled(self, count: int) -> None:
        """`count` bytes (not 0) were read into ``direct.recv_buffer()`` (see `direct`)."""
        assert self._direct is not None
        self._received(self._direct.buffer_filled(count), count)

    def receive_data(self, data: Buffer) -> None:
        """Take bytes read from the socket (not empty): answer every message they complete."""
        if self._channel is not None and (data := self._unwrap(data)) is None:  # type: ignore[assignment]
            return
        try:
            messages = self._decoder.feed(data)
        except FramingError as exc:
            self._framing_failed(exc)
            return
        self._received(messages, len(data))

    def receive_eof(self) -> None:
        """The peer closed its side: end cleanly, or fail if it stopped inside a message or handshake."""
        if self._channel is not None and self._unwrap(b"") is None:
            return
        try:
            messages = self._decoder.eof()  # a close-delimited message ends here
        except FramingError as exc:
            self._framing_failed(exc)
            return
        self._received(messages, 0)
        self.close()

    def _skipped(self, error: MessageTooLarge) -> None:
        """The decoder dropped a message over `max_size` (``on_oversize="skip"``): count it, log it."""
        self._config.counters.skipped_message()
        log_skipped(self.peer.address, error)

    def _framing_failed(self, exc: FramingError) -> None:
        """Answer the messages before the bad bytes, then fail."""
        self._dispatch(exc.messages)
        self.fail(exc)

    def _received(self, messages: list[bytes], size: int) -> None:
        """`size` bytes were decoded into `messages`: note the time, count, answer.

        A plain function (`_plain`) is answered here, the hot path of a
        server: one handler loop for the read's messages, their replies
        framed at once (`_emit_replies`), the clock read only when a deadline
        needs it. A multiplexed plain function has its own such loop
        (`_answer_envelopes`). Anything else (async replies, a handler
        object, replies still in flight before these) goes through `_dispatch`.
        """
        buffered = self._decoder.buffered
        # Its memory, not the bytes received: a body grows by doubling, so the
        # memory can be twice the bytes, and the budget is one of memory.
        held = self._decoder_memory() if buffered else 0
        if held != self._decoder_held:
            self._decoder_held = held
            self._tell_budget()
        deadlines = self._deadlines
        if deadlines.is_active and (buffered or deadlines.notes_reads) and deadlines.received(bool(messages), buffered):
            self.new_deadline = True
        traffic = self._traffic
        traffic.bytes_in += size
        if not messages:
            return
        traffic.messages_in += len(messages)
        if not self._plain or self.pending_replies:
            if self._envelopes is not None and not self.pending_replies:
                self._answer_envelopes(self._envelopes, messages)
            else:
                self._dispatch(messages)
            return
        replies: list[Buffer] = []
        failure: HandlerFailed | None = None
        stop, pending = len(messages), None
        try:
            stop, pending = self._config.handler.answer_plain(messages, replies, async_ok=self._async_replies)
        except HandlerFailed as exc:
            failure = exc  # answer the messages before the one that failed, then close
        if replies:
            failure = self._emit_replies(replies) or failure
        if failure is not None:
            self.fail(failure)
        elif pending is not None:  # an awaitable: it and the rest wait in the chain
            self._chain(pending)
            self._dispatch(messages[stop + 1 :])

    # --- the handler ---------------------------------------------------------------

    def _answer_envelopes(self, envelopes: PlainEnvelopes, messages: list[bytes]) -> None:
        """`_received`'s fast path on a multiplexed connection: `_envelopes` answers, its async replies chain.

        A handler's failure is an error reply; only bytes that are no
        envelope fail the connection, after the replies before them. As on
        the plain path, the replies to one read leave together after it,
        `on_reply` or not: a slow request holds back those of its read.
        """
        replies: list[Buffer] = []
        failure: HandlerFailed | None = None
        unordered: Sequence[object] = ()
        try:
            unordered = envelopes.answer_plain(self.peer, messages, replies)
        except HandlerFailed as exc:
            failure = exc
        if replies:
            failure = self._emit_replies(replies) or failure
        if failure is not None:
            self.fail(failure)
        for reply in unordered:  # none but on asyncio: they leave as each is done, in any order
            self._chain(reply)

    def _dispatch(self, messages: list[bytes]) -> None:
        """Call the handler for each message; the replies leave as one buffer after the last."""
        if not messages:
            return
        handler, peer, encode = self._config.handler, self.peer, self._config.framing.encode
        replies: list[bytes] = []
        self._batch = replies
        try:
            for message in messages:
                reply = self._call_async(message) if self._async_replies else handler.received(peer, message)
                if reply is not None:
                    try:
                        replies.append(encode(reply))
                    except FramingError as exc:
                        raise HandlerFailed("received", exc) from exc
                    if self._on_reply is not None:
                        self._emit_batch(replies)
                        replies.clear()
                        self._on_reply()
                if self.closing:  # peer.close(), or a failure
                    break
        except HandlerFailed as exc:
            self._emit_batch(replies)  # answer the messages before the one that failed, then close
            self.fail(exc)
            return
        finally:
            self._batch = None
        self._emit_batch(replies)
        if self.closing and not self.pending_replies:
            self._close_channel()

    def _call_async(self, message: bytes) -> Buffer | None:
        """The handler's reply to `message`, or None when it joins the chain of async replies."""
        handler = self._config.handler
        reply = handler.received_maybe_async(self.peer, message)
        if self.pending_replies or (type(reply) is not bytes and inspect.isawaitable(reply)):
            self._chain(reply)  # behind the replies in flight, even a ready one: order
            return None
        return handler.check_reply(reply)

    def _chain(self, reply: object, *, counts: bool = True) -> None:
        self.pending_replies += 1
        self._awaiting.append((reply, counts))

    def _emit_replies(self, replies: list[Buffer]) -> HandlerFailed | None:
        """Frame and queue a plain handler's `replies`; the failure of one too large (those before it leave)."""
        encode_parts = self.capabilities.encode_parts
        try:
            if encode_parts is not None and len(replies) == 1 and len(replies[0]) >= LARGE_MESSAGE:
                parts = encode_parts(replies[0])  # no copy of a large reply: one gathering write
                self._emit(parts, 1, sum(map(len, parts)))
                return None
            wire, count, too_large = self.capabilities.encode_all(replies), len(replies), None
        except FramingError:  # a reply too large: send those before it
            wire, count, too_large = frame_replies(self._config.framing, self.capabilities.encode_all, replies)
        if count:
            self._emit((wire,), count, len(wire))
        return too_large

    # --- async replies (asyncio) ---------------------------------------------------------

    def take_async_replies(self) -> list[tuple[object, bool]]:
        """Take the replies to chain, in order: ``(awaitable or value, counts)``.

        The loop awaits each after the one before and gives its outcome to
        `reply`, in the same order. ``counts`` is False for the awaitable of
        the handler's ``connected``, whose result is no reply.
        """
        awaiting = self._awaiting
        if awaiting:
            self._awaiting = []
        return awaiting

    def reply(self, result: object, *, counts: bool = True, error: Exception | None = None) -> None:
        """An async reply came back (in order): frame and queue it; `error` if awaiting it raised."""
        self.pending_replies -= 1
        try:
            if error is not None:
                raise HandlerFailed("received", error) from error
            if counts and self.error is None and not self._ended:
                checked = self._config.handler.check_reply(result)
                if checked is not None:
                    try:
                        data = self._config.framing.encode(checked)
                    except FramingError as exc:
                        raise HandlerFailed("received", exc) from exc
                    self._emit((data,), 1, len(data))
        except HandlerFailed as exc:
            self.fail(exc)
        if self.closing and not self.pending_replies:
            self._close_channel()

    # --- bytes out -------------------------------------------------------------------

    def frame(self, message: Buffer) -> bytes:
        """The wire bytes of one message for `send` or `queue` (any thread).

        Raises:
            FramingError: the framing cannot carry it.
        """
        return self._config.framing.encode(message)

    def send(self, data: bytes) -> None:
        """Send one framed message from the session's own thread (``peer.send``).

        During handler calls it joins their replies, in order, in one buffer.
        """
        if self._batch is not None:
            self._batch.append(data)
        else:
            self._emit((data,), 1, len(data))

    def queue(self, data: bytes) -> None:
        """Send one framed message now, whatever the session's thread is doing (under the `lock`)."""
        self._emit((data,), 1, len(data))

    def _emit_batch(self, replies: list[bytes]) -> None:
        if replies and self.error is None:
            wire = b"".join(replies) if len(replies) > 1 else replies[0]
            self._emit((wire,), len(replies), len(wire))

    def _emit(self, parts: Sequence[Buffer], messages: int, size: int) -> None:
        """Count `messages` messages of `size` bytes and queue their wire `parts` (encrypted with TLS)."""
        lock = self._lock
        if lock is not None:  # not `with` around a second method: on the hot path, a call costs
            lock.acquire()
        try:
            traffic = self._traffic
            traffic.messages_out += messages
            traffic.bytes_out += size
            if self._deadlines.tracks_activity:
                self._deadlines.moved()
            if self._channel is not None:
                self._out.append(self._channel.send(parts[0] if len(parts) == 1 else b"".join(parts)))
            else:
                self._out.extend(parts)
        finally:
            if lock is not None:
                lock.release()

    def _out_append(self, data: bytes) -> None:
        if data:
            self._out.append(data)

    def data_to_send(self) -> list[Buffer]:
        """Take the buffers to write, in order (often none, often one)."""
        out = self._out
        if out:
            self._out = []
        return out

    # --- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading; close once the bytes due are written (``peer.close`` from the session's thread)."""
        if self.closing:
            return
        self.closing = True
        if self._batch is None and not self.pending_replies:  # else once the handler calls and async replies are done
            self._close_channel()

    def _close_channel(self) -> None:
        channel = self._channel
        if channel is not None and channel.is_open and self.error is None:
            self._channel = None
            self._out_append(channel.close_write())  # TLS close_notify: a clean end, not a truncation

    @property
    def announced(self) -> bool:
        """True once the handler's ``connected`` ran (the handshakes are done): a live peer for `Server.peers`."""
        return self._announced and not self._ended

    @property
    def encrypts(self) -> bool:
        """True while what it sends is encrypted (TLS): the queued bytes are one stream, no message can be dropped."""
        return self._channel is not None and self._channel.encrypts

    @property
    def in_handler(self) -> bool:
        """True while handler calls for received messages run: a `send` or `close` then waits for them."""
        return self._batch is not None

    def close_expected(self) -> bool:
        """True when the loop should close the connection once `data_to_send` is written (at once on `error`).

        `closing` alone says so on loops without async replies; with them, a
        clean close also waits until none is pending.
        """
        return self.closing and (self.error is not None or not self.pending_replies)

    def fail(self, error: BaseException) -> None:
        """The connection must close at once because of `error`: log it as its kind deserves, keep it for the report."""
        if self.error is None and not self._ended:
            self.error = log_closing(self.peer.address, error)
            self.closing = True

    # --- deadlines ---------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `check_deadlines` must run next (on the deadlines' clock), or None."""
        self.new_deadline = False
        return self._deadlines.next_due() if self._deadlines.is_active else None

    def check_deadlines(self, now: float) -> None:
        """Fail if a deadline has passed at `now`."""
        if self.error is not None or (expired := self._deadlines.expired(now)) is None:
            return
        channel = self._channel
        if channel is not None and not channel.is_open:
            self.fail(channel.timed_out(expired.seconds))
        else:
            self.fail(expired)

    # --- memory ------------------------------------------------------------------------

    def account(self, queued: int) -> None:
        """The loop's queue of bytes not yet written holds `queued` now: call when it changes.

        The session tells the budget what the connection holds: these bytes
        and its decoder's, which it follows itself.
        """
        self._queued = queued
        self._tell_budget()

    def _decoder_memory(self) -> int:
        """The decoder's memory for its unfinished message: ``held`` on connecteur's decoders, else `buffered`."""
        return self._decoder.held if self.capabilities.reports_held else self._decoder.buffered  # type: ignore[attr-defined]

    def _tell_budget(self) -> None:
        held = self._decoder_held + self._queued
        if held != self._held and self._holder is not None:
            self._held = held
            self._budget.update(self._holder, held)

    # --- the end -----------------------------------------------------------------------

    def connection_lost(self, error: BaseException | None = None) -> object:
        """The socket is closed: free the buffers, count, and tell the handler (once).

        Args:
            error: what ended the connection, as the loop saw it (a reset its
                transport reported), when the session holds no error of its own.

        Returns:
            What the handler's ``closed`` returned: an event loop awaits an awaitable.
        """
        if self._ended:
            return None
        self._ended = True
        self.closing = True
        if self.error is None:
            self.error = error
        error = self.error
        self._release()
        if self._holder is not None:
            self._budget.forget(self._holder)
            self._holder = None
        self._config.counters.closed(error=error is not None)
        try:
            return self._report(error)
        finally:
            if error is not None:
                # Its traceback holds the frames that failed, whose locals hold this
                # session: a cycle only the garbage collector would free. Logged and
                # reported: drop it.
                error.__traceback__ = None

    def _report(self, error: BaseException | None) -> object:
        """Tell the handler; a failed handshake is counted instead: the handler never saw this peer."""
        if not self._announced:
            if isinstance(error, HANDSHAKE_ERRORS):  # not a mere reset
                self._config.counters.handshake_failed()
            return None
        try:
            return self._config.handler.closed(self.peer, error)
        except HandlerFailed as exc:
            logger.error("%s", exc, exc_info=exc.__cause__)
            return None
        finally:
            self.peer._detach()  # a handler that keeps its peers must not keep the engine's object

    def _release(self) -> None:
        """Free the buffers now: a timer entry, an error's traceback or the handler may hold this object longer."""
        self._out = []
        self._awaiting = []
        self._held = self._decoder_held = self._queued = 0
        self._decoder = self._config.framing.decoder()  # empty: the old one's buffers go with it
        self._direct = self.direct = None
        self._channel = None
        self._on_open = self._on_reply = None  # they may hold the engine's object, which holds this session
