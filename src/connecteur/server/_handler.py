"""The two handler forms, seen by the engines as one object.

A handler is either a callable ``message -> reply | None`` or an object with
any of ``connected(peer)``, ``received(peer, message)`` and
``closed(peer, error)``. Engines only ever call `Handler`.
"""

from __future__ import annotations

import inspect
import logging
import ssl
import sys
import weakref
from collections.abc import Callable, Sequence
from types import CodeType
from typing import Any, Final, Protocol, final

from .._peerlog import log_peer_fault
from ..address import format_address
from ..codecs import Codec
from ..errors import AuthenticationError, CodecError, FramingError, ProxyProtocolError
from ..framing import Buffer, Framing
from ._peer import Peer

logger: Final = logging.getLogger("connecteur.server")
"""Where servers log: a handler's bug with its traceback, network trouble in one line."""

__all__ = [
    "Handler",
    "HandlerFailed",
    "MessageHandler",
    "PeerHandler",
    "Running",
    "frame_replies",
    "log_closing",
    "log_skipped",
    "logger",
    "running_handler",
]

MessageHandler = Callable[[bytes], "bytes | None"]
"""The simplest handler: receives a message, returns a reply or ``None``."""


class PeerHandler(Protocol):
    """A handler object: `received`, and, if it needs them, ``connected`` and ``closed``.

    The engines call each of these that the object defines:
    ``connected(peer)`` when a connection opens, ``received(peer, message)``
    for each whole message, ``closed(peer, error)`` once it has closed
    (`error` is None after a clean close), and ``paused(peer)`` /
    ``resumed(peer)`` when the bytes queued for the peer rise past the
    server's ``high_water`` / fall back under its ``low_water`` (event-loop
    engines; see docs/fan-out.md). Only `received` is declared here, as a
    Protocol cannot declare a method optional.
    """

    def received(self, peer: Peer, message: bytes) -> bytes | None:
        """A whole message arrived from `peer`; return a reply or ``None``."""
        ...


_HOOKS = ("connected", "received", "closed", "paused", "resumed")

PEER_FAULTS: Final = (FramingError, AuthenticationError, ProxyProtocolError, ssl.SSLError)
"""What a peer that does not speak the server's protocol gets closed for (codec errors are FramingErrors)."""


class HandlerFailed(Exception):
    """Internal: a handler call could not complete; the original is ``__cause__``.

    Engines tell the handler's bugs (logged with a traceback) from the peer's
    bad payloads (`peer_fault`: a message the codec cannot decode, logged in
    one line) and from the network's failures by this wrapper.
    """

    def __init__(self, hook: str, cause: BaseException, *, peer_fault: bool = False) -> None:
        what = "the peer's message" if peer_fault else f"the handler's {hook}()"
        super().__init__(f"{what} raised {type(cause).__name__}: {cause}")
        self.hook = hook
        self.peer_fault = peer_fault
        self.__cause__ = cause


def log_closing(address: object, error: BaseException) -> BaseException:
    """Log why a connection closes, as its kind deserves; return the error to report.

    A handler's bug is an error with its traceback. The peer's bad bytes (its
    framing, its codec, its handshake) are a WARNING in one line, as they
    are usually a client set up differently from the server, which nobody
    would guess otherwise; `PEER_FAULT_LOG` bounds them. A timeout or a
    reset is one line at INFO: the network's doing, seen all day.

    The records carry the error's text, not the error: a handler that keeps
    records (pytest's, a ``MemoryHandler``) would keep the error's traceback,
    its frames and the closed connection with them.
    """
    if isinstance(error, HandlerFailed):
        cause = error.__cause__ or error
        if error.peer_fault:
            log_peer_fault(address, error, "closing", logger)
        else:
            logger.error("closing %s: %s", format_address(address), error, exc_info=cause)
        return cause
    if isinstance(error, PEER_FAULTS) and not isinstance(error, ssl.SSLEOFError):  # EOF: a peer that left
        log_peer_fault(address, error, "closing", logger)
    else:
        logger.info("closing %s: %s", format_address(address), str(error))
    return error


