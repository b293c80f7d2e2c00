"""Socket activation: take the listening sockets systemd opened for this process.

systemd (or ``systemd-socket-activate``, or any supervisor speaking the same
protocol) binds the port itself, then starts the service with the sockets as
descriptors 3, 4, ... and three environment variables: ``LISTEN_PID`` (the
process they are meant for), ``LISTEN_FDS`` (how many) and
``LISTEN_FDNAMES`` (their names, colon-separated). Pass the result to
``Server(handler, sock=...)``. The port is then open before the service runs,
and stays open across its restarts: connections wait in the backlog instead
of being refused.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from typing import Final

from .. import _socket

__all__ = ["LISTEN_FDS_START", "sockets_from_systemd"]

LISTEN_FDS_START: Final = 3
"""The first descriptor systemd passes (after stdin, stdout and stderr)."""

_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def sockets_from_systemd(environ: MutableMapping[str, str] | None = None) -> dict[str, socket.socket]:
    """Adopt the listening sockets passed by socket activation.

    The variables are removed from `environ` (default ``os.environ``), as
    ``sd_listen_fds(1)`` does, so that a child process does not take them for
    its own; the descriptors are made close-on-exec.

    Returns:
        The sockets by name (``LISTEN_FDNAMES``; unnamed ones are
        ``"fd3"``, ``"fd4"``, ...), in the order passed.

    Raises:
        ValueError: no socket was passed, the variables are malformed or meant
            for another process, or a descriptor is not a listening stream
            socket. The message names the variable or descriptor.
    """
    env = os.environ if environ is None else environ
    values = {name: env.pop(name, None) for name in _VARIABLES}
    pid_text, count_text, names_text = (values[name] for name in _VARIABLES)
    if pid_text is None or count_text is None:
        raise ValueError("no socket from systemd: LISTEN_PID and LISTEN_FDS are not set (is a .socket unit active?)")
    if not pid_text.isdigit() or int(pid_text) != os.getpid():
        raise ValueError(f"LISTEN_PID={pid_text} is not this process ({os.getpid()}): the sockets are not for it")
    if not count_text.isdigit() or int(count_text) < 1:
        raise ValueError(f"LISTEN_FDS={count_text!r}: expected a positive number of sockets")
    count = int(count_text)
    names = names_text.split(":") if names_text else []
    sockets: dict[str, socket.socket] = {}
    for index in range(count):
        fd = LISTEN_FDS_START + index
        name = names[index] if index < len(names) and names[index] else f"fd{fd}"
        sockets[name] = _adopt(fd)
    return sockets


def _adopt(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"descriptor {fd} from systemd is not a socket: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    try:
        _socket.check_listening(sock)
    except ValueError:
        sock.detach()  # not ours to close: the caller may have other plans for it
        raise
    return sock
