"""A relay that shows the messages on a link without changing a byte: `Trace`.

`connecteur proxy -v` logs connections; to *see* what two programs say to
each other, put `Trace` between them: it listens, relays each client to the
target like the fault proxy (the same loop and `Relay`, with no faults), and
feeds each direction's bytes to a decoder of the framing the programs speak,
reporting one `TraceEvent` per message.

The relay comes first: each read is queued and sent on before its bytes are
decoded, and decoding never changes, holds or drops them. Memory stays
bounded whatever the traffic: each direction's decoder is bounded by the
framing's ``max_size`` (a decoder holds at most about twice the message under
way), and the relay's own queues by
`connecteur.tools.proxy.QUEUE_LIMIT` (256 KiB) per direction. A framing error (a message
over ``max_size``, a bad header, a stream ending inside a message) is
reported once for that direction, whose decoding then stops; its bytes go on
passing through untouched.

Events are reported on the relay's thread, in the order they happen, to the
`report` callback given to `Trace`; `format_text` and `format_json` turn one
into a line.
"""

from __future__ import annotations

import itertools
import json
import random
import reprlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self, final

from .. import _socket
from ..address import Address, AddressLike, format_address, parse_address
from ..codecs import Codec
from ..errors import FramingError, TruncatedMessage
from ..framing import Decoder, Framing
from ._relay import ListenerLoop, Relay, close_socket, logger, resolve_once
from .proxy import Faults

__all__ = ["DEFAULT_PREVIEW", "Trace", "TraceEvent", "format_json", "format_text"]

DEFAULT_PREVIEW: Final = 64
"""Bytes of each message shown, and characters of its decoded value."""

BACKLOG: Final = 128
"""Connections the kernel may queue before the trace accepts them."""

Direction = Literal["->", "<-", ""]
"""``->``: client to target; ``<-``: target to client; ``""``: the whole connection."""

_NO_FAULTS: Final = Faults()
_UNREACHABLE: Final = "the target could not be reached"