def log_skipped(address: object, error: BaseException, log: logging.Logger = logger) -> None:
    """Log a message over `max_size` dropped with the connection kept: a peer fault, like a close for one.

    Clients pass their own `log`; the budget, `PEER_FAULT_LOG`, is the process's.
    """
    log_peer_fault(address, error, "skipping a message from", log)


def frame_replies(
    framing: Framing, encode_all: Callable[[Sequence[Buffer]], bytes], replies: list[Buffer]
) -> tuple[bytes, int, HandlerFailed | None]:
    """The wire bytes of `replies` for one write, how many replies they carry, and a failure.

    `encode_all` is `framing`'s `batch_encoder`. The failure is that of a
    reply the framing cannot carry (too large); the bytes are then those of
    the replies before it: an engine sends them, then closes.
    """
    try:
        return encode_all(replies), len(replies), None
    except FramingError:
        pass
    wire: list[bytes] = []
    for reply in replies:  # again, one by one, to find which one
        try:
            wire.append(framing.encode(reply))
        except FramingError as exc:
            return b"".join(wire), len(wire), HandlerFailed("received", exc)
    return b"".join(wire), len(wire), None  # pragma: no cover - encode_all failed, so one of them did


@final
class Handler:
    """Both handler forms behind the same three calls.

    Every call raises `HandlerFailed` when the user's code raises, so that
    engines never mistake a handler's bug for a network error.

    Raises:
        TypeError: the object is neither handler form.
    """

    __slots__ = ("_closed", "_codec", "_connected", "_function", "_paused", "_received", "_resumed")

    def __init__(self, handler: object, codec: Codec | None = None) -> None:
        self._codec = codec
        self._connected: Callable[[Peer], object] | None = getattr(handler, "connected", None)
        self._closed: Callable[[Peer, BaseException | None], object] | None = getattr(handler, "closed", None)
        self._paused: Callable[[Peer], object] | None = getattr(handler, "paused", None)
        self._resumed: Callable[[Peer], object] | None = getattr(handler, "resumed", None)
        self._received: Callable[[Peer, Any], Any] | None = None  # bytes, or a codec's value
        self._function: Callable[[Any], Any] | None = None  # the plain form, called without a wrapper
        if any(hasattr(handler, name) for name in _HOOKS):
            self._received = getattr(handler, "received", None)
        elif callable(handler):
            self._function = handler
        else:
            raise TypeError(
                f"a handler must be a callable message -> reply, or an object with "
                f"connected/received/closed methods, not {handler!r}"
            )
        for function, hook in (
            (self._connected, "connected"),
            (self._received or self._function, "received"),
            (self._closed, "closed"),
            (self._paused, "paused"),
            (self._resumed, "resumed"),
        ):
            _remember_code(function, hook)

    def connected(self, peer: Peer) -> object:
        """Call the handler's ``connected(peer)``, if it has one; return what it returned.

        An event-loop engine awaits an awaitable result; the others refuse it.
        """
        if self._connected is None:
            return None
        try:
            return self._connected(peer)
        except Exception as exc:
            raise HandlerFailed("connected", exc) from exc

    @property
    def watches_writability(self) -> bool:
        """True when the handler has a ``paused`` or ``resumed`` hook."""
        return self._paused is not None or self._resumed is not None

    def writability_changed(self, peer: Peer, *, paused: bool) -> None:
        """Call the handler's ``paused(peer)`` or ``resumed(peer)``, if it has it."""
        hook = self._paused if paused else self._resumed
        if hook is None:
            return
        try:
            hook(peer)
        except Exception as exc:
            raise HandlerFailed("paused" if paused else "resumed", exc) from exc

    @property
    def is_plain(self) -> bool:
        """True for a plain ``message -> reply`` function without a codec: `answer_plain` serves it."""
        return self._function is not None and self._codec is None

    def received(self, peer: Peer, message: bytes) -> Buffer | None:
        """Call the handler for one message and return its reply (or ``None``).

        For engines without an event loop: an async handler is refused.
        """
        reply = self.received_maybe_async(peer, message)
        if reply is None or (type(reply) is bytes and self._codec is None):  # checked first: runs per message
            return reply
        return self._sync_reply(reply)

    def answer_plain(
        self, messages: list[bytes], replies: list[Buffer], *, async_ok: bool = False
    ) -> tuple[int, object]:
        """Call a plain handler (`is_plain`) on each message in order, appending its replies to `replies`.

        The hot path of a server, one loop per read. A plain function has no
        peer, so it cannot close the connection halfway: every message gets
        its call. Without `async_ok` (engines without an event loop) an
        awaitable reply is refused; with it, the loop stops there.

        Returns:
            ``(len(messages), None)``, or the index of the message whose
            reply was an awaitable, and that awaitable.

        Raises:
            HandlerFailed: as `received`; `replies` holds the replies to the messages before.
        """
        function = self._function
        assert function is not None and self._codec is None
        before, silent = len(replies), 0
        for message in messages:
            try:
                reply = function(message)
            except Exception as exc:
                raise HandlerFailed("received", exc) from exc
            if reply is None:
                silent += 1
                continue
            if type(reply) is not bytes:
                if async_ok and inspect.isawaitable(reply):
                    return len(replies) - before + silent, reply  # the messages before gave a reply or None
                reply = self._sync_reply(reply)
            replies.append(reply)
        return len(messages), None

    def _sync_reply(self, reply: object) -> Buffer:
        """`check_reply` of a reply that is not None, refusing an awaitable: the engine has no event loop."""
        if inspect.isawaitable(reply):
            if inspect.iscoroutine(reply):
                reply.close()  # never awaited: say why below, not in a RuntimeWarning
            error = TypeError("an async handler needs engine='asyncio'")
            raise HandlerFailed("received", error)
        checked = self.check_reply(reply)
        assert checked is not None
        return checked

    def received_maybe_async(self, peer: Peer, message: bytes) -> object:
        """Call the handler for one message; return its reply or an awaitable of it.

        With a codec, the handler gets the decoded value; a message that does
        not decode raises `HandlerFailed` with ``peer_fault=True``.
        """
        if self._codec is None:
            return self.received_value(peer, message)
        try:
            value = self._codec.decode(message)
        except CodecError as exc:
            raise HandlerFailed("received", exc, peer_fault=True) from exc
        except Exception as exc:  # a codec's bug: the handler's side, not the peer's
            raise HandlerFailed("received", exc) from exc
        return self.received_value(peer, value)

    def received_value(self, peer: Peer, value: Any) -> object:
        """Call the handler with `value`, already decoded (or the message's bytes without a codec).

        A method of its own, typed `Any`: a multiplexed server decodes the
        envelope's payload itself and calls this, and a compiled build checks
        that what it passes is what the signature says.
        """
        try:
            if self._function is not None:
                return self._function(value)
            if self._received is not None:
                return self._received(peer, value)
        except Exception as exc:
            raise HandlerFailed("received", exc) from exc
        return None

    def check_reply(self, reply: object) -> Buffer | None:
        """Return `reply` as bytes-like or None (encoded by the codec, if any).

        Raises:
            HandlerFailed: the handler returned something the codec cannot
                encode, or, without a codec, something not bytes-like.
        """
        if reply is None:
            return None
        if self._codec is not None:
            try:
                return self._codec.encode(reply)
            except Exception as exc:  # CodecError, or a codec's bug
                raise HandlerFailed("received", exc) from exc
        if not isinstance(reply, bytes | bytearray | memoryview):
            error = TypeError(f"a handler must return bytes or None, not {type(reply).__name__}")
            raise HandlerFailed("received", error)
        return reply

    def closed(self, peer: Peer, error: BaseException | None) -> object:
        """Call the handler's ``closed(peer, error)``, if it has one; return what it returned."""
        if self._closed is None:
            return None
        try:
            return self._closed(peer, error)
        except Exception as exc:
            raise HandlerFailed("closed", exc) from exc

    @property
    def name(self) -> str:
        """The user's handler as a log names it: ``module.function``, or ``module.Class``."""
        handler = self._function or getattr(self._received or self._connected or self._closed, "__self__", None)
        if handler is None:
            return "handler"
        named = handler if hasattr(handler, "__qualname__") else type(handler)
        return f"{getattr(named, '__module__', '?')}.{getattr(named, '__qualname__', repr(named))}"

    def encode_value(self, value: Any) -> Buffer:
        """What `peer.send(value)` sends: the codec's bytes, or `value` itself.

        Raises:
            CodecError: the codec cannot encode `value` (nothing is sent).
        """
        return value if self._codec is None else self._codec.encode(value)


