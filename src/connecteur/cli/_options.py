"""What the subcommands share: framing and address names, and error output."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..address import Address, parse_address
from ..codecs import Codec, Json, MsgPack, Text
from ..connection import Connection
from ..errors import AddressError, ConnecteurError
from ..framing import (
    CloseDelimited,
    DecimalPrefixed,
    Delimited,
    FixedLength,
    Framing,
    LengthPrefixed,
    Netstring,
)

__all__ = [
    "CODEC_NAMES",
    "FRAMING_NAMES",
    "ArgumentParser",
    "Printer",
    "address_argument",
    "codec_argument",
    "fail",
    "framing_argument",
    "framing_by_name",
    "seconds_argument",
    "show_bytes",
]

FRAMING_NAMES = "length, length:1|2|4|8, line, crlf, netstring, fixed:N, digits:N, close"
_LENGTH_HEADERS = {"1": "!B", "2": "!H", "4": "!I", "8": "!Q"}


def framing_by_name(name: str) -> Framing:
    """Return the framing a command-line name stands for.

    Raises:
        ValueError: an unknown name or a bad size, in one line.
    """
    kind, _, arg = name.partition(":")
    if kind == "length" and arg in ("", *_LENGTH_HEADERS):
        return LengthPrefixed(_LENGTH_HEADERS[arg or "4"])
    if kind in ("line", "crlf", "netstring", "close") and not arg:
        simple: dict[str, Framing] = {
            "line": Delimited(b"\n"),
            "crlf": Delimited(b"\r\n"),
            "netstring": Netstring(),
            "close": CloseDelimited(),
        }
        return simple[kind]
    if kind in ("fixed", "digits") and arg.isascii() and arg.isdigit():
        return FixedLength(int(arg)) if kind == "fixed" else DecimalPrefixed(int(arg))
    raise ValueError(f"unknown framing {name!r}; choose one of: {FRAMING_NAMES}")


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


def framing_argument(name: str) -> Framing:
    """An argparse ``type=`` for framing names."""
    try:
        return framing_by_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line: ``connecteur: ...``.

    A subcommand's options may also come after its positional arguments
    (``send ADDRESS hello --framing line``), as users expect.
    """

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse intermixed options and positionals in a subcommand's parser."""
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back here
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def error(self, message: str) -> NoReturn:
        """Print the error in one line and exit with status 2."""
        fail(f"{self.prog.split()[-1]}: {message}" if " " in self.prog else message, status=2)


def fail(message: str, *, status: int = 1) -> NoReturn:
    """Print ``connecteur: message`` on stderr and exit with `status`."""
    print(f"connecteur: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


class Printer(threading.Thread):
    """Prints each message arriving on a connection on its own line, until the peer closes.

    `error` holds what ended it otherwise. `on_end` runs last, whatever
    happened (to wake a thread waiting on something else).
    """

    def __init__(
        self, conn: Connection, show: Callable[[Any], str], *, name: str, on_end: Callable[[], None] | None = None
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._conn = conn
        self._show = show
        self._on_end = on_end
        self.error: Exception | None = None

    def run(self) -> None:
        """Print until the peer closes or the connection fails."""
        try:
            for message in self._conn:
                print(self._show(message), flush=True)
        except (ConnecteurError, OSError) as exc:
            self.error = exc
        finally:
            if self._on_end is not None:
                self._on_end()


def show_bytes(message: bytes) -> str:
    """A message for a terminal: UTF-8, undecodable bytes escaped."""
    return bytes(message).decode("utf-8", "backslashreplace")
