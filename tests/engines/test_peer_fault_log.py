"""A peer's protocol faults are WARNINGs, a flood of them is bounded; resets and timeouts stay INFO."""

from __future__ import annotations

import logging
import ssl

import pytest

from connecteur import _peerlog
from connecteur._peerlog import LogLimit
from connecteur.errors import (
    AuthenticationError,
    CodecError,
    MessageTooLarge,
    ProxyProtocolError,
    Timeout,
    TruncatedMessage,
)
from connecteur.server._handler import HandlerFailed, log_closing

ADDRESS = ("127.0.0.1", 40000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_log_limit_admits_n_lines_per_interval_then_reports_the_rest() -> None:
    clock = Clock()
    limit = LogLimit(lines=3, interval=60.0, clock=clock)
    assert [limit.admit() for _ in range(5)] == [0, 0, 0, None, None]
    clock.now += 59.9
    assert limit.admit() is None  # still the same interval
    clock.now += 0.1
    assert limit.admit() == 3  # a new interval: the first line carries the count left out
    assert [limit.admit() for _ in range(3)] == [0, 0, None]
    clock.now += 600
    assert limit.admit() == 1


def test_log_limit_survives_a_fork_reset() -> None:
    limit = LogLimit(lines=1, clock=Clock())
    assert limit.admit() == 0
    limit.reset_after_fork()
    assert limit.admit() is None  # a new lock, the same count


@pytest.mark.parametrize(
    "error",
    [
        MessageTooLarge("length header announces 5 bytes; max_size is 4", size=5, max_size=4),
        TruncatedMessage("the stream ended inside a message", pending=3),
        AuthenticationError("the peer's digest does not match"),
        ProxyProtocolError("not a PROXY header"),
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        HandlerFailed("received", CodecError("not JSON"), peer_fault=True),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_peer_protocol_fault_is_a_warning(error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        log_closing(ADDRESS, error)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and not record.exc_info
    assert record.getMessage().startswith("closing 127.0.0.1:40000: ")


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError(104, "Connection reset by peer"),
        Timeout("idle for 300 s", seconds=300.0),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_resets_and_timeouts_stay_info(error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        log_closing(ADDRESS, error)
    (record,) = caplog.records
    assert record.levelno == logging.INFO


def test_a_flood_of_bad_peers_is_bounded_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    monkeypatch.setattr(_peerlog, "PEER_FAULT_LOG", LogLimit(lines=10, interval=60.0, clock=clock))
    fault = TruncatedMessage("the stream ended inside a message", pending=3)
    with caplog.at_level(logging.WARNING, logger="connecteur.server"):
        for _ in range(1000):
            log_closing(ADDRESS, fault)
        assert len(caplog.records) == 10
        clock.now += 60
        log_closing(ADDRESS, fault)
    summary, line = (r.getMessage() for r in caplog.records[10:])
    assert summary == "... and 990 more peer faults not logged as warnings (at most 10 per 60 s)"
    assert line.startswith("closing 127.0.0.1:40000: ")
