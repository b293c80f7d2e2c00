"""connecteur: message-oriented TCP and Unix-socket communication, done properly.

The Python Socket Programming HOWTO's designs, finished: framings that never
lose or merge messages, a blocking client, and servers on several engines with
one handler API, timeouts and graceful stops.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from typing import Final

from . import aio as aio
from . import codecs as codecs
from . import framing as framing
from ._envelope import Heartbeat as Heartbeat
from ._keepalive import Keepalive as Keepalive
from ._multiplexed import MultiplexedConnection as MultiplexedConnection
from ._reconnect import ReconnectingConnection as ReconnectingConnection
from ._reconnect_mux import ReconnectingMultiplexedConnection as ReconnectingMultiplexedConnection
from ._redial import Backoff as Backoff
from .connection import Connection as Connection
from .connection import connect as connect
from .connection import connect_nowait as connect_nowait
from .connection import finish_connect as finish_connect
from .connection import wait as wait
from .errors import AddressError as AddressError
from .errors import AuthenticationError as AuthenticationError
from .errors import CodecError as CodecError
from .errors import ConnecteurError as ConnecteurError
from .errors import ConnectionClosed as ConnectionClosed
from .errors import FramingError as FramingError
from .errors import MessageTooLarge as MessageTooLarge
from .errors import ProxyProtocolError as ProxyProtocolError
from .errors import RemoteError as RemoteError
from .errors import Timeout as Timeout
from .errors import TruncatedMessage as TruncatedMessage
from .errors import WorkersFailed as WorkersFailed
from .framing import length as _length
from .server import Peer as Peer
from .server import Server as Server
from .server import Stats as Stats

__all__ = [
    "COMPILED",
    "AddressError",
    "AuthenticationError",
    "Backoff",
    "CodecError",
    "ConnecteurError",
    "Connection",
    "ConnectionClosed",
    "FramingError",
    "Heartbeat",
    "Keepalive",
    "MessageTooLarge",
    "MultiplexedConnection",
    "Peer",
    "ProxyProtocolError",
    "ReconnectingConnection",
    "ReconnectingMultiplexedConnection",
    "RemoteError",
    "Server",
    "Stats",
    "Timeout",
    "TruncatedMessage",
    "WorkersFailed",
    "aio",
    "codecs",
    "connect",
    "connect_nowait",
    "finish_connect",
    "framing",
    "wait",
]

__version__ = "0.1.0"

COMPILED: Final = (_length.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
"""True when the hot modules run compiled with mypyc (``pip install .`` with
a C compiler), False for the pure-Python build. Both behave the same; one
install is one or the other, as its ``.so`` files win over its ``.py``."""

BUILD: Final = ("compiled with mypyc" if COMPILED else "pure Python") + (", C split" if _length.SPEEDUPS else "")
"""Which build runs, in words: what ``connecteur --version`` and ``connecteur bench`` print
(", C split" when length-prefixed reads are split in C: `connecteur.framing.length.SPEEDUPS`)."""