@final
@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One line of a trace: a connection opened or closed, a message, or a framing error.

    Attributes:
        time: when it happened, as `time.time()`.
        connection: the connection's number, from 1, in the order accepted.
        kind: ``"open"``, ``"message"``, ``"error"`` or ``"close"``.
        direction: ``"->"`` (client to target) or ``"<-"`` (target to
            client) for a message or an error; ``""`` for open and close.
        size: a message's size in bytes; for close, the bytes relayed both ways.
        preview: a message's first bytes (at most the trace's `preview`).
        value: with a codec, the repr of the decoded value, truncated to
            `preview` characters; None otherwise.
        detail: open: the addresses; error: what went wrong; close: the
            bytes relayed each way, or why the target was not reached; a
            message: why its codec failed, if it did.
    """

    time: float
    connection: int
    kind: Literal["open", "message", "error", "close"]
    direction: Direction = ""
    size: int = 0
    preview: bytes = b""
    value: str | None = None
    detail: str = ""


def _preview_text(preview: bytes) -> str | None:
    """`preview` as text if it is printable UTF-8 (tabs and line ends allowed), else None.

    A preview cut inside a multi-byte character is text up to that character.
    """
    try:
        text = preview.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data" or exc.start < len(preview) - 3:
            return None
        text = preview[: exc.start].decode("utf-8")
    return text if all(char.isprintable() or char in "\t\r\n" for char in text) else None


def _shown_preview(event: TraceEvent) -> tuple[str, str, bool]:
    """``(format, preview, truncated)``: ``"text"`` or ``"hex"``, the preview, whether the message is longer."""
    text = _preview_text(event.preview)
    truncated = event.size > len(event.preview)
    if text is None:
        return "hex", event.preview.hex(" "), truncated
    return "text", text, truncated


def format_text(event: TraceEvent) -> str:
    """One line for people: ``12:00:01.000123 -> #1 5 B 'hello'``.

    Local time; a text preview is quoted as a Python string (tabs and line
    ends escaped), any other in hex; ``...`` marks a truncated preview or value.
    """
    when = datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")
    head = f"{when} {event.direction or '--'} #{event.connection}"
    if event.kind == "open":
        return f"{head} open {event.detail}"
    if event.kind == "close":
        return f"{head} closed: {event.detail}"
    if event.kind == "error":
        return f"{head} framing error, no longer decoded (bytes still relayed): {event.detail}"
    form, preview, truncated = _shown_preview(event)
    line = f"{head} {event.size} B {repr(preview) if form == 'text' else preview}"
    line += "..." if truncated else ""
    if event.value is not None:
        line += f" = {event.value}"
    if event.detail:
        line += f" (codec: {event.detail})"
    return line


def format_json(event: TraceEvent) -> str:
    """One JSON object, one line: the fields of `TraceEvent`, time in ISO 8601 UTC.

    A message's preview is ``preview`` with ``preview_format`` (``"text"`` or
    ``"hex"``, hex digits without spaces) and ``truncated``; ``value`` only
    with a codec, ``detail`` only when not empty.
    """
    entry: dict[str, object] = {
        "time": datetime.fromtimestamp(event.time, UTC).isoformat(timespec="microseconds"),
        "kind": event.kind,
        "connection": event.connection,
        "direction": event.direction,
        "size": event.size,
    }
    if event.kind == "message":
        form, preview, entry["truncated"] = _shown_preview(event)
        entry["preview"] = preview.replace(" ", "") if form == "hex" else preview
        entry["preview_format"] = form
        if event.value is not None:
            entry["value"] = event.value
    if event.detail:
        entry["detail"] = event.detail
    return json.dumps(entry, ensure_ascii=True)  # ASCII: U+2028 and friends are no line breaks to any reader


@final
class _Tap:
    """One direction's decoder, fed with the bytes the relay has just passed on (a `Flow.tap`)."""

    __slots__ = ("_connection", "_decoder", "_direction", "_trace")

    def __init__(self, trace: _Loop, connection: int, direction: Direction, decoder: Decoder) -> None:
        self._trace = trace
        self._connection = connection
        self._direction = direction
        self._decoder: Decoder | None = decoder

    def __call__(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is None:
            return  # failed or ended: the bytes pass, undecoded
        try:
            messages = decoder.feed(data) if data else decoder.eof()
        except FramingError as exc:
            self._decoder = None
            self._report_messages(exc.messages)
            self._trace.report(self._event("error", detail=_failure(exc)))
            return
        if not data:
            self._decoder = None
        self._report_messages(messages)

    def _report_messages(self, messages: list[bytes]) -> None:
        for message in messages:
            value, detail = self._trace.decode(message)
            preview = bytes(message[: self._trace.preview])
            self._trace.report(self._event("message", size=len(message), preview=preview, value=value, detail=detail))

    def _event(self, kind: Literal["message", "error"], **fields: Any) -> TraceEvent:
        return TraceEvent(time.time(), self._connection, kind, self._direction, **fields)


class _ValueRepr(reprlib.Repr):
    """`reprlib.Repr`, but a dict keeps its order (reprlib sorts the keys: not what the peer sent)."""

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = itertools.islice(x.items(), self.maxdict)
        pieces = [f"{self.repr1(key, level - 1)}: {self.repr1(value, level - 1)}" for key, value in items]
        return "{" + ", ".join(pieces) + (", ...}" if len(x) > self.maxdict else "}")


def _value_repr(width: int) -> reprlib.Repr:
    """A repr whose cost is bounded, whatever the size of the value (a 16 MiB string, a long list)."""
    shown = _ValueRepr()
    shown.maxlevel = 3
    shown.maxstring = shown.maxother = shown.maxlong = max(width, 8)
    return shown


def _failure(exc: FramingError) -> str:
    if isinstance(exc, TruncatedMessage):
        return f"the stream ended inside a message ({exc.pending} bytes of it received)"
    return str(exc)


@final
class Trace:
    """A TCP relay to `target` that reports each message going either way; see the module's description.

    ::

        with Trace(server.address, framing=LengthPrefixed(), report=lambda e: print(format_text(e))) as trace:
            conn = connecteur.connect(trace.address)

    Args:
        target: the server to relay to (any `AddressLike`). A host name is
            resolved once, by `start`.
        framing: the framing both directions speak; its ``max_size`` bounds
            each direction's decoder.
        report: called with each `TraceEvent`, on the relay's thread; it
            should be quick (relaying waits for it). An exception it raises
            is logged (logger ``connecteur.proxy``) and relaying goes on.
        listen: where to listen; port 0 picks a free port (see `address`).
        codec: decodes each message for `TraceEvent.value`; None: bytes only.
        preview: bytes of each message kept in `TraceEvent.preview`, and
            characters of the value's repr.

    Raises:
        AddressError: `target` or `listen` cannot be parsed.
        ValueError: `preview` is negative.
    """

    def __init__(
        self,
        target: AddressLike,
        *,
        framing: Framing,
        report: Callable[[TraceEvent], None],
        listen: AddressLike = "127.0.0.1:0",
        codec: Codec[Any] | None = None,
        preview: int = DEFAULT_PREVIEW,
    ) -> None:
        if isinstance(preview, bool) or not isinstance(preview, int) or preview < 0:
            raise ValueError(f"preview must be an int >= 0, not {preview!r}")
        self._target = parse_address(target)
        self._listen = parse_address(listen)
        self._framing = framing
        self._report = report
        self._codec = codec
        self._preview = preview
        self._bound: Any = None
        self._loop: _Loop | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = format_address(self._bound) if self._bound is not None else str(self._listen)
        return f"<Trace {where} -> {self._target}>"

    @property
    def address(self) -> Any:  # the socket module types addresses as Any too
        """The bound address: a socket-module tuple, or ``"unix:/path"``; pass it to `connect()`.

        Raises:
            RuntimeError: the trace has not been started.
        """
        if self._bound is None:
            raise RuntimeError("the trace is not started: use `with trace:` or start()")
        return self._bound

    @property
    def target(self) -> Address:
        """The address relayed to, as given."""
        return self._target

    def start(self) -> None:
        """Listen, and relay in a background thread until `stop`.

        Raises:
            RuntimeError: the trace was already started.
            OSError: the target's host name does not resolve, or the listen
                address cannot be bound.
        """
        if self._loop is not None:
            raise RuntimeError("this trace was already started; create a new Trace to start again")
        target = resolve_once(self._target)
        listener = _socket.listen(self._listen, backlog=BACKLOG)
        try:
            self._bound = _socket.bound_address(listener)
            self._loop = _Loop(listener, target, self)
        except BaseException:
            listener.close()
            raise
        self._thread = threading.Thread(target=self._loop.run, name=f"connecteur {self!r}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every relayed connection; wait up to `timeout` s for the thread.

        Idempotent; a trace never started does nothing.
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.request_stop()
        if thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Loop(ListenerLoop[int]):
    """The trace's thread: a `ListenerLoop` whose relays have no faults and decode; each keeps its number."""

    def __init__(self, listener: socket.socket, target: Address, trace: Trace) -> None:
        super().__init__(listener, target, random.Random())  # only faults draw from the rng
        self.preview = trace._preview
        self._report = trace._report
        self._framing = trace._framing
        self._codec = trace._codec
        self._repr = _value_repr(self.preview)
        self._numbers = itertools.count(1)
        self._closed: list[Relay] = []  # reported after the events of the turn that closed them

    # Each client takes a number: here, or in `_unreachable` if it gets no relay.
    def _relay_for(self, client: socket.socket, target: socket.socket, name: str) -> tuple[Relay, int]:
        number = next(self._numbers)
        relay = Relay(self, client, target, upstream=_NO_FAULTS, downstream=_NO_FAULTS, name=name)
        relay.upstream.tap = _Tap(self, number, "->", self._framing.decoder())
        relay.downstream.tap = _Tap(self, number, "<-", self._framing.decoder())
        self.report(TraceEvent(time.time(), number, "open", detail=name))
        return relay, number

    def _unreachable(self, client: socket.socket, address: object, name: str, exc: OSError) -> None:
        number = next(self._numbers)
        close_socket(client, reset=False)
        self.report(TraceEvent(time.time(), number, "open", detail=name))
        self.report(TraceEvent(time.time(), number, "close", detail=f"{_UNREACHABLE}: {exc.strerror or exc}"))

    def report(self, event: TraceEvent) -> None:
        """Hand `event` to the trace's callback; a callback's bug is logged, and relaying goes on."""
        try:
            self._report(event)
        except Exception:
            logger.exception("the trace's report callback failed on %r", event)

    def decode(self, message: bytes) -> tuple[str | None, str]:
        """The codec's value of `message` as a truncated repr, and why decoding failed ("" if it did not)."""
        if self._codec is None:
            return None, ""
        try:
            value = self._codec.decode(message)
        except FramingError as exc:  # CodecError: the peer's bytes
            return None, str(exc)
        except Exception as exc:  # a codec's own bug: say so, and keep relaying
            return None, f"{type(exc).__name__}: {exc}"
        shown = self._repr.repr(value)
        return (shown if len(shown) <= self.preview else shown[: self.preview] + "..."), ""

    def forget(self, relay: Relay) -> None:
        """A relay closed its sockets: report it once this turn's events (its last messages) are."""
        self._closed.append(relay)

    def _end_turn(self) -> None:
        closed, self._closed = self._closed, []
        for relay in closed:
            number = self.relays.pop(relay, None)
            if number is not None:
                up, down = relay.upstream.forwarded, relay.downstream.forwarded
                detail = f"{up} B ->, {down} B <-" if relay.is_connected else _UNREACHABLE
                size = up + down
                self.report(TraceEvent(time.time(), number, "close", size=size, detail=detail))
