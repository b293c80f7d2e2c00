"""Parse and format addresses: pure functions, no sockets.

Accepted forms: ``"host:port"``, ``"[v6]:port"``, ``":port"`` (every
interface), ``"unix:/path"``, and the tuples the `socket` module uses
(``(host, port)`` or an IPv6 ``(host, port, flowinfo, scope_id)``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TypeAlias, final

from .errors import AddressError

__all__ = [
    "Address",
    "AddressLike",
    "TcpAddress",
    "UnixAddress",
    "format_address",
    "parse_address",
]

AddressLike: TypeAlias = "str | tuple[str, int] | tuple[str, int, int, int]"
"""What every `address=` parameter accepts."""


@final
@dataclass(frozen=True, slots=True)
class TcpAddress:
    """A TCP address; ``host == ""`` means every interface (for a server)."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@final
@dataclass(frozen=True, slots=True)
class UnixAddress:
    """A Unix domain socket path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


Address: TypeAlias = TcpAddress | UnixAddress
"""A parsed address."""


def parse_address(value: object) -> Address:
    """Parse an address given as a string or a socket-module tuple.

    Raises:
        AddressError: the value is not one of the accepted forms; the message
            names the value and what was wrong with it.
    """
    if isinstance(value, TcpAddress | UnixAddress):
        return value
    if isinstance(value, tuple):
        return _parse_tuple(value)
    if not isinstance(value, str):
        raise AddressError(f"address must be a string or a (host, port) tuple, not {value!r}")
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path or "\0" in path:
            raise AddressError(f"bad Unix socket address {value!r}: expected 'unix:/path'")
        return UnixAddress(path)
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise AddressError(f"bad address {value!r}: expected 'host:port', '[v6]:port' or 'unix:/path'")
    port = _parse_port(port_text, value)
    if host.startswith("[") and host.endswith("]"):
        return TcpAddress(_check_ipv6(host[1:-1], value), port)
    if ":" in host:
        raise AddressError(f"bad address {value!r}: an IPv6 host needs brackets, as in '[::1]:{port}'")
    if host.startswith("[") or host.endswith("]"):
        raise AddressError(f"bad address {value!r}: unbalanced brackets")
    return TcpAddress(host, port)


def format_address(address: object) -> str:
    """Format an address for people: ``127.0.0.1:80``, ``[::1]:80``, ``unix:/p``.

    Accepts a parsed `Address`, a socket-module address (a tuple, or a str
    path for a Unix socket); anything else is shown with `repr`.
    """
    if isinstance(address, str):
        # The socket module gives a plain path for AF_UNIX sockets, and an
        # empty one for a client socket that was never bound.
        if address.startswith("unix:"):
            return address
        return f"unix:{address}" if address else "unix:(unnamed)"
    if isinstance(address, tuple) and len(address) >= 2:
        return str(TcpAddress(str(address[0]), int(address[1])))
    if isinstance(address, TcpAddress | UnixAddress):
        return str(address)
    return repr(address)


def _parse_tuple(value: tuple[object, ...]) -> TcpAddress:
    if len(value) not in (2, 4) or not isinstance(value[0], str) or not isinstance(value[1], int):
        raise AddressError(f"bad address {value!r}: expected (host, port) or (host, port, flowinfo, scope_id)")
    port = value[1]
    if isinstance(port, bool) or not 0 <= port <= 65535:
        raise AddressError(f"bad address {value!r}: port must be 0..65535")
    host = value[0]
    scope = value[3] if len(value) == 4 else 0
    if isinstance(scope, int) and scope and "%" not in host:
        # A link-local address means nothing without its interface: keep it
        # the way getaddrinfo() reads it back ("fe80::1%2").
        host = f"{host}%{scope}"
    return TcpAddress(host, port)


def _parse_port(text: str, whole: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise AddressError(f"bad port {text!r} in address {whole!r}: expected a number from 0 to 65535")
    return int(text)


def _check_ipv6(host: str, whole: str) -> str:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise AddressError(f"bad address {whole!r}: {host!r} is not an IPv6 address") from None
    return host