# Handler's methods that call the user's code, and the hook each serves. A
# compiled build's methods have no code object (and no frame): there, only
# `_USER_CODES` finds a handler call.
_HOOK_CODES: Final[dict[CodeType, str]] = {
    code: hook
    for method, hook in (
        (Handler.connected, "connected"),
        (Handler.received_maybe_async, "received"),
        (Handler.received_value, "received"),
        (Handler.answer_plain, "received"),
        (Handler.check_reply, "received"),  # a codec's encode
        (Handler.closed, "closed"),
        (Handler.writability_changed, "paused"),
    )
    if isinstance(code := getattr(method, "__code__", None), CodeType)
}

# The code of the user's functions each Handler calls, and the hook: weak, so
# that a server's handler does not outlive it here.
_USER_CODES: Final[weakref.WeakKeyDictionary[CodeType, str]] = weakref.WeakKeyDictionary()


def _remember_code(function: object, hook: str) -> None:
    """Note `function`'s code (a function's, a method's or a callable object's) as serving `hook`."""
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    if code is None:  # a callable object: its class's __call__
        code = getattr(inspect.getattr_static(type(function), "__call__", None), "__code__", None)
    if isinstance(code, CodeType):
        _USER_CODES[code] = hook


@final
class Running:
    """A handler call a thread is inside: what `running_handler` finds.

    Attributes:
        hook: ``"connected"``, ``"received"`` or ``"closed"``.
        name: the user's function running, ``module.qualname``.
        peer: the connection it runs for, when the stack tells.
    """

    __slots__ = ("hook", "name", "peer")

    def __init__(self, hook: str, name: str, peer: Peer | None) -> None:
        self.hook = hook
        self.name = name
        self.peer = peer

    def __str__(self) -> str:
        where = "" if self.peer is None else f" for {format_address(self.peer.address)}"
        return f"handler {self.name} ({self.hook}){where}"


