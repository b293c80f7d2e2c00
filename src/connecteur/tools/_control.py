"""The fault proxy's HTTP control API: list, add, change and remove faults as JSON.

So that a test in any language can drive the proxy, as Toxiproxy's API does.
A standard-library `http.server` on its own thread answers one request at a
time (so a read-modify-write of the faults is never interleaved with another
request's), and hands each change to the proxy with `Proxy.set_faults`, which
is safe from any thread and applies it to open connections too.

Resources (``DIRECTION`` is ``upstream``, ``downstream`` or ``both``; a path
without it means ``both``); every success answers with the faults in force::

    GET    /faults                    {"upstream": {...}, "downstream": {...}}
    POST   /faults/DIRECTION          add faults: 409 if one is already set there
    PATCH  /faults/DIRECTION          add or change faults
    PUT    /faults/DIRECTION          replace the direction's faults
    DELETE /faults/DIRECTION/NAME     remove one fault: 404 if it is not set
    DELETE /faults/DIRECTION          remove every fault

A fault is one field of `Faults`, in its units (seconds, bytes), and a
direction's faults are the fields that differ from their default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import ipaddress
import json
import socket
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

from ..address import Address, TcpAddress

__all__ = ["ControlServer", "check_loopback"]

MAX_BODY: Final = 64 * 2**10
"""64 KiB: the largest request body; a set of faults is a few hundred bytes."""

REQUEST_TIMEOUT: Final = 5.0
"""Seconds a control client may take to send its request: one that stalls
holds the single-threaded server only this long."""

_DIRECTIONS: Final = ("upstream", "downstream")


class FaultedProxy(Protocol):
    """What the control API needs of `connecteur.tools.proxy.Proxy`."""

    @property
    def upstream(self) -> Any: ...
    @property
    def downstream(self) -> Any: ...
    def set_faults(self, faults: Any = None, *, upstream: Any = None, downstream: Any = None) -> None: ...


_Action = Callable[[tuple[str, ...], str | None], object]
"""What a request does, given the directions and the fault name its path names; returns the answer."""


class _Refused(Exception):
    """A request that cannot be applied: answered with `status` and a one-line error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_loopback(address: Address) -> None:
    """Refuse a control address other than a loopback TCP one (the API has no authentication).

    Raises:
        ValueError: a Unix socket, every interface, or a host that is not loopback.
    """
    host = address.host if isinstance(address, TcpAddress) else None
    if host == "localhost":
        return
    with contextlib.suppress(ValueError):
        if host and ipaddress.ip_address(host).is_loopback:
            return
    raise ValueError(
        f"the control API has no authentication, so it listens on a loopback address (127.0.0.1, [::1]),"
        f" not {address}; allow other addresses explicitly (control_allow_remote=True, --control-allow-remote)"
    )


