"""Soak: reconnecting multiplexed clients through cuts, resets and blackholes; no reply to the wrong request.

16 threads share one reconnecting multiplexed blocking client and 100 tasks
one aio client, both through the fault proxy, whose faults change every few
tens of milliseconds: links cut (FIN) or reset (RST) after a few hundred
bytes, in either direction, or blackholed (the heartbeats end those). Each
request carries a unique id and a checksum; the reply is the request's
SHA-256 and the request, so a reply handed to the wrong request cannot pass
for the right one; the server counts its executions of each id. Half the
requests are marked ``retry=True``.

Every request must end with its own reply or a raised error (none lost
silently, none answered with another's reply), and none may be executed
twice unless it was marked retryable. ``python -m
tests.engines.test_reconnect_multiplexed_soak ROUNDS`` runs a longer one and
prints the figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import threading
import time
import zlib
from collections import Counter
from typing import Any

import connecteur
from connecteur import Backoff, ConnectionClosed, Server, Timeout
from connecteur.tools.proxy import Faults, Proxy
from tests.support import TIMEOUT

THREADS = 16
TASKS = 100
BACKOFF = Backoff(initial=0.005, factor=2, maximum=0.05)
HEARTBEAT = (0.05, 0.15)
"""Both sides: a blackholed link is ended within 0.2 s."""
FAULT_EVERY = 0.05
"""Seconds between two changes of the proxy's faults."""
BLACKHOLE_FOR = 0.3
"""Seconds a blackhole stays: longer than the heartbeat's interval + deadline."""


class Executions:
    """The server's handler: checks each request's checksum, counts executions by id, echoes a digest."""

    def __init__(self) -> None:
        self.count: Counter[bytes] = Counter()
        self.corrupt = 0
        self.lock = threading.Lock()

    def __call__(self, message: bytes) -> bytes:
        body, check = message[:-4], message[-4:]
        if zlib.crc32(body).to_bytes(4, "big") != check:
            with self.lock:
                self.corrupt += 1
            raise ValueError("bad checksum")
        with self.lock:
            self.count[body.split(b"|")[0]] += 1
        return hashlib.sha256(message).digest() + message


def make_request(client: str, worker: int, seq: int) -> tuple[bytes, bytes, bool]:
    """A request, its unique id, and whether it may be retried (every other one)."""
    request_id = f"{client}:{worker}:{seq}".encode()
    body = request_id + b"|" + os.urandom(4 + seq % 29).hex().encode()
    return body + zlib.crc32(body).to_bytes(4, "big"), request_id, seq % 2 == 1


def outcome(figures: Counter[str], message: bytes, retry: bool, reply: bytes | BaseException) -> str:
    """Count how one request ended, under its kind ("retry" or "once"); returns the outcome's name."""
    kind = "retry" if retry else "once"
    if isinstance(reply, ConnectionClosed):
        name = "raised ConnectionClosed" + (" (heartbeat)" if "sent nothing for" in str(reply) else "")
    elif isinstance(reply, Timeout):
        name = "raised Timeout"
    elif isinstance(reply, BaseException):
        name = f"raised {type(reply).__name__}"
    else:
        name = "answered" if reply == hashlib.sha256(message).digest() + message else "wrong reply"
    figures[f"{kind} {name}"] += 1
    return name


def soak_threads(address: Any, requests: int, figures: Counter[str], ids: dict[bytes, tuple[bool, str]]) -> None:
    with connecteur.connect(address, multiplexed=True, reconnect=BACKOFF, heartbeat=HEARTBEAT, timeout=TIMEOUT) as conn:
        lock = threading.Lock()

        def work(worker: int) -> None:
            for seq in range(requests):
                message, request_id, retry = make_request("b", worker, seq)
                reply: bytes | BaseException
                try:
                    reply = conn.request(message, retry=retry)
                except Exception as exc:  # counted, and checked by the caller
                    reply = exc
                with lock:
                    ids[request_id] = (retry, outcome(figures, message, retry, reply))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(3 * TIMEOUT)
        figures["links"] += conn.connects


async def soak_tasks(address: Any, requests: int, figures: Counter[str], ids: dict[bytes, tuple[bool, str]]) -> None:
    conn = await connecteur.aio.connect(
        address, multiplexed=True, reconnect=BACKOFF, heartbeat=HEARTBEAT, timeout=TIMEOUT
    )
    async with conn:

        async def work(worker: int) -> None:
            for seq in range(requests):
                message, request_id, retry = make_request("a", worker, seq)
                reply: bytes | BaseException
                try:
                    reply = await conn.request(message, retry=retry)
                except Exception as exc:  # counted, and checked by the caller
                    reply = exc
                ids[request_id] = (retry, outcome(figures, message, retry, reply))

        await asyncio.gather(*(work(n) for n in range(TASKS)))
        figures["links"] += conn.connects


