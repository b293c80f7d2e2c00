"""What the subcommands share: framing and address names, and error output."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import re
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from .. import Heartbeat, Keepalive
from ..address import Address, parse_address
from ..codecs import Codec, Json, MsgPack, Text
from ..connection import Connection
from ..errors import AddressError, ConnecteurError
from ..framing import (
    DEFAULT_LINE_MAX_SIZE,
    DEFAULT_MAX_SIZE,
    CloseDelimited,
    DecimalPrefixed,
    Delimited,
    FixedLength,
    Framing,
    LengthField,
    LengthPrefixed,
    Lines,
    Netstring,
    OnOversize,
)

__all__ = [
    "CODEC_NAMES",
    "FRAMING_NAMES",
    "ArgumentParser",
    "HelpFormatter",
    "Printer",
    "add_framing_options",
    "add_keepalive_option",
    "add_multiplexing_options",
    "address_argument",
    "codec_argument",
    "description",
    "fail",
    "framing_argument",
    "framing_by_name",
    "framing_option",
    "heartbeat_argument",
    "multiplexing_options",
    "seconds_argument",
    "show_bytes",
    "size_argument",
    "stop_on_signals",
]

FRAMING_NAMES = (
    "length, length:1|2|4|8, line, crlf, lines, netstring, fixed:N, digits:N, close, "
    + "field:OFFSET:SIZE[:ADJUSTMENT[:STRIP]]"
)
_FIELD_NAME = re.compile(r"field:([0-9]{1,4}):([12348])(le)?(?::([+-]?[0-9]{1,10})(?::([0-9]{1,4}))?)?")
_FIELD_HELP = (
    "expected field:OFFSET:SIZE[:ADJUSTMENT[:STRIP]]: OFFSET and STRIP bytes (0 to 9999), SIZE 1, 2, 3, 4 or 8 "
    "(add le for little-endian: 2le), ADJUSTMENT a signed number of bytes"
)
_LENGTH_HEADERS = {"1": "!B", "2": "!H", "4": "!I", "8": "!Q"}
_SIZE_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_LARGEST_MAX_SIZE = 2**63
"""More than any machine's memory: a larger --max-size is a typo, not a wish."""
_SIZE = re.compile(r"([0-9]{1,19})\s*([A-Za-z]*)")


_SKIPPING = ("length", "field", "digits", "line", "crlf", "lines")
"""The framings that can skip a message over --max-size (the others never see one, or cannot tell its end)."""


def framing_by_name(name: str, max_size: int | None = None, on_oversize: OnOversize = "close") -> Framing:
    """Return the framing a command-line name stands for.

    Args:
        name: one of `FRAMING_NAMES`.
        max_size: the largest message, in bytes; None for the framing's own
            default (16 MiB; 64 KiB for lines).
        on_oversize: ``"close"`` or ``"skip"``: what a message over
            `max_size` does (``--on-oversize``).

    Raises:
        ValueError: an unknown name, a bad size, or a framing that cannot
            skip, in one line.
    """
    kind, arg = _split_framing_name(name)
    if on_oversize != "close" and kind not in _SKIPPING:
        raise ValueError(f"--on-oversize {on_oversize} needs one of {', '.join(_SKIPPING)}, not {kind}")
    limit = {} if max_size is None else {"max_size": max_size}
    if kind == "length":
        return LengthPrefixed(_LENGTH_HEADERS[arg or "4"], **limit, on_oversize=on_oversize)
    if kind in ("line", "crlf"):
        return Delimited(b"\n" if kind == "line" else b"\r\n", **limit, on_oversize=on_oversize)
    if kind == "lines":
        return Lines(DEFAULT_LINE_MAX_SIZE if max_size is None else max_size, on_oversize=on_oversize)
    if kind == "field":
        return _length_field(name, limit, on_oversize)
    if kind == "netstring":
        return Netstring(**limit)
    if kind == "close":
        return CloseDelimited(**limit)
    shown = arg if len(arg) <= 30 else f"{arg[:27]}..."
    if kind == "digits":
        width = int(arg) if len(arg.lstrip("0")) <= 2 else 0
        if not 1 <= width <= 20:
            raise ValueError(f"the length takes from 1 to 20 digits, not {shown}")
        return DecimalPrefixed(width, **limit, on_oversize=on_oversize)
    largest = DEFAULT_MAX_SIZE if max_size is None else max_size
    if len(arg.lstrip("0")) > len(str(largest)) or int(arg) > largest:
        raise ValueError(f"messages of {shown} bytes are over the largest, {largest} bytes (--max-size raises it)")
    return FixedLength(int(arg), **limit)


