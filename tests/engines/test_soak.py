"""A bounded fault soak of each engine: exactly once through a hostile proxy, and no leaks.

The server runs in a process of its own (`_soak_server.py`: its wire format,
its exactly-once handler and its delivery logs are described there), so that
its descriptors, threads, memory and children can be read in ``/proc``.
`CLIENTS` client threads each send numbered, checksummed messages of random
sizes through a `Proxy` of their own, a few pipelined at a time, and read the
acks in order. Before each connection the client draws that connection's
faults and hands them to its proxy: its profile (nothing, 1-byte fragments,
random fragments, delays with jitter), plus maybe a cut (FIN or RST, after a
random number of bytes, either direction) or, rarely, a blackhole (which the
server's idle and message timeouts must clean up). On any failure it
reconnects and resends, in order, every message not yet acked. The proxy
counts nothing, so the faults are counted here: what each connection was told
(``faults``) and, for cuts and blackholes, how many connections then failed
(``hit``).

After `SOAK_SECONDS` (``CONNECTEUR_SOAK_SECONDS``, for a longer soak by hand)
clients stop sending, wait for every ack (on fault-free connections if they
must reconnect) and leave. Then, for every client: the server delivered
exactly 1..N, each with the size and checksum sent, and N equals the acks;
nothing was corrupted, duplicated, lost or out of order. The server's
descriptors and threads are back to what they were after a warm-up, its
memory close to it, and no child process is left.

Each engine prints one line of figures (``pytest -s``), also appended as JSON
to the file named by ``CONNECTEUR_SOAK_REPORT`` when set.
"""

from __future__ import annotations

import errno
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from connecteur import Connection, ConnectionClosed, FramingError, Timeout, connect
from connecteur.server import ENGINES
from connecteur.tools.proxy import Faults, Proxy
from tests.engines._soak_server import (
    ACK,
    CORRUPT,
    DUPLICATE,
    GAP,
    IDLE_TIMEOUT,
    MESSAGE_TIMEOUT,
    encode,
    read_errors,
    read_log,
)
from tests.support import LONG_TESTS, TIMEOUT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measures the server in /proc")

ROOT: Final = Path(__file__).resolve().parents[2]

SOAK_SECONDS: Final = float(os.environ.get("CONNECTEUR_SOAK_SECONDS", "11" if LONG_TESTS else "4"))
"""Seconds each engine is soaked: 4 by default, which still sends thousands of
messages through every kind of fault (the assertions below say a cut reached a
client); 11 with ``CONNECTEUR_LONG_TESTS=1``, for about 13 s an engine."""
SEED: Final = int(os.environ.get("CONNECTEUR_SOAK_SEED", str(random.randrange(2**32))))
"""Seeds the clients' choices (sizes, windows, faults); printed with the figures.
Thread timing still varies from run to run."""

CLIENTS: Final = 16
PROFILE_FAULTS: Final[dict[str, dict[str, Any]]] = {
    "plain": {},
    "fragment-1": {"fragment": 1},
    "fragment-random": {"fragment": 64, "fragment_random": True},
    "delay": {"delay": 0.003, "jitter": 0.003},
}
"""The faults every connection of a client gets, both ways, by its profile."""
PROFILES: Final = tuple(PROFILE_FAULTS)
"""Client i has profile i % 4."""
MAX_PAYLOAD: Final = 4096
MAX_PAYLOAD_FRAGMENT_1: Final = 512
"""1-byte fragments cost the proxy a turn of its loop per byte: a 4 KiB message
takes 0.1 s alone on loopback, seconds on a loaded machine, so these clients
send smaller messages and still make progress."""
MAX_WINDOW: Final = 8
"""Messages a client has sent and not yet seen acked, at most (drawn 1..8 per ack)."""
MAX_LIFETIME: Final = 60
"""Acks on a connection the proxy does not cut, at most, before the client
closes it (messages still in flight) and connects again."""
CLIENT_TIMEOUT: Final = 1.5
"""Seconds a client waits for an ack: mostly a blackhole makes it run out (a
slow ack on a loaded machine only costs a reconnect)."""
DRAIN_TIMEOUT: Final = TIMEOUT
"""Seconds a client may take, once the soak is over, to have every message acked."""

P_CUT: Final = 0.4
"""Connections cut by the proxy after a random number of bytes."""
P_BLACKHOLE: Final = 0.01
"""Connections whose client → server bytes stop after a random number of bytes."""
DOWN_CUT_RANGE: Final = 80
"""Acks are 13 bytes on the wire: a downstream cut comes within the first six."""

