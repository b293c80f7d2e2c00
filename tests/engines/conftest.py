"""Fixtures for the engine contract: one server factory, parametrized over engines."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connecteur import Server
from connecteur.server import ENGINES

VARIANTS = [*ENGINES, "select*2"]
"""Every engine, the select engine with two pre-forked workers, and the
asyncio engine on uvloop when uvloop is installed."""
if importlib.util.find_spec("uvloop") is not None:
    VARIANTS.append("asyncio@uvloop")


def engine_options(variant: str) -> dict[str, Any]:
    """The `Server` keyword arguments for a variant name: ``"select*2"``, ``"asyncio@uvloop"``."""
    rest, _, loop = variant.partition("@")
    name, _, workers = rest.partition("*")
    return {"engine": name, "workers": int(workers or 1), "loop": loop or "asyncio"}


@pytest.fixture(params=VARIANTS)
def engine(request: pytest.FixtureRequest) -> str:
    """Each engine variant in turn."""
    return str(request.param)


@pytest.fixture
def serve(engine: str) -> Iterator[Callable[..., Server]]:
    """Start servers on the engine under test; every one is stopped at the end."""
    servers: list[Server] = []

    def start(handler: object, address: str = "127.0.0.1:0", **options: Any) -> Server:
        server = Server(handler, address, **engine_options(engine), **options)
        server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop(timeout=1.0)
