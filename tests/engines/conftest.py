"""Fixtures for the engine contract: one server factory, parametrized over engines."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from connecteur import Server
from connecteur.server import ENGINES


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each engine name in turn."""
    return str(request.param)


@pytest.fixture
def serve(engine: str) -> Iterator[Callable[..., Server]]:
    """Start servers on the engine under test; every one is stopped at the end."""
    servers: list[Server] = []

    def start(handler: object, address: str = "127.0.0.1:0", **options: object) -> Server:
        server = Server(handler, address, engine=engine, **options)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop(timeout=1.0)
