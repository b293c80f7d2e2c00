"""connecteur behind a real HAProxy in TCP mode, speaking the PROXY protocol v2.

HAProxy runs the shipped `examples/haproxy/haproxy.cfg`, its three
``127.0.0.1`` addresses replaced by free ports, in front of two servers on
different engines (``a`` on select, ``b`` on threads). Each server replies
``name|message|address`` with the `peer.address` its handler saw, so a client
checks that the server saw *it*: its own socket's address, not HAProxy's.

The other tests stop one server gracefully while clients keep connecting. A
plain stop: HAProxy retries each refused connection on the other server until
its health check marks the stopped one DOWN, and no connection that was
answered loses a reply. One connection can still fail, rarely: one the kernel
completed in the listening socket's queue just after the server's last
accept(), reset when the listener closes; HAProxy has already sent it the
client's bytes, and in TCP mode never retries then. Each such failure must be
that one, by HAProxy's own log. Draining the server in HAProxy first (its
runtime API) closes the gap: then no connection fails at all.

The figures are printed, and appended as JSON lines to the file named by
``CONNECTEUR_HAPROXY_REPORT`` when it is set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from connecteur import ConnecteurError, Connection, Peer, Server
from connecteur.address import format_address
from tests.support import TIMEOUT, recv_until_closed, wait_until

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not on PATH: install the Debian package haproxy (apt-get install haproxy)"
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "haproxy" / "haproxy.cfg"
FRONTEND = "127.0.0.1:7000"
"""The addresses in the shipped configuration, each replaced by the test's own."""
BACKENDS = {"a": "127.0.0.1:7001", "b": "127.0.0.1:7002"}
RUNTIME_API = "/tmp/connecteur-haproxy.sock"
ENGINES = {"a": "select", "b": "threads"}
BIND_ATTEMPTS = 5
"""HAProxy starts this many times at most, each on a newly free port, if another program takes its port first."""


class Tagger:
    """Replies ``name|message|address``, the address being the `peer.address` the handler saw.

    Counts HAProxy's health checks (PROXY LOCAL: no client address) apart from clients.
    """

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.checks = 0
        self.clients = 0
        self._lock = threading.Lock()

    def connected(self, peer: Peer) -> None:
        with self._lock:
            if peer.proxy_address is None:
                self.checks += 1
            else:
                self.clients += 1

    def received(self, peer: Peer, message: bytes) -> bytes:
        return b"|".join((self.name, message, format_address(peer.address).encode()))