def _length_field(name: str, limit: dict[str, int], on_oversize: OnOversize) -> LengthField:
    """``field:4:2`` is ``LengthField(offset=4, size=2)``; ``field:0:4le:-4:4``, a self-inclusive little-endian one."""
    match = _FIELD_NAME.fullmatch(name)
    assert match is not None  # _split_framing_name checked it
    offset, size, little, adjustment, strip = match.groups()
    return LengthField(
        offset=int(offset),
        size=int(size),
        byteorder="little" if little else "big",
        adjustment=int(adjustment or 0),
        strip=int(strip or 0),
        **limit,
        on_oversize=on_oversize,
    )


def _split_framing_name(name: str) -> tuple[str, str]:
    """The kind and argument of a framing name (``fixed:5`` gives fixed and 5), if it is one."""
    kind, _, arg = name.partition(":")
    if (
        (kind in ("line", "crlf", "lines", "netstring", "close") and not arg)
        or (kind == "field" and _FIELD_NAME.fullmatch(name))
        or (kind == "length" and arg in ("", *_LENGTH_HEADERS))
        or (kind in ("fixed", "digits") and arg.isascii() and arg.isdigit())
    ):
        return kind, arg
    if kind == "field":
        shown = name if len(name) <= 40 else f"{name[:37]}..."
        raise ValueError(f"bad framing {shown!r}: {_FIELD_HELP}")
    raise ValueError(f"unknown framing {name!r}; choose one of: {FRAMING_NAMES}")


def framing_argument(name: str) -> str:
    """An argparse ``type=`` for framing names: checks the name; `framing_option` builds the framing.

    Sizes are checked there, once ``--max-size`` is known.
    """
    try:
        _split_framing_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def size_argument(text: str) -> int:
    """An argparse ``type=`` for a positive number of bytes: ``65536``, ``64KiB``, ``16MiB``, ``1GiB``."""
    match = _SIZE.fullmatch(text.strip())
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    value = int(match.group(1)) * unit if match and unit else 0
    if not 0 < value <= _LARGEST_MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of bytes, such as 65536, 64KiB or 16MiB (at most 2**63), not {text!r}"
        )
    return value


def add_framing_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--framing``, ``--max-size`` and ``--on-oversize``; `framing_option` turns them into a framing."""
    parser.add_argument("--framing", type=framing_argument, default="length", help=FRAMING_NAMES)
    parser.add_argument(
        "--max-size",
        type=size_argument,
        metavar="BYTES",
        help="the largest message, either way: 65536, 64KiB, 16MiB... (default 16MiB; 64KiB for line and crlf)",
    )
    parser.add_argument(
        "--on-oversize", choices=("close", "skip"), default="close",
        help="a message over --max-size closes the connection (close, the default) or is dropped "
        "and counted, the connection kept (skip: " + ", ".join(_SKIPPING) + ")",
    )  # fmt: skip


def framing_option(args: argparse.Namespace, command: str) -> Framing:
    """The framing ``--framing``, ``--max-size`` and ``--on-oversize`` ask for.

    Exits with a one-line error (status 2) if impossible.
    """
    try:
        return framing_by_name(args.framing, args.max_size, args.on_oversize)
    except ValueError as exc:
        fail(f"{command}: --framing {args.framing}: {exc}", status=2)


CODEC_NAMES = "json, text, msgpack"


def codec_argument(name: str) -> Codec:
    """An argparse ``type=`` for codec names."""
    try:
        if name == "json":
            return Json()
        if name == "text":
            return Text()
        if name == "msgpack":
            return MsgPack()
    except ImportError as exc:  # msgpack missing: say how to install it
        raise argparse.ArgumentTypeError(str(exc)) from None
    raise argparse.ArgumentTypeError(f"unknown codec {name!r}; choose one of: {CODEC_NAMES}")


def address_argument(text: str) -> Address:
    """An argparse ``type=`` for addresses."""
    try:
        return parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds_argument(text: str) -> float:
    """An argparse ``type=`` for a positive duration in seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def add_keepalive_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--keepalive S``: TCP keepalive and ``TCP_USER_TIMEOUT`` derived from S (`Keepalive.within`)."""
    parser.add_argument(
        "--keepalive", type=_keepalive_seconds, metavar="S",
        help="notice a dead or unreachable peer within about S seconds: TCP keepalive probes from S/2 of silence, "
        "and S for unacknowledged data (default: the kernel's, about 2 h)",
    )  # fmt: skip


def _keepalive_seconds(text: str) -> float:
    seconds = seconds_argument(text)
    try:
        Keepalive.within(seconds)  # its own bounds, said in its own words
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return seconds


def add_multiplexing_options(parser: argparse.ArgumentParser, peer: str) -> None:
    """Add ``--multiplexed`` and ``--heartbeat INTERVAL[,DEADLINE]``; `peer` names the other side in the help."""
    parser.add_argument(
        "--multiplexed", action="store_true",
        help=f"speak the multiplexing envelope (request ids, error replies, heartbeats); the {peer} must too",
    )  # fmt: skip
    parser.add_argument(
        "--heartbeat", type=heartbeat_argument, metavar="INTERVAL[,DEADLINE]",
        help=f"with --multiplexed: ping a {peer} silent for INTERVAL seconds, close its connection once silent "
        "for INTERVAL + DEADLINE (DEADLINE defaults to INTERVAL)",
    )  # fmt: skip


def heartbeat_argument(text: str) -> Heartbeat:
    """An argparse ``type=`` for ``INTERVAL[,DEADLINE]``: a `Heartbeat`, the deadline defaulting to the interval."""
    interval, comma, deadline = text.partition(",")
    try:
        first = seconds_argument(interval)
        return Heartbeat(first, seconds_argument(deadline) if comma else first)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected INTERVAL[,DEADLINE], positive numbers of seconds such as 5 or 5,10; not {text!r}"
        ) from None


def multiplexing_options(args: argparse.Namespace) -> dict[str, Any]:
    """``multiplexed=`` and ``heartbeat=`` for `Server` or `connect`; a heartbeat without the envelope fails."""
    if args.heartbeat is not None and not args.multiplexed:
        fail("--heartbeat needs --multiplexed: pings travel in the envelope", status=2)
    return {"multiplexed": True, "heartbeat": args.heartbeat} if args.multiplexed else {}


class HelpFormatter(argparse.HelpFormatter):
    """Wraps help text between words only: never inside a name like ``select*2`` or ``asyncio-streams``."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line: ``connecteur: ...``.

    A subcommand's options may also come after its positional arguments
    (``send ADDRESS hello --framing line``), as users expect. An unknown
    option is an error of the (sub)command it was given to, with the closest
    known option as a hint.
    """

    _intermixing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse intermixed options and positionals in a subcommand's parser."""
        if self._subparsers is not None:  # the top level: an unknown option before the command is its own
            self._check_leading_options(sys.argv[1:] if args is None else args)
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back here
        try:
            parsed, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
        if extras:  # here, not at the top level: the error then names the subcommand
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._hint(extras)}")
        return parsed, extras

    def _check_leading_options(self, args: Sequence[str]) -> None:
        """Refuse an unknown option before the command, rather than say the command is missing."""
        for arg in args:
            if not arg.startswith("-") or arg == "--":
                return
            name = arg.partition("=")[0]
            if not any(known.startswith(name) for known in self._option_string_actions):  # abbreviations are fine
                self.error(f"unrecognized arguments: {arg}{self._hint([arg])}")

    def _hint(self, extras: Sequence[str]) -> str:
        """`` (did you mean --engine?)`` for the first unknown option close to a known one, else ""."""
        for extra in extras:
            if extra.startswith("-"):
                close = difflib.get_close_matches(extra.partition("=")[0], self._option_string_actions, n=1)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""

    def error(self, message: str) -> NoReturn:
        """Print the error in one line and exit with status 2."""
        fail(f"{self.prog.split()[-1]}: {message}" if " " in self.prog else message, status=2)


