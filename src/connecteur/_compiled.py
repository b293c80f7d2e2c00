"""What mypyc, which compiles the hot modules (``setup.py``), must be told beyond the types."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["python_class"]

_T = TypeVar("_T")


def python_class(cls: type[_T]) -> type[_T]:
    """Keep `cls` a Python class when its module is compiled; no effect in pure Python.

    mypyc turns an undecorated class into a native class, which has no
    ``__weakref__`` slot. A class under any decorator but mypyc's own few
    stays a Python class, its methods still compiled: for classes whose
    instances are weakly referenced.
    """
    return cls
