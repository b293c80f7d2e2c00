"""A server's counters in the Prometheus text format: ``connecteur serve --metrics``.

A tool around `Server`, not part of it: the core never imports this module,
and this module imports ``prometheus_client`` (the optional extra
``metrics``) only when an exporter starts. The numbers are read from
`Server.stats` at each scrape, so nothing copies them in the background; with
workers or the processes engine, `stats` already adds up every process.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, final

from .. import __version__
from ..address import TcpAddress, format_address
from ..server import Server

if TYPE_CHECKING:
    import threading
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

__all__ = ["COUNTERS", "MetricsExporter", "StatsCollector"]

COUNTERS: Final = (
    ("connecteur_connections_accepted", "accepted", "Connections admitted since the server started."),
    ("connecteur_connections_rejected", "rejected", "Connections closed at once: max_connections was reached."),
    ("connecteur_messages_received", "messages_in", "Whole messages received."),
    ("connecteur_messages_sent", "messages_out", "Messages sent: replies and peer.send()."),
    ("connecteur_bytes_received", "bytes_in", "Bytes received, framing included."),
    ("connecteur_bytes_sent", "bytes_out", "Bytes sent, framing included."),
    (
        "connecteur_connection_errors",
        "errors",
        "Connections closed by an error: a handler that raised, bad bytes, a timeout, a reset, a failed handshake.",
    ),
    (
        "connecteur_handshake_errors",
        "handshake_errors",
        "Connections closed before the handler saw them: TLS, authentication or PROXY header.",
    ),
    (
        "connecteur_connections_evicted",
        "evicted",
        "Connections closed because the server held more than max_buffered bytes, largest first.",
    ),
    ("connecteur_worker_restarts", "worker_restarts", "Worker processes started in place of one that died."),
    (
        "connecteur_messages_skipped",
        "skipped",
        "Messages over max_size dropped with their connection kept (on_oversize='skip').",
    ),
    (
        "connecteur_messages_dropped",
        "dropped",
        "Messages a slow-consumer policy (drop, drop_oldest) dropped instead of queuing them to a slow peer.",
    ),
)
"""Each counter: its name (``prometheus_client`` adds ``_total``), its `Stats` field, its help text."""

EVERY_INTERFACE: Final = "0.0.0.0"
"""Where ``--metrics :PORT`` listens: every IPv4 interface, as ``prometheus_client`` does by default."""


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread meanwhile: threads started inside inherit the mask.

    The kernel may hand a process's signal to any thread not blocking it.
    Were it the exporter's, the main thread, asleep in its engine's
    selector, would not run the Python handler that stops the server until
    some other event woke it.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no per-thread masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@final
class StatsCollector:
    """A ``prometheus_client`` collector (``registry.Collector`` by shape) reading `server.stats` at each scrape.

    Thread-safe: `collect` only takes a `Stats` snapshot.
    """

    def __init__(self, server: Server) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        """Yield the counters, the active connections, the queued bytes and the server's info, as they are now."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        server = self._server
        stats = server.stats
        for name, field, documentation in COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(stats, field))
        yield GaugeMetricFamily("connecteur_connections_active", "Connections open now.", value=stats.active)
        yield GaugeMetricFamily(
            "connecteur_queued_bytes", "Bytes queued now for peers that have not read them yet.", value=stats.queued
        )
        labels = {"engine": server.engine, "workers": str(server.workers), "version": __version__}
        yield InfoMetricFamily("connecteur_server", "How the server runs: engine, worker processes, version.", labels)


@final
class MetricsExporter:
    """An HTTP endpoint serving `server`'s metrics (any path; ``/metrics`` by convention), from a daemon thread.

    Listens as soon as it is made, with its own registry (not the
    ``prometheus_client`` global one); `close()`, or leaving a ``with``
    block, stops it. Port 0 picks a free port: `address` tells which.

    Raises:
        ImportError: ``prometheus_client`` is missing; the message says how to install it.
        OSError: the address cannot be bound (in use, unknown host).
    """

    def __init__(self, server: Server, address: TcpAddress) -> None:
        try:
            importlib.import_module("prometheus_client")
        except ImportError:
            raise ImportError("metrics need prometheus_client: pip install 'connecteur[metrics]'") from None
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(StatsCollector(server))
        # start_http_server returns (server, thread) since prometheus_client
        # 0.20, hence the extra's lower bound: before, it could not be stopped.
        self._httpd: WSGIServer
        self._thread: threading.Thread
        with _stop_signals_blocked():  # in its thread and the threads it starts per scrape
            self._httpd, self._thread = start_http_server(
                address.port, address.host or EVERY_INTERFACE, registry=registry
            )
        host, port = self._httpd.server_address[:2]
        self.address: TcpAddress = TcpAddress(str(host), int(port))
        """The bound address."""

    @property
    def url(self) -> str:
        """Where to scrape: ``http://HOST:PORT/metrics``."""
        return f"http://{format_address(self.address)}/metrics"

    def close(self) -> None:
        """Stop serving and close the socket; waits for the serving thread (up to half a second).

        Idempotent.
        """
        if self._thread.is_alive():
            self._httpd.shutdown()  # returns once serve_forever() noticed: it polls every 0.5 s
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> MetricsExporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