@dataclass
class Balanced:
    """HAProxy and the servers behind it."""

    frontend: tuple[str, int]
    servers: dict[str, Server]
    handlers: dict[str, Tagger]
    log: Path
    runtime_api: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_lines(self, client: str | None = None) -> list[TcpLog]:
        """HAProxy's ``option tcplog`` lines, written as connections end; only `client`'s (``host:port``) if given.

        A client port may serve twice in a test (HAProxy closing first leaves
        no TIME_WAIT on the client's side), hence a list.
        """
        lines = []
        for line in self.log_text().splitlines():
            fields = line.split()
            if len(fields) >= 9 and fields[2] == "messages" and client in (None, fields[0]):
                retries = fields[7].rpartition("/")[2]
                lines.append(TcpLog(fields[0], fields[3].partition("/")[2], int(fields[5]), fields[6], retries))
        return lines

    def check_health(self) -> dict[str, int]:
        """Each server's health as HAProxy counts it: 0 is DOWN; ``rise + fall - 1`` is full (2 here)."""
        answer = self.command("show servers state connecteur").splitlines()
        columns = answer[1].lstrip("# ").split()
        rows = [dict(zip(columns, row.split(), strict=False)) for row in answer[2:] if row.strip()]
        return {row["srv_name"]: int(row["srv_check_health"]) for row in rows}

    def command(self, command: str) -> str:
        """Run one command on HAProxy's runtime API; return its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(self.runtime_api))
            sock.sendall(command.encode() + b"\n")
            return recv_until_closed(sock).decode()


@dataclass(frozen=True)
class TcpLog:
    """The fields of a ``option tcplog`` line this test reads."""

    client: str
    server: str
    bytes_to_client: int
    termination: str
    """Two letters: who ended the session and in which phase (``--``: normally; ``SD``: the server, during data)."""
    retries: str
    """How many times the connection was retried; ``+N`` when it was redispatched to another server."""


@dataclass
class Session:
    """One client connection through HAProxy: what it sent, and what came back."""

    started: float
    ended: float = 0.0
    local: str = ""
    sent: int = 0
    answered: int = 0
    server: str | None = None
    wrong: list[bytes] = field(default_factory=list)
    error: str | None = None


def run_session(frontend: tuple[str, int], tag: bytes, count: int) -> Session:
    """Connect through HAProxy, then `count` requests, each reply checked against the client's own address."""
    session = Session(time.monotonic())
    try:
        sock = socket.create_connection(frontend, timeout=TIMEOUT)
    except OSError as exc:
        session.error = repr(exc)
        return session
    session.local = format_address(sock.getsockname())
    with Connection(sock, timeout=TIMEOUT) as conn:
        try:
            for number in range(count):
                message = b"%s %d" % (tag, number)
                session.sent += 1
                reply = conn.request(message)
                name, echoed, address = reply.decode().split("|")
                if echoed.encode() != message or address != session.local or session.server not in (None, name):
                    session.wrong.append(reply)
                session.server = name
                session.answered += 1
        except (ConnecteurError, OSError, ValueError) as exc:
            session.error = repr(exc)
    session.ended = time.monotonic()
    return session


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def configuration(frontend_port: int, servers: dict[str, Server], runtime_api: Path) -> str:
    """The shipped configuration, with the test's addresses in place of its own."""
    text = EXAMPLE.read_text()
    replacements = {FRONTEND: f"127.0.0.1:{frontend_port}", RUNTIME_API: str(runtime_api)}
    replacements |= {BACKENDS[name]: format_address(server.address) for name, server in servers.items()}
    directives = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for shipped, ours in replacements.items():
        assert sum(shipped in line for line in directives) == 1, f"{EXAMPLE} should use {shipped} exactly once"
        text = text.replace(shipped, ours)  # in the comments too, harmlessly
    return text


def both_servers_answer(frontend: tuple[str, int]) -> bool:
    """True once requests through the frontend reach both servers (round robin: two in a row)."""
    seen = set()
    for _ in range(4):
        session = run_session(frontend, b"ready?", 1)
        if session.answered != 1 or session.wrong:
            return False
        seen.add(session.server)
    return seen == set(BACKENDS)


def logged(balanced: Balanced, client: str, connections: int) -> bool:
    return len(balanced.log_lines(client)) >= connections


def is_the_listeners_close(line: TcpLog, stopped: str) -> bool:
    """The stopped server, not a byte back, ended by the server in the data phase (``SD``), never retried."""
    return (line.server, line.bytes_to_client, line.termination, line.retries) == (stopped, 0, "SD", "0")


def served_by(name: str, session: Session) -> bool:
    return session.server == name


def up_or_exited(process: subprocess.Popen[bytes], frontend: tuple[str, int]) -> bool:
    return process.poll() is not None or both_servers_answer(frontend)