WARMUP_ID: Final = 1_000_000
"""Client ids of the warm-up, apart from the soak's."""
WARMUP_ROUNDS: Final = 3

RSS_ALLOWANCE_KIB: Final = 20 * 1024
"""How much the server's resident memory may grow between the warm-up and the
end of the soak. RSS is no exact leak detector: CPython keeps freed memory in
its arenas, glibc keeps it in its heaps, and with the threads engine each
connection thread may allocate from one of glibc's per-thread arenas (up to 8
per core), which keep their pages. So RSS after a burst depends on
fragmentation and on how many connections were open at once. Measured on 2
cores: +1 MiB or less for select, processes and asyncio; for threads +3 MiB
after 3 s (330 connections), +6 MiB after 11 s (1,300), +7 MiB after 30 s
(3,500): a plateau, not a slope. 20 MiB cannot flake, and still catches a leak
of a few KiB per connection, or of the messages (a soak moves 100+ MiB)."""

FAILURES: Final = (ConnectionClosed, FramingError, Timeout, OSError)
"""What a faulty network raises; anything else is a bug and ends the client."""


class BadReply(Exception):
    """The server refused a message (corrupt, gap) or acked another one: reconnect."""


# --- the server process -----------------------------------------------------------------


class SoakServer:
    """`_soak_server.py` in a session of its own (its children too, to find leftovers)."""

    def __init__(self, engine: str, store: Path) -> None:
        self.store = store
        self.stderr = store / "server.err"
        with self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.engines._soak_server", engine, str(store)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        self.pid = self.process.pid
        try:
            host, port = json.loads(self._read_line())
        except BaseException:
            self.kill()
            raise
        self.address = (host, port)

    def _read_line(self) -> str:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(TIMEOUT):
                raise AssertionError(f"the server said nothing for {TIMEOUT} s")
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the server exited: {self.stderr.read_text()[-2000:]}")
        return line

    def stats(self) -> dict[str, int]:
        """The server's counters (one request and its reply on the pipes)."""
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return dict(json.loads(self._read_line()))

    def stop(self) -> int:
        """SIGTERM: a graceful stop; return the exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()  # ends the stats thread first
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(TIMEOUT)

    def kill(self) -> None:
        """Kill the server and whatever is left of its session; idempotent."""
        if self.process.poll() is None or session_members(self.pid):
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(TIMEOUT)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def _processes() -> list[tuple[int, int, int]]:
    """(pid, ppid, session) of every process, from ``/proc/*/stat``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        found.append((int(entry), int(fields[1]), int(fields[3])))
    return found


def children_of(pid: int) -> list[int]:
    return [each for each, parent, _ in _processes() if parent == pid]


def session_members(sid: int) -> list[int]:
    return [each for each, _, session in _processes() if session == sid]


def settle(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll `condition` for up to `timeout` s; return whether it came true (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- the clients ------------------------------------------------------------------------


def draw_faults(rng: random.Random, profile: str) -> tuple[Faults, Faults, list[str]]:
    """One connection's faults, upstream and downstream, and their names for the tally."""
    base = PROFILE_FAULTS[profile]
    told = [] if profile == "plain" else [profile]
    up, down = dict(base), dict(base)
    roll = rng.random()
    if roll < P_CUT:
        upstream = rng.random() < 0.7
        reset = rng.random() < 0.5
        side = up if upstream else down
        side["cut_after"] = rng.randint(0, _up_cut_range(profile) if upstream else DOWN_CUT_RANGE)
        side["reset"] = reset
        told.append(f"{'reset' if reset else 'cut'}_{'up' if upstream else 'down'}")
    elif roll < P_CUT + P_BLACKHOLE:
        up["blackhole_after"] = rng.randint(0, _up_cut_range(profile))
        told.append("blackhole")
    return Faults(**up), Faults(**down), told


def _max_payload(profile: str) -> int:
    return MAX_PAYLOAD_FRAGMENT_1 if profile == "fragment-1" else MAX_PAYLOAD


def _up_cut_range(profile: str) -> int:
    """About six average messages: most cuts land inside a message, some between."""
    return 6 * (_max_payload(profile) // 2 + 16)


@dataclass
class Tally:
    """What one client did and saw."""

    generated: int = 0
    """Messages created: seqs 1..generated."""
    sent: int = 0
    """Sends, resends included."""
    resent: int = 0
    acked: int = 0
    """Acks, in order: seqs 1..acked."""
    duplicate_acks: int = 0
    """Resends the server recognised as delivered already (their first ack was lost)."""
    connections: int = 0
    left: int = 0
    """Connections the client closed itself (after `MAX_LIFETIME` acks at most)."""
    left_unacked: int = 0
    """Messages in flight when it did: resent on the next connection."""
    failures: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    hit: Counter[str] = field(default_factory=Counter)
    bad_replies: list[str] = field(default_factory=list)
    digests: dict[int, tuple[int, int]] = field(default_factory=dict)
    """seq -> (payload size, crc32 of the payload), to check what was delivered."""


class SoakClient:
    """One client: send, read acks in order, reconnect and resend on any failure."""

    def __init__(
        self, client_id: int, profile: str, proxy: Proxy, rng: random.Random, stop_at: float, abort: threading.Event
    ) -> None:
        self.client_id = client_id
        self.profile = profile
        self.proxy = proxy
        self.rng = rng
        self.stop_at = stop_at
        self.abort = abort
        self.tally = Tally()
        self.error: BaseException | None = None
        self._conn: Connection | None = None
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._told: list[str] = []
        self._lifetime = 0  # acks this connection has before the client leaves

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def run(self) -> None:
        try:
            self._soak()
            self._drain()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            if self._conn is not None:
                self._conn.close()

    def _soak(self) -> None:
        while time.monotonic() < self.stop_at and not self.abort.is_set():
            try:
                if self._conn is None:
                    self._connect(draining=False)
                elif self._lifetime <= 0:
                    self._leave()
                    continue
                window = self.rng.randint(1, MAX_WINDOW)
                while len(self._unacked) < window:
                    self._send_new()
                self._take_ack()
            except (*FAILURES, BadReply) as exc:
                self._failed(exc)

    def _leave(self) -> None:
        """Close a connection the proxy did not cut, acks still in flight; come back at once."""
        assert self._conn is not None
        self.tally.left += 1
        self.tally.left_unacked += len(self._unacked)
        self._conn.close()
        self._conn = None

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self._unacked:
            if time.monotonic() > deadline or self.abort.is_set():
                raise AssertionError(f"client {self.client_id}: {len(self._unacked)} messages never acked")
            try:
                if self._conn is None:
                    self._connect(draining=True)
                self._take_ack()
            except (*FAILURES, BadReply) as exc:
                self._failed(exc)

    def _connect(self, *, draining: bool) -> None:
        """Tell the proxy this connection's faults (none when draining), connect, resend."""
        if draining:
            up, down, self._told = Faults(), Faults(), []
        else:
            up, down, self._told = draw_faults(self.rng, self.profile)
        # Applied before the proxy accepts: its wake-up is pending before we connect.
        self.proxy.set_faults(upstream=up, downstream=down)
        self.tally.faults.update(self._told)
        self.tally.connections += 1
        self._lifetime = self.rng.randint(1, MAX_LIFETIME)
        self._conn = connect(self.proxy.address, timeout=CLIENT_TIMEOUT)
        if self._unacked:
            self._conn.send_many(message for _, message in self._unacked)
            self.tally.sent += len(self._unacked)
            self.tally.resent += len(self._unacked)

    def _send_new(self) -> None:
        assert self._conn is not None
        seq = self.tally.generated + 1
        payload = self.rng.randbytes(self.rng.randint(0, _max_payload(self.profile)))
        message = encode(self.client_id, seq, payload)
        self.tally.digests[seq] = (len(payload), zlib.crc32(payload))
        self.tally.generated = seq
        self._unacked.append((seq, message))  # before sending: resent if the send fails
        self._conn.send(message)
        self.tally.sent += 1

    def _take_ack(self) -> None:
        assert self._conn is not None
        reply = self._conn.recv()
        expected = self._unacked[0][0]
        if len(reply) != ACK.size:
            self.tally.bad_replies.append(f"a reply of {len(reply)} bytes for seq {expected}")
            raise BadReply
        seq, status = ACK.unpack(reply)
        if seq != expected or status in (CORRUPT, GAP):
            self.tally.bad_replies.append(f"seq {seq}, status {status}, expected seq {expected}")
            raise BadReply
        self._unacked.popleft()
        self._lifetime -= 1
        self.tally.acked += 1
        self.tally.duplicate_acks += status == DUPLICATE

    def _failed(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        if type(exc) is OSError and exc.errno in errno.errorcode:  # a bare OSError: name its errno
            kind = errno.errorcode[exc.errno]
        self.tally.failures[kind] += 1
        self.tally.hit.update(name for name in self._told if name.startswith(("cut", "reset", "blackhole")))
        self._told = []
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def warm_up(address: tuple[str, int]) -> None:
    """As many connections at once as the soak, with its largest messages, coming and going."""
    errors: list[BaseException] = []

    def one_client(index: int) -> None:
        try:
            rng = random.Random(f"{SEED}-warm-up-{index}")
            client_id, seq = WARMUP_ID + index, 0
            for _ in range(WARMUP_ROUNDS):
                with connect(address, timeout=TIMEOUT) as conn:
                    seqs = range(seq + 1, seq + 1 + MAX_WINDOW)
                    conn.send_many(encode(client_id, s, rng.randbytes(rng.randint(0, MAX_PAYLOAD))) for s in seqs)
                    for s in seqs:
                        assert ACK.unpack(conn.recv()) == (s, 0), f"warm-up client {index}, seq {s}"
                    seq = seqs[-1]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(i,), name=f"warm-up {i}") for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2 * TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "the warm-up did not end"
    assert not errors, errors


# --- the verdict ------------------------------------------------------------------------


def check_deliveries(clients: list[SoakClient], store: Path) -> dict[str, int]:
    """Compare each client's delivery log with what it sent and saw acked."""
    totals = Counter[str]()
    for client in clients:
        tally = client.tally
        path = store / f"{client.client_id}.log"
        records = read_log(path) if path.exists() else []
        seqs = [seq for seq, _, _ in records]
        delivered = set(seqs)
        totals["delivered"] += len(records)
        totals["duplicates"] += len(seqs) - len(delivered)
        totals["out_of_order"] += sum(seq != index for index, seq in enumerate(seqs, start=1))
        totals["corrupted"] += sum(tally.digests.get(seq) != (size, crc) for seq, size, crc in records)
        totals["lost"] += sum(seq not in delivered for seq in range(1, tally.acked + 1))
        totals["never_acked"] += tally.generated - tally.acked
    return dict(totals)


def report(figures: dict[str, Any]) -> None:
    """One line for ``pytest -s``; a JSON line in ``$CONNECTEUR_SOAK_REPORT`` when set."""
    print(
        "\nsoak {engine}: {clients} clients {seconds}s seed={seed} "
        "| messages={messages} ({messages_by_profile}) delivered={delivered} acks={acks} resent={resent} "
        "duplicate_acks={duplicate_acks} connections={connections} reconnects={reconnects} "
        "client_closes={client_closes} ({left_unacked} in flight) "
        "| failures {failures} | faults {faults} | hit {hit} "
        "| lost={lost} duplicates={duplicates} out_of_order={out_of_order} corrupted={corrupted} "
        "server_errors={server_errors} bad_replies={bad_replies} client_errors={client_errors} "
        "| fds {fds_before}->{fds_after} threads {threads_before}->{threads_after} "
        "rss {rss_before_kib}->{rss_after_kib} KiB children_left={children_left} "
        "| server active_after={server_active_after} accepted={server_accepted} closed_by_error={server_errors_closed} "
        "messages_in={server_messages_in} messages_out={server_messages_out}".format(**figures)
    )
    path = os.environ.get("CONNECTEUR_SOAK_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(figures) + "\n")


def _compact(counter: Counter[str]) -> str:
    return ",".join(f"{name}={count}" for name, count in sorted(counter.items())) or "-"


# --- the test ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_exactly_once_through_faults_without_leaks(engine: str, tmp_path: Path) -> None:
    started = time.monotonic()
    server = SoakServer(engine, tmp_path)
    proxies: list[Proxy] = []
    threads: list[threading.Thread] = []
    abort = threading.Event()
    try:
        warm_up(server.address)
        assert settle(lambda: server.stats()["active"] == 0), "the warm-up connections did not close"
        assert settle(lambda: not children_of(server.pid)), "the warm-up left children"
        fds_before, threads_before, rss_before = open_fds(server.pid), threads_of(server.pid), rss_kib(server.pid)

        for index in range(CLIENTS):
            proxies.append(Proxy(server.address, listen="127.0.0.1:0", seed=SEED + index))
            proxies[-1].start()
        stop_at = time.monotonic() + SOAK_SECONDS
        clients = [
            SoakClient(i + 1, PROFILES[i % len(PROFILES)], proxies[i], random.Random(f"{SEED}-{i}"), stop_at, abort)
            for i in range(CLIENTS)
        ]
        threads = [threading.Thread(target=c.run, name=f"soak client {c.client_id}") for c in clients]
        for thread in threads:
            thread.start()
        join_by = stop_at + CLIENT_TIMEOUT + DRAIN_TIMEOUT + TIMEOUT
        for thread in threads:
            thread.join(max(0.0, join_by - time.monotonic()))
        assert not any(thread.is_alive() for thread in threads), "a client did not finish"

        # Blackholed connections stay open on the server side until its idle
        # or message timeout closes them: the proxies still run meanwhile.
        # What follows only records; the verdict comes after the report.
        settle(lambda: server.stats()["active"] == 0, IDLE_TIMEOUT + MESSAGE_TIMEOUT + TIMEOUT)
        settle(lambda: not children_of(server.pid))
        settle(lambda: open_fds(server.pid) <= fds_before and threads_of(server.pid) <= threads_before)
        fds_after, threads_after, rss_after = open_fds(server.pid), threads_of(server.pid), rss_kib(server.pid)
        children_left = len(children_of(server.pid))
        stats = server.stats()
        for proxy in proxies:
            proxy.stop()
        exit_status = server.stop()
        verdict = json.loads((tmp_path / "verdict.json").read_text())
    finally:
        abort.set()  # clients see it within CLIENT_TIMEOUT
        join_by = time.monotonic() + CLIENT_TIMEOUT + TIMEOUT
        for thread in threads:
            thread.join(max(0.0, join_by - time.monotonic()))
        for proxy in proxies:
            proxy.stop()
        server.kill()
    left_in_session = session_members(server.pid)

    totals = check_deliveries(clients, tmp_path)
    errors = read_errors(tmp_path)
    failures, faults, hit = Counter[str](), Counter[str](), Counter[str]()
    for client in clients:
        failures += client.tally.failures
        faults += client.tally.faults
        hit += client.tally.hit
    connections = sum(c.tally.connections for c in clients)
    client_errors = [f"client {c.client_id}: {c.error!r}" for c in clients if c.error is not None]
    figures: dict[str, Any] = {
        "engine": engine,
        "clients": CLIENTS,
        "seconds": SOAK_SECONDS,
        "seed": SEED,
        "messages": sum(c.tally.generated for c in clients),
        "messages_by_profile": _compact(
            Counter({p: sum(c.tally.generated for c in clients if c.profile == p) for p in PROFILES})
        ),
        "delivered": totals["delivered"],
        "acks": sum(c.tally.acked for c in clients),
        "resent": sum(c.tally.resent for c in clients),
        "duplicate_acks": sum(c.tally.duplicate_acks for c in clients),
        "connections": connections,
        "reconnects": connections - CLIENTS,
        "client_closes": sum(c.tally.left for c in clients),
        "left_unacked": sum(c.tally.left_unacked for c in clients),
        "failures": _compact(failures),
        "faults": _compact(faults),
        "hit": _compact(hit),
        "lost": totals["lost"],
        "duplicates": totals["duplicates"],
        "out_of_order": totals["out_of_order"],
        "corrupted": totals["corrupted"],
        "never_acked": totals["never_acked"],
        "server_errors": len(errors),
        "bad_replies": sum(len(c.tally.bad_replies) for c in clients),
        "client_errors": len(client_errors),
        "server_active_after": stats["active"],
        "fds_before": fds_before,
        "fds_after": fds_after,
        "threads_before": threads_before,
        "threads_after": threads_after,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "children_left": children_left,
        "left_in_session": len(left_in_session),
        "server_accepted": stats["accepted"],
        "server_errors_closed": stats["errors"],
        "server_messages_in": stats["messages_in"],
        "server_messages_out": stats["messages_out"],
        "exit_status": exit_status,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    report(figures)

    assert client_errors == [], client_errors
    assert stats["active"] == 0, f"connections still open on the server: {stats}"
    assert errors == [], errors[:10]
    assert [reply for c in clients for reply in c.tally.bad_replies] == []
    assert (totals["lost"], totals["duplicates"], totals["out_of_order"], totals["corrupted"]) == (0, 0, 0, 0)
    assert totals["never_acked"] == 0
    assert figures["delivered"] == figures["acks"] == figures["messages"]
    assert min(c.tally.acked for c in clients) > 0, "a client made no progress"
    assert hit["cut_up"] + hit["reset_up"] + hit["cut_down"] + hit["reset_down"] > 0, "no cut reached a client"
    assert fds_after == fds_before, f"descriptors: {fds_before} after the warm-up, {fds_after} after the soak"
    assert threads_after == threads_before, f"threads: {threads_before} after the warm-up, {threads_after} after"
    assert rss_after <= rss_before + RSS_ALLOWANCE_KIB, f"RSS grew from {rss_before} KiB to {rss_after} KiB"
    assert children_left == 0 and left_in_session == [], (children_left, left_in_session)
    assert exit_status == 0, (tmp_path / "server.err").read_text()[-2000:]
    assert verdict["errors"] == [] and verdict["stats"]["active"] == 0, verdict
    server_log = (tmp_path / "server.err").read_text()
    assert "Traceback" not in server_log and "ERROR" not in server_log, server_log[-2000:]