class ControlServer:
    """The control API of one proxy, served on its own thread; see the module's description.

    Args:
        proxy: the proxy whose faults it lists and changes.
        address: where to listen (a TCP address; port 0 picks a free port).
    """

    def __init__(self, proxy: FaultedProxy, address: TcpAddress) -> None:
        handler = type("_BoundHandler", (_Handler,), {"proxy": proxy})
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        server_class = type("_Server", (http.server.HTTPServer,), {"address_family": family})
        self._server = server_class((address.host, address.port), handler)
        self.address: tuple[str, int] = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._serve, name=f"connecteur proxy control {address}", daemon=True)

    def start(self) -> None:
        """Answer requests in a background thread until `stop`."""
        self._thread.start()

    def _serve(self) -> None:
        # A short poll interval: stop() waits for the loop to notice.
        self._server.serve_forever(poll_interval=0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering and close the listening socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    proxy: FaultedProxy
    timeout = REQUEST_TIMEOUT
    server_version = "connecteur-proxy"

    def do_GET(self) -> None:
        self._answer(lambda direction, name: self._faults_now(), allow_direction=False)

    def do_POST(self) -> None:
        self._answer(lambda direction, name: self._change(direction, self._body(), merge=True, add_only=True), 201)

    def do_PATCH(self) -> None:
        self._answer(lambda direction, name: self._change(direction, self._body(), merge=True))

    def do_PUT(self) -> None:
        self._answer(lambda direction, name: self._change(direction, self._body(), merge=False))

    def do_DELETE(self) -> None:
        self._answer(self._remove, allow_name=True)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the proxy's own log says what changed."""

    # --- the resources ---------------------------------------------------------------

    def _answer(
        self, action: Any, status: int = 200, *, allow_direction: bool = True, allow_name: bool = False
    ) -> None:
        try:
            directions, name = self._route(allow_direction=allow_direction, allow_name=allow_name)
            body = action(directions, name)
        except _Refused as exc:
            status, body = exc.status, {"error": str(exc)}
        self._send_json(status, body)

    def _route(self, *, allow_direction: bool, allow_name: bool) -> tuple[tuple[str, ...], str | None]:
        """The directions and the fault name a path names."""
        parts = [part for part in self.path.split("?")[0].split("/") if part]
        if not parts or parts[0] != "faults" or len(parts) > 1 + allow_direction + allow_name:
            raise _Refused(404, f"no resource {self.path}: see the proxy's docs for /faults")
        direction = parts[1] if len(parts) > 1 else "both"
        if direction not in (*_DIRECTIONS, "both"):
            raise _Refused(404, f"no direction {direction!r}: upstream, downstream or both")
        return (_DIRECTIONS if direction == "both" else (direction,)), (parts[2] if len(parts) > 2 else None)

    def _faults_now(self) -> dict[str, dict[str, Any]]:
        proxy = self.proxy
        return {"upstream": _set_fields(proxy.upstream), "downstream": _set_fields(proxy.downstream)}

    def _body(self) -> dict[str, Any]:
        """The request's JSON object."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise _Refused(400, "Content-Length is not a number") from None
        if not 0 <= length <= MAX_BODY:
            raise _Refused(413, f"a body of {length} bytes; at most {MAX_BODY}")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Refused(400, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _Refused(400, 'the body must be a JSON object of faults, like {"delay": 0.1}')
        return body

    def _change(
        self, directions: tuple[str, ...], fields: dict[str, Any], *, merge: bool, add_only: bool = False
    ) -> dict[str, dict[str, Any]]:
        new = {}
        for direction in directions:
            current = getattr(self.proxy, direction)
            if add_only and (already := sorted(set(fields) & set(_set_fields(current)))):
                raise _Refused(409, f"{direction} already has {', '.join(already)}: change it with PATCH")
            new[direction] = _replaced(current if merge else type(current)(), fields)
        self.proxy.set_faults(**new)
        return self._faults_now()

    def _remove(self, directions: tuple[str, ...], name: str | None) -> dict[str, dict[str, Any]]:
        new = {}
        for direction in directions:
            current = getattr(self.proxy, direction)
            if name is None:
                new[direction] = type(current)()
                continue
            if name not in _set_fields(current):
                raise _Refused(404, f"{direction} has no fault {name!r}; it has: {sorted(_set_fields(current))}")
            new[direction] = _replaced(current, {name: _default(current, name)})
        self.proxy.set_faults(**new)
        return self._faults_now()

    def _send_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _set_fields(faults: Any) -> dict[str, Any]:
    """The faults' fields that differ from their default."""
    return {
        field.name: getattr(faults, field.name)
        for field in dataclasses.fields(faults)
        if getattr(faults, field.name) != field.default
    }


def _default(faults: Any, name: str) -> Any:
    return next(field.default for field in dataclasses.fields(faults) if field.name == name)


def _replaced(faults: Any, fields: dict[str, Any]) -> Any:
    """`faults` with `fields` changed; an unknown name or an impossible value is a 400."""
    known = {field.name for field in dataclasses.fields(faults)}
    if unknown := sorted(set(fields) - known):
        raise _Refused(400, f"no fault named {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return dataclasses.replace(faults, **fields)
    except (ValueError, TypeError) as exc:
        raise _Refused(400, str(exc)) from None
