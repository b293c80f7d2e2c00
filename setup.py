"""Build connecteur, its hot modules compiled with mypyc when this machine can.

`pip install .` installs the pure-Python package. ``CONNECTEUR_COMPILE=1 pip
install .`` compiles the modules in `COMPILED_MODULES` into C extensions when
mypyc (a build requirement) and a C compiler with Python's headers are
present, and installs the pure-Python package with a one-line notice when they
are not, or when the compiler fails: never a half-compiled package (mypyc
builds the modules as one library, and a failure removes whatever was built).
An editable install is always pure, so that the sources stay the code that
runs. Compiling is not the default because of its install time (one to four
minutes on two cores, against seconds; docs/getting-started.md). The metadata lives
in pyproject.toml; only the extensions are decided here.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The modules every round trip runs through, and whose compiled form pays
# (benchmarks/instructions.py); the rest (CLI, bench, tools, the clients)
# stay Python, which keeps the build short.
COMPILED_MODULES = [
    "framing/_base.py",
    "framing/field.py",
    "framing/length.py",
    "framing/simple.py",
    "_loop.py",
    "server/_blocking.py",
    "server/_deadlines.py",
    "server/_engine.py",
    "server/_handler.py",
    "server/_peer.py",
    "server/_poller.py",
    "server/_session.py",
    "server/select.py",
]

# The C routine splitting length-prefixed reads (framing/_speedups.c), built
# with the modules above but on its own: if it alone fails to build, its
# module is absent and framing/length.py splits in Python.
SPEEDUPS = Extension("connecteur.framing._speedups", ["src/connecteur/framing/_speedups.c"], optional=True)

# Commands that produce the files to install; every other invocation
# (metadata, sdist, egg_info) leaves mypyc's minute of work out.
_BUILD_COMMANDS = {"bdist_wheel", "build", "build_ext", "install"}


def _notice(reason: str) -> None:
    print(f"connecteur: installing the pure-Python build ({reason})", file=sys.stderr)


def _cannot_compile() -> str | None:
    """Why this build should stay pure Python, or None to compile."""
    if os.environ.get("CONNECTEUR_COMPILE", "") in ("", "0"):
        return "the default; CONNECTEUR_COMPILE=1 compiles"
    if "editable_wheel" in sys.argv or "develop" in sys.argv:
        return "an editable install runs the sources"
    if sys.implementation.name != "cpython":
        return "mypyc needs CPython"
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h; the python3-dev package)"
    return None


def _extensions() -> list[Extension]:
    if not _BUILD_COMMANDS.intersection(sys.argv):
        return []
    reason = _cannot_compile()
    if reason is not None:
        _notice(reason)
        return []
    from mypyc.build import mypycify

    root = Path("src", "connecteur")
    try:
        # Errors in the modules left in Python (which may import optional
        # packages absent from the build environment, uvloop) are not mypyc's.
        options = ["--follow-imports=silent"]
        modules = [str(root / module) for module in COMPILED_MODULES]
        return [*mypycify([*options, *modules], group_name="connecteur"), SPEEDUPS]
    except (Exception, SystemExit) as exc:  # mypyc reports type errors by exiting
        _notice(f"mypyc failed: {type(exc).__name__}; pip install -v shows why")
        return []


class BuildExt(build_ext):
    """build_ext that falls back to pure Python when the C compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []
            self.distribution.ext_modules = []
            _notice(f"the C build failed: {type(exc).__name__}; pip install -v shows why")

    def build_extension(self, ext: Extension) -> None:
        if ext.name != SPEEDUPS.name:
            return super().build_extension(ext)
        try:
            super().build_extension(ext)
        except Exception as exc:
            reason = f"{ext.name} failed: {type(exc).__name__}; pip install -v shows why"
            print(f"connecteur: length-prefixed reads split in Python ({reason})", file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
