"""Fixtures for the engine contract: one server factory, parametrized over engines."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import pytest

from connecteur import Server
from connecteur.server import ENGINES

T = TypeVar("T")

VARIANTS = [*ENGINES, "select*2"]
"""Every engine, the select engine with two pre-forked workers, and the
asyncio engine on uvloop when uvloop is installed."""
if importlib.util.find_spec("uvloop") is not None:
    VARIANTS.append("asyncio@uvloop")


FAMILIES = list(ENGINES)
"""One variant per engine family, for a module whose promises live above the
engine's I/O (a handshake, a codec, the envelope: the `Session` every engine
drives): pre-forked workers run the select engine in each child, and uvloop
changes the asyncio engine's transports, neither of which such a module
tests; the contract (test_contract.py) and what workers or uvloop change run
on every variant. Such a module declares ``engine = engine_per_family``."""


def spread_over_families(cases: Iterable[T]) -> list[tuple[T, str]]:
    """Each case paired with one engine family, the families in turn: ``(case, engine)`` parameters.

    For a table of inputs to code above the engines' I/O (header forms,
    refusals): each case runs once, not once per engine on the same code, and
    every family still meets the feature, with a different case each.
    """
    return [(case, FAMILIES[index % len(FAMILIES)]) for index, case in enumerate(cases)]


def engine_options(variant: str) -> dict[str, Any]:
    """The `Server` keyword arguments for a variant name: ``"select*2"``, ``"asyncio@uvloop"``."""
    rest, _, loop = variant.partition("@")
    name, _, workers = rest.partition("*")
    return {"engine": name, "workers": int(workers or 1), "loop": loop or "asyncio"}


@pytest.fixture(params=VARIANTS)
def engine(request: pytest.FixtureRequest) -> str:
    """Each engine variant in turn."""
    return str(request.param)


@pytest.fixture(params=FAMILIES)
def engine_per_family(request: pytest.FixtureRequest) -> str:
    """Each engine family in turn (see `FAMILIES`); a module takes it as its `engine`."""
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
