"""The exception hierarchy: exactly the tree in DESIGN.md, re-exported at top level, with its attributes."""

from __future__ import annotations

import pytest

import connecteur
import connecteur.errors
from connecteur.errors import (
    AddressError,
    AuthenticationError,
    CodecError,
    ConnecteurError,
    ConnectionClosed,
    FramingError,
    MessageTooLarge,
    ProxyProtocolError,
    RemoteError,
    Timeout,
    TruncatedMessage,
    WorkersFailed,
)

BASES: dict[type[BaseException], tuple[type[BaseException], ...]] = {
    ConnecteurError: (Exception,),
    FramingError: (ConnecteurError, ValueError),
    MessageTooLarge: (FramingError,),
    TruncatedMessage: (FramingError,),
    CodecError: (FramingError,),
    ConnectionClosed: (ConnecteurError, ConnectionError),
    AuthenticationError: (ConnecteurError,),
    Timeout: (ConnecteurError, TimeoutError),
    AddressError: (ConnecteurError, ValueError),
    ProxyProtocolError: (ConnecteurError, ValueError),
    WorkersFailed: (ConnecteurError, RuntimeError),
    RemoteError: (ConnecteurError,),
}

ERROR_NAMES = sorted(cls.__name__ for cls in BASES)


@pytest.mark.parametrize("cls", list(BASES), ids=lambda cls: cls.__name__)
def test_direct_bases(cls: type[BaseException]) -> None:
    assert cls.__bases__ == BASES[cls]


@pytest.mark.parametrize(
    ("cls", "ancestor"),
    [
        (FramingError, ValueError),
        (MessageTooLarge, ValueError),
        (TruncatedMessage, ValueError),
        (CodecError, ValueError),
        (ConnectionClosed, ConnectionError),
        (ConnectionClosed, OSError),
        (Timeout, TimeoutError),
        (Timeout, OSError),
        (AddressError, ValueError),
    ],
)
def test_builtin_ancestors_catch_them(cls: type[BaseException], ancestor: type[BaseException]) -> None:
    assert issubclass(cls, ancestor)
    assert issubclass(cls, ConnecteurError)


@pytest.mark.parametrize(
    ("cls", "not_ancestor"),
    [
        (ConnectionClosed, FramingError),
        (Timeout, FramingError),
        (AuthenticationError, FramingError),
        (AuthenticationError, ValueError),
        (AuthenticationError, OSError),
        (FramingError, OSError),
        (AddressError, FramingError),
        (MessageTooLarge, TruncatedMessage),
        (TruncatedMessage, MessageTooLarge),
        (CodecError, MessageTooLarge),
        (ConnectionClosed, TimeoutError),
        (Timeout, ConnectionError),
    ],
)
def test_branches_do_not_overlap(cls: type[BaseException], not_ancestor: type[BaseException]) -> None:
    assert not issubclass(cls, not_ancestor)


def test_errors_module_exports_exactly_the_hierarchy() -> None:
    assert sorted(connecteur.errors.__all__) == ERROR_NAMES


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_reexported_at_top_level(name: str) -> None:
    assert getattr(connecteur, name) is getattr(connecteur.errors, name)
    assert name in connecteur.__all__


@pytest.mark.parametrize("cls", list(BASES), ids=lambda cls: cls.__name__)
def test_every_error_has_a_docstring(cls: type[BaseException]) -> None:
    assert cls.__doc__
    assert cls.__doc__.strip()


def test_framing_error_messages_start_empty_and_are_not_shared() -> None:
    first, second = FramingError("bad"), FramingError("worse")
    assert first.messages == []
    first.messages.append(b"x")
    assert second.messages == []
    assert CodecError("undecodable").messages == []


def test_message_too_large_attributes() -> None:
    exc = MessageTooLarge(
        "length header announces 4294967295 bytes; max_size is 16777216", size=2**32 - 1, max_size=2**24
    )
    assert exc.size == 4294967295
    assert exc.max_size == 16777216
    assert exc.messages == []
    assert str(exc) == "length header announces 4294967295 bytes; max_size is 16777216"


def test_truncated_message_attributes() -> None:
    exc = TruncatedMessage("2 bytes pending", pending=2)
    assert exc.pending == 2
    assert exc.messages == []
    assert str(exc) == "2 bytes pending"


def test_connection_closed_attributes() -> None:
    assert ConnectionClosed("peer closed").by_peer is True
    local = ConnectionClosed("closed here", by_peer=False)
    assert local.by_peer is False
    assert str(local) == "closed here"


def test_timeout_attributes() -> None:
    exc = Timeout("no reply within 5.0 s", seconds=5.0)
    assert exc.seconds == 5.0
    assert str(exc) == "no reply within 5.0 s"


@pytest.mark.parametrize(
    ("exc", "builtin"),
    [
        (FramingError("x"), ValueError),
        (MessageTooLarge("x", size=2, max_size=1), ValueError),
        (ConnectionClosed("x"), ConnectionError),
        (Timeout("x", seconds=1.0), TimeoutError),
        (AddressError("x"), ValueError),
    ],
    ids=lambda value: type(value).__name__,
)
def test_code_written_for_the_standard_library_catches_them(exc: BaseException, builtin: type[BaseException]) -> None:
    with pytest.raises(builtin):
        raise exc


@pytest.mark.parametrize(
    "error",
    [
        connecteur.MessageTooLarge("too big", size=5, max_size=4),
        connecteur.TruncatedMessage("cut", pending=3),
        connecteur.Timeout("slow", seconds=1.5),
        connecteur.RemoteError("ValueError: bad", request_id=7),
        connecteur.ConnectionClosed("gone", by_peer=False),
        connecteur.FramingError("bad"),
    ],
)
def test_errors_survive_pickling_with_their_attributes(error: connecteur.ConnecteurError) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.args == error.args
    assert copy.__dict__ == error.__dict__
