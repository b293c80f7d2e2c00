"""Small handlers for `connecteur serve --app NAME`, the demo and the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["APPS", "discard", "echo", "upper"]


def echo(message: bytes) -> bytes:
    """Reply with the message itself."""
    return message


def upper(message: bytes) -> bytes:
    """Reply with the message in upper case (ASCII letters only)."""
    return message.upper()


def discard(message: bytes) -> None:
    """Reply with nothing: a sink, like the discard service (RFC 863)."""
    return None


APPS: Final[dict[str, Callable[[bytes], bytes | None]]] = {"echo": echo, "upper": upper, "discard": discard}
"""The apps the command line knows, by name."""