@contextmanager
def haproxy(tmp_path: Path, servers: dict[str, Server]) -> Iterator[tuple[str, int]]:
    """Run HAProxy in the foreground on the shipped configuration; yield its frontend once both servers answer."""
    assert HAPROXY is not None
    config, log = tmp_path / "haproxy.cfg", tmp_path / "haproxy.log"
    for _ in range(BIND_ATTEMPTS):
        frontend = ("127.0.0.1", free_port())
        config.write_text(configuration(frontend[1], servers, tmp_path / "haproxy.sock"))
        with log.open("wb") as output:
            process = subprocess.Popen(
                [HAPROXY, "-f", str(config), "-db"], stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        try:
            wait_until(partial(up_or_exited, process, frontend), what="HAProxy up")
            if process.poll() is None:
                yield frontend
                return
            if "cannot bind" not in log.read_text(errors="replace"):
                raise AssertionError(f"haproxy exited {process.returncode}:\n{log.read_text(errors='replace')}")
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(TIMEOUT)
    raise AssertionError(f"haproxy could not bind a free port in {BIND_ATTEMPTS} attempts:\n{log.read_text()}")


@pytest.fixture
def balanced(tmp_path: Path) -> Iterator[Balanced]:
    handlers = {name: Tagger(name) for name in BACKENDS}
    servers: dict[str, Server] = {}
    try:
        for name, engine in ENGINES.items():
            servers[name] = Server(
                handlers[name], "127.0.0.1:0", engine=engine, proxy_protocol="v2", proxy_trusted=["127.0.0.1/32"]
            )
            servers[name].start()
        with haproxy(tmp_path, servers) as frontend:
            balanced = Balanced(frontend, servers, handlers, tmp_path / "haproxy.log", tmp_path / "haproxy.sock")
            # HAProxy starts servers UP at the lowest health, where one failed check is enough for DOWN: wait
            # for full health, after the first passed check, so that "fall 2" applies, as in a long-running setup.
            wait_until(lambda: set(balanced.check_health().values()) == {2}, what="both servers at full health")
            yield balanced
    finally:
        for server in servers.values():
            server.stop(timeout=1.0)


def report(figures: dict[str, object]) -> None:
    print("\nHAProxy:", json.dumps(figures))
    path = os.environ.get("CONNECTEUR_HAPROXY_REPORT")
    if path:
        with open(path, "a") as file:
            file.write(json.dumps(figures) + "\n")


def start_threads(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()


def join_threads(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)


# --- the tests ----------------------------------------------------------------------------


def test_fifty_clients_through_haproxy_are_seen_with_their_own_addresses(balanced: Balanced) -> None:
    sessions: list[Session] = []

    def client(number: int) -> None:
        sessions.append(run_session(balanced.frontend, b"client %d" % number, 10))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    try:
        start_threads(threads)
    finally:
        join_threads(threads)
    assert len(sessions) == 50
    assert [s for s in sessions if s.error or s.wrong or s.answered != 10] == []
    assert {s.local.rpartition(":")[0] for s in sessions} == {"127.0.0.1"}
    assert len({s.local for s in sessions}) == 50  # each reply named its own client's port
    by_server = {name: sum(s.server == name for s in sessions) for name in BACKENDS}
    assert all(by_server.values()), f"round robin should use both servers: {by_server}"
    report(
        {
            "test": "fifty clients",
            "clients": len(sessions),
            "messages": sum(s.sent for s in sessions),
            "replies": sum(s.answered for s in sessions),
            "connections by server": by_server,
            "health checks by server": {name: h.checks for name, h in balanced.handlers.items()},
        }
    )


def stop_under_load(balanced: Balanced, stopped: str, *, drain_first: bool) -> tuple[list[Session], dict[str, Any]]:
    """Clients connect in a loop, 5 requests each, while server `stopped` stops gracefully.

    Returns every session, and the figures. Checks that the stop ends within
    TIMEOUT, that HAProxy marks the server DOWN, and that every connection
    begun after the stop went to the other server.
    """
    other = next(name for name in BACKENDS if name != stopped)
    sessions: list[Session] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(number: int) -> None:
        for round_ in range(10_000):  # bounded: ends when told, long before this
            if enough.is_set():
                return
            session = run_session(balanced.frontend, b"client %d round %d" % (number, round_), 5)
            with lock:
                sessions.append(session)

    def count(condition: Callable[[Session], bool]) -> int:
        with lock:
            return sum(1 for s in sessions if condition(s))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    stopper = threading.Thread(target=balanced.servers[stopped].stop, kwargs={"timeout": TIMEOUT})
    try:
        start_threads(threads)
        wait_until(lambda: all(count(partial(served_by, n)) >= 10 for n in BACKENDS), what="both serving")
        if drain_first:
            assert balanced.command(f"set server connecteur/{stopped} state drain").strip() == ""
        stop_requested = time.monotonic()
        stopper.start()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive(), "the graceful stop took longer than TIMEOUT"
        stopped_at = time.monotonic()
        down = f"Server connecteur/{stopped} is DOWN"
        wait_until(lambda: down in balanced.log_text(), what="HAProxy's health check marking it DOWN")
        down_at = time.monotonic()
        wait_until(lambda: count(lambda s: s.started > down_at) >= 40, what="40 connections after DOWN")
    finally:
        enough.set()
        join_threads(threads)
        if stopper.is_alive():
            stopper.join(TIMEOUT)

    answered = [s for s in sessions if s.answered]
    failed = [s for s in sessions if not s.answered]
    after_stop = [s for s in sessions if s.started > stopped_at]
    for address in {s.local for s in failed if s.local}:  # HAProxy logs each connection as it ends: wait for it
        connections = sum(s.local == address for s in sessions)
        wait_until(partial(logged, balanced, address, connections), what=f"HAProxy's log of {address}")
    redispatched = [line for line in balanced.log_lines() if line.retries.startswith("+")]
    figures: dict[str, Any] = {
        "test": f"{'drain, then ' if drain_first else ''}graceful stop of {stopped} ({ENGINES[stopped]})",
        "clients": len(sessions),
        "messages": sum(s.sent for s in sessions),
        "replies": sum(s.answered for s in sessions),
        "replies lost": sum(s.sent - s.answered for s in answered),
        "connection failures": len(failed),
        "failures": [f"{s.error}; HAProxy: {balanced.log_lines(s.local)}" for s in failed],
        "connections retried on the other server": len(redispatched),
        "connections the stopped server finished during its stop": count(
            lambda s: s.server == stopped and s.started < stop_requested < s.ended
        ),
        "seconds from the stop to DOWN": round(down_at - stop_requested, 3),
        "health checks by server": {name: h.checks for name, h in balanced.handlers.items()},
        "stats by server": {name: dataclasses.asdict(server.stats) for name, server in balanced.servers.items()},
    }
    report(figures)
    assert [s for s in sessions if s.wrong] == []
    assert figures["replies lost"] == 0, [s for s in answered if s.answered < s.sent]
    assert {s.server for s in after_stop} == {other}  # every connection since went to the other server
    return sessions, figures


@pytest.mark.parametrize("stopped", sorted(BACKENDS), ids=lambda name: f"stop {name} ({ENGINES[name]})")
def test_a_graceful_stop_behind_haproxy_loses_no_reply(balanced: Balanced, stopped: str) -> None:
    """Retries and redispatch carry refused connections to the other server; no answered connection loses a reply.

    A connection that fails was the kernel's, not connecteur's: completed in
    the listening socket's queue after the last accept(), then reset as the
    listener closed, after HAProxy had sent it the client's bytes (so it
    cannot retry): its log line shows the stopped server, no byte back, and
    ``SD`` (the server ended it during the data phase) with no retry.
    """
    sessions, figures = stop_under_load(balanced, stopped, drain_first=False)
    assert figures["connections retried on the other server"] > 0  # refused until DOWN: retries did their part
    failures = Counter(s.local for s in sessions if not s.answered)
    for client, count in failures.items():
        lines = balanced.log_lines(client)
        races = [line for line in lines if is_the_listeners_close(line, stopped)]
        assert len(races) >= count, f"a failure that is not the listener's close: {client} {lines}"


@pytest.mark.parametrize("stopped", sorted(BACKENDS), ids=lambda name: f"stop {name} ({ENGINES[name]})")
def test_drain_in_haproxy_then_a_graceful_stop_fails_no_connection(balanced: Balanced, stopped: str) -> None:
    """The procedure the README gives: ``set server ... state drain``, then stop the server: nothing fails."""
    _, figures = stop_under_load(balanced, stopped, drain_first=True)
    assert figures["connection failures"] == 0, figures
    assert figures["connections retried on the other server"] == 0, figures  # none was even refused