def running_handler(thread_id: int) -> Running | None:
    """The handler call thread `thread_id` is inside now, or None if it is in none.

    Read from the thread's stack (``sys._current_frames``), so that engines
    pay nothing per call for knowing it; used only when a stop deadline
    passed and the thread has not ended. The thread may move on meanwhile:
    the answer is what it was doing a moment ago.
    """
    frame = sys._current_frames().get(thread_id)
    inner = None
    while frame is not None:
        hook = _USER_CODES.get(frame.f_code)
        if hook is not None:  # the user's function itself
            return Running(hook, _function_name(frame), _peer_of(frame))
        hook = _HOOK_CODES.get(frame.f_code)
        if hook is not None:  # Handler's call, to a user's function found by no code of its own
            name = _function_name(inner) if inner is not None else _handler_name(frame)
            return Running(hook, name, _peer_of(frame))
        inner, frame = frame, frame.f_back
    return None


def _function_name(frame: Any) -> str:
    """``module.qualname`` of the function `frame` runs."""
    return f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname}"


def _handler_name(frame: Any) -> str:
    """The name of a handler that has no Python frame of its own (a builtin): `Handler.name`."""
    handler = frame.f_locals.get("self")
    return handler.name if isinstance(handler, Handler) else "handler"


def _peer_of(frame: Any) -> Peer | None:
    """The peer of the innermost frame, from `frame` outwards, that has one: a ``peer`` argument or ``self.peer``.

    Reads other threads' locals: only where a stop deadline passed, never per call.
    """
    while frame is not None:
        found = frame.f_locals
        peer = found.get("peer", getattr(found.get("self"), "peer", None))
        if isinstance(peer, Peer):
            return peer
        frame = frame.f_back
    return None