def description(doc: str | None) -> str | None:
    """A module docstring's first paragraph as a plain ``--help`` description.

    The docstring opens with the command in reStructuredText
    (````connecteur send ADDRESS [MESSAGE ...]``: send ...``); the usage line
    shows the command already, so only what follows the colon is kept.
    """
    if doc is None:
        return None
    first = doc.split("\n\n")[0]
    if first.startswith("``"):
        first = first.split("``: ", 1)[-1]
    first = first.replace("``", "")
    return first if first.startswith("connecteur") else first[:1].upper() + first[1:]


def fail(message: str, *, status: int = 1) -> NoReturn:
    """Print ``connecteur: message`` on stderr and exit with `status`."""
    print(f"connecteur: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


class Printer(threading.Thread):
    """Prints each message arriving on a connection on its own line, until the peer closes.

    `error` holds what ended it otherwise; `count`, how many it printed.
    `on_end` runs last, whatever happened (to wake a thread waiting on
    something else).
    """

    def __init__(
        self, conn: Connection, show: Callable[[Any], str], *, name: str, on_end: Callable[[], None] | None = None
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._conn = conn
        self._show = show
        self._on_end = on_end
        self.error: Exception | None = None
        self.count = 0

    def run(self) -> None:
        """Print until the peer closes or the connection fails."""
        try:
            for message in self._conn:
                print(self._show(message), flush=True)
                self.count += 1
        except (ConnecteurError, OSError) as exc:
            self.error = exc
        finally:
            if self._on_end is not None:
                self._on_end()


def show_bytes(message: bytes) -> str:
    """A message for a terminal: UTF-8, undecodable bytes escaped."""
    return bytes(message).decode("utf-8", "backslashreplace")


@contextlib.contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[None]:
    """Let SIGINT and SIGTERM set `event` (from the main thread; elsewhere they are left alone).

    For the commands that relay until told to stop (``proxy``, ``trace``); the
    previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: event.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
