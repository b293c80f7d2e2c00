"""What mypyc, which compiles the hot modules (``setup.py``), must be told beyond the types."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["python_class"]

_T = TypeVar("_T")


def python_class(cls: type[_T]) -> type[_T]:
    """Keep `cls` a Python class when its module is compiled; no effect in pure Python.

    mypyc turns an undecorated class into a native class: one without a
    ``__weakref__`` slot, whose methods convert every argument to its
    annotated type (a ``True`` passed as an ``int`` arrives as ``1``; a float
    raises TypeError). A class under any decorator but mypyc's own few stays
    a Python class, its methods still compiled: for classes whose instances
    are weakly referenced, and for public constructors that check their
    arguments themselves (and raise ValueError, as documented).
    """
    return cls
