"""The public surface: every exported name exists and is documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

import connecteur
from tests.support import docstring

MODULES = ["connecteur", "connecteur.framing", "connecteur.errors", "connecteur.address", "connecteur.connection",
           "connecteur.server"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_every_exported_name_exists_and_has_a_docstring(name: str) -> None:
    module = importlib.import_module(name)
    assert docstring(module)
    for export in module.__all__:
        value = getattr(module, export)
        if inspect.isclass(value) or inspect.isroutine(value):
            assert docstring(value), f"{name}.{export} has no docstring"


def test_top_level_names_from_the_design() -> None:
    for name in ["connect", "Connection", "Server", "Peer", "Stats", "ConnecteurError", "FramingError",
                 "MessageTooLarge", "TruncatedMessage", "CodecError", "ConnectionClosed", "AuthenticationError",
                 "Timeout"]:  # fmt: skip
        assert name in connecteur.__all__
        assert hasattr(connecteur, name)