def make_trouble(proxy: Proxy, done: threading.Event, rng: random.Random, faults: Counter[str]) -> None:
    """Change the faults until `done`: cuts, resets, blackholes, in either direction; count them in `faults`.

    A blackhole is held long enough for the heartbeats to end its links
    (`BLACKHOLE_FOR`): lifted sooner, the held bytes would just go on.
    """
    wait = FAULT_EVERY
    while not done.wait(wait):
        after = rng.randrange(200, 3000)
        kind, fault = rng.choice(
            [
                ("cut", Faults(cut_after=after)),
                ("reset", Faults(cut_after=after, reset=True)),
                ("blackhole", Faults(blackhole_after=after)),
                ("none", Faults()),
            ]
        )
        faults[kind] += 1
        wait = BLACKHOLE_FOR if kind == "blackhole" else FAULT_EVERY
        if rng.random() < 0.5:
            proxy.set_faults(upstream=fault, downstream=Faults())
        else:
            proxy.set_faults(upstream=Faults(), downstream=fault)
    proxy.set_faults(Faults())


def soak(thread_requests: int, task_requests: int, seed: int = 20) -> dict[str, Any]:
    """One soak; the figures of each client and the server's executions."""
    handler = Executions()
    blocking: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    ids: dict[bytes, tuple[bool, str]] = {}
    faults: Counter[str] = Counter()
    done = threading.Event()
    with (
        Server(handler, "127.0.0.1:0", engine="threads", multiplexed=True, heartbeat=HEARTBEAT) as server,
        Proxy(server.address, seed=seed) as proxy,
    ):
        trouble = threading.Thread(target=make_trouble, args=(proxy, done, random.Random(seed), faults))
        side = threading.Thread(target=soak_threads, args=(proxy.address, thread_requests, blocking, ids))
        trouble.start()
        side.start()
        try:
            asyncio.run(soak_tasks(proxy.address, task_requests, tasks, ids))
        finally:
            side.join(3 * TIMEOUT)
            done.set()
            trouble.join(TIMEOUT)
    return {
        "blocking": blocking,
        "aio": tasks,
        "ids": ids,
        "executions": handler.count,
        "corrupt": handler.corrupt,
        "faults": faults,
    }


def executed_twice(result: dict[str, Any], retry: bool, client: bytes = b"") -> int:
    """Requests of `client` (b"b:" blocking, b"a:" aio, b"": both) with this `retry` that the server ran twice."""
    ids: dict[bytes, tuple[bool, str]] = result["ids"]
    executions: Counter[bytes] = result["executions"]
    return sum(executions[i] > 1 for i, (r, _) in ids.items() if r is retry and i.startswith(client))


def raised_but_executed(result: dict[str, Any], client: bytes) -> int:
    """Requests that raised, yet the server had run them: the reply was lost, which is why none is re-sent."""
    ids: dict[bytes, tuple[bool, str]] = result["ids"]
    return sum(
        result["executions"][i] > 0 for i, (_, ended) in ids.items() if ended != "answered" and i.startswith(client)
    )


def assert_sound(result: dict[str, Any], thread_requests: int, task_requests: int) -> None:
    """Each request ended with its own reply or an error; none executed twice unless retryable."""
    assert result["corrupt"] == 0
    ids: dict[bytes, tuple[bool, str]] = result["ids"]
    assert len(ids) == THREADS * thread_requests + TASKS * task_requests  # none lost: each ended one way or the other
    executions: Counter[bytes] = result["executions"]
    for figures in (result["blocking"], result["aio"]):
        assert not any("wrong" in name for name in figures), figures
    for request_id, (retry, ended) in ids.items():
        assert ended == "answered" or ended.startswith("raised"), (request_id, ended)
        if ended == "answered":
            assert executions[request_id] >= 1, request_id
        if not retry:
            assert executions[request_id] <= 1, request_id
    assert executed_twice(result, retry=False) == 0


def figures_line(result: dict[str, Any]) -> str:
    parts = []
    for client, prefix in (("blocking", b"b:"), ("aio", b"a:")):
        figures = dict(sorted(result[client].items()))
        once, retry = executed_twice(result, False, prefix), executed_twice(result, True, prefix)
        twice = f"executed twice: once {once}, retry {retry}"
        parts.append(f"{client} {figures}, {twice}, raised but executed {raised_but_executed(result, prefix)}")
    parts.append(f"faults set {dict(sorted(result['faults'].items()))}")
    return "; ".join(parts)


def test_through_cuts_resets_and_blackholes_every_request_ends_with_its_own_reply_or_an_error() -> None:
    result = soak(thread_requests=60, task_requests=10)
    assert_sound(result, 60, 10)
    faulted = result["blocking"]["links"] + result["aio"]["links"]
    raised = sum(
        n for figures in (result["blocking"], result["aio"]) for name, n in figures.items() if "raised" in name
    )
    assert faulted > 2 and raised > 0, figures_line(result)  # the faults did hit: links died under requests


if __name__ == "__main__":  # pragma: no cover - a longer run, by hand, for the figures
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    started = time.monotonic()
    result = soak(rounds * 60, rounds * 10)
    took = time.monotonic() - started
    assert_sound(result, rounds * 60, rounds * 10)
    total = THREADS * rounds * 60 + TASKS * rounds * 10
    print(f"{total} requests in {took:.1f} s: {figures_line(result)}", flush=True)
