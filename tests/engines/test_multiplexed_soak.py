"""Soak: 16 threads share one blocking client, 100 tasks one aio client; every reply is its own request's.

Each request carries a random payload; the reply carries the payload's
SHA-256 and the payload, so a reply handed to the wrong request cannot pass
for the right one. Some requests ask the handler to fail (they must raise
`RemoteError`, and only they), some to be slow under a short timeout (they
raise `Timeout`, or get their own reply if it came in time, and their late
replies must be dropped). The bytes go through the fault proxy, cut into
random small pieces, so envelopes arrive split anywhere. Run on every engine;
``python -m tests.engines.test_multiplexed_soak SECONDS`` runs a longer one
and prints the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import connecteur
from connecteur import RemoteError, Server, Timeout
from connecteur.tools.proxy import Proxy
from tests.engines.conftest import engine_options
from tests.support import TIMEOUT

Serve = Callable[..., Server]

THREADS = 16
TASKS = 100
SLOW = 0.02
"""Seconds a slow request takes in the handler; its caller waits a quarter of that, so it times out."""


def answer(message: bytes) -> bytes:
    """The soak's handler: fail or dawdle when asked, else the payload's digest and the payload."""
    if message.startswith(b"fail"):
        raise ValueError("asked to fail")
    if message.startswith(b"slow"):
        time.sleep(SLOW)
    return hashlib.sha256(message).digest() + message


async def answer_async(message: bytes) -> bytes:
    if message.startswith(b"slow"):
        await asyncio.sleep(SLOW)
        return hashlib.sha256(message).digest() + message
    return answer(message)


def make_request(worker: int, seq: int) -> tuple[bytes, str]:
    """A request and what it must end with: ``"reply"``, ``"remote"`` or ``"slow"`` (reply or Timeout).

    One request in ten fails; each fourth worker's fifth request is slow
    (few: on engines that answer in order, a slow one holds back the rest).
    """
    nonce = os.urandom(8).hex().encode()
    if seq % 10 == 3:
        return b"fail " + nonce, "remote"
    if seq == 4 and worker % 4 == 0:
        return b"slow " + nonce, "slow"
    return f"{worker}:{seq}:".encode() + nonce * (1 + seq % 5), "reply"


def failing(workers: int, each: int) -> int:
    """How many of `workers` x `each` requests `make_request` makes fail."""
    return workers * sum(seq % 10 == 3 for seq in range(each))


def check(figures: Counter[str], message: bytes, expected: str, call: Callable[[], bytes]) -> None:
    """Make one request and count how it ended; anything but its own outcome counts as "wrong"."""
    try:
        reply = call()
    except RemoteError:
        figures["remote error" if expected == "remote" else "wrong"] += 1
        return
    except Timeout:
        figures["timeout" if expected == "slow" else "wrong"] += 1
        return
    if expected != "remote" and reply == hashlib.sha256(message).digest() + message:
        figures["own reply"] += 1
    else:
        figures["wrong"] += 1


def soak_threads(address: Any, requests: int, figures: Counter[str]) -> None:
    with connecteur.connect(address, multiplexed=True, timeout=TIMEOUT) as conn:

        def work(n: int) -> None:
            local: Counter[str] = Counter()
            for seq in range(requests):
                message, expected = make_request(n, seq)
                timeout = SLOW / 4 if expected == "slow" else TIMEOUT
                check(local, message, expected, lambda: conn.request(message, timeout=timeout))  # noqa: B023
            with lock:
                figures.update(local)

        lock = threading.Lock()
        threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 3)
        figures["late replies dropped"] += conn.late_replies


async def soak_tasks(address: Any, requests: int, figures: Counter[str]) -> None:
    async with await connecteur.aio.connect(address, multiplexed=True, timeout=TIMEOUT) as conn:

        async def work(n: int) -> None:
            for seq in range(requests):
                message, expected = make_request(n, seq)
                timeout = SLOW / 4 if expected == "slow" else TIMEOUT
                try:
                    reply = await conn.request(message, timeout=timeout)
                except (RemoteError, Timeout) as exc:
                    error = exc
                    check(figures, message, expected, lambda: _raise(error))  # noqa: B023
                else:
                    check(figures, message, expected, lambda: reply)  # noqa: B023

        await asyncio.gather(*(work(n) for n in range(TASKS)))
        figures["late replies dropped"] += conn.late_replies


def _raise(error: BaseException) -> bytes:
    raise error


def soak(
    engine: str, thread_requests: int, task_requests: int, *, through_proxy: bool = False
) -> tuple[Counter[str], Counter[str]]:
    """One soak on `engine`; the figures of the blocking client and of the aio client.

    `through_proxy`: the bytes of both go through the fault proxy, cut into
    random pieces of 1 to 7 bytes, so that envelopes arrive split anywhere.
    """
    handler = answer_async if engine.startswith("asyncio") else answer
    blocking: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(Server(handler, "127.0.0.1:0", multiplexed=True, **engine_options(engine)))
        address = server.address
        if through_proxy:
            address = stack.enter_context(Proxy(address, fragment=7, fragment_random=True, seed=20)).address
        side = threading.Thread(target=soak_threads, args=(address, thread_requests, blocking))
        side.start()
        try:
            asyncio.run(soak_tasks(address, task_requests, tasks))
        finally:
            side.join(TIMEOUT * 3)
    return blocking, tasks


def assert_sound(figures: Counter[str], workers: int, each: int) -> None:
    """No reply went to another request, none was lost, and exactly the failing ones failed."""
    assert figures["wrong"] == 0, figures
    ended = figures["own reply"] + figures["remote error"] + figures["timeout"]
    assert ended == workers * each, figures  # none lost: each ended one way or the other
    assert figures["remote error"] == failing(workers, each), figures


def test_every_request_ends_with_its_own_reply_or_an_error(engine: str) -> None:
    blocking, tasks = soak(engine, thread_requests=20, task_requests=5)
    assert_sound(blocking, THREADS, 20)
    assert_sound(tasks, TASKS, 5)


def test_envelopes_split_anywhere_by_the_proxy() -> None:
    blocking, tasks = soak("select", thread_requests=8, task_requests=2, through_proxy=True)
    assert_sound(blocking, THREADS, 8)
    assert_sound(tasks, TASKS, 2)


if __name__ == "__main__":  # pragma: no cover - a longer run, by hand, for the figures
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for variant in ("select", "threads", "processes", "asyncio"):
        for proxied in (False, True):
            started = time.monotonic()
            blocking, tasks = soak(variant, rounds * 20, rounds * 5, through_proxy=proxied)
            took = time.monotonic() - started
            assert_sound(blocking, THREADS, rounds * 20)
            assert_sound(tasks, TASKS, rounds * 5)
            total = THREADS * rounds * 20 + TASKS * rounds * 5
            print(
                f"{variant:9} proxy={proxied!s:5} {took:5.1f} s ~{total / took:5.0f} req/s "
                f"blocking {dict(blocking)} aio {dict(tasks)}",
                flush=True,
            )
