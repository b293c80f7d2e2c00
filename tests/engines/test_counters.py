"""`Counters` and `Traffic`: per-writer counts without a lock, summed by `snapshot`."""

from __future__ import annotations

import threading
from dataclasses import fields

from connecteur.server._engine import Counters, Stats


def test_snapshot_adds_live_traffic_and_keeps_retired_traffic_once() -> None:
    counters = Counters()
    loop, link = counters.traffic(), counters.traffic()
    loop.messages_in, loop.bytes_in, loop.messages_out, loop.bytes_out = 2, 20, 1, 10
    link.messages_in, link.bytes_in = 3, 30
    stats = counters.snapshot()
    assert (stats.messages_in, stats.bytes_in, stats.messages_out, stats.bytes_out) == (5, 50, 1, 10)
    counters.retire(link)
    counters.retire(link)  # a second retire adds nothing: the counts were moved once
    stats = counters.snapshot()
    assert (stats.messages_in, stats.bytes_in, stats.messages_out, stats.bytes_out) == (5, 50, 1, 10)


def test_add_traffic_takes_only_messages_and_bytes() -> None:
    counters = Counters()
    counters.opened()
    counters.add_traffic(Stats(accepted=1, active=0, messages_in=4, messages_out=3, bytes_in=40, bytes_out=30))
    stats = counters.snapshot()
    assert (stats.accepted, stats.active) == (1, 1)  # the parent counts the connection itself
    assert (stats.messages_in, stats.messages_out, stats.bytes_in, stats.bytes_out) == (4, 3, 40, 30)


def test_a_retired_process_keeps_its_counts_once_and_its_open_connections_become_errors() -> None:
    counters = Counters()
    counters.report_elsewhere(101, Stats(accepted=3, active=2, messages_out=5, errors=1))
    counters.retire_elsewhere(101)
    counters.retire_elsewhere(101)  # a second retire adds nothing
    counters.report_elsewhere(102, Stats(accepted=1, active=1, messages_out=1))  # its replacement
    stats = counters.snapshot()
    assert (stats.accepted, stats.active, stats.messages_out, stats.errors) == (4, 1, 6, 3)


def test_a_retired_process_keeps_every_count_but_the_gauges() -> None:
    """Each field of `Stats` a process reported outlives it (a field forgotten in `retire_elsewhere` fails here)."""
    reported = {field.name: 10 * (number + 1) for number, field in enumerate(fields(Stats))}
    counters = Counters()
    counters.report_elsewhere(7, Stats(**reported))
    counters.retire_elsewhere(7)
    kept = counters.snapshot()
    for name, value in reported.items():
        if name in ("active", "queued"):  # gauges: what was open or waiting went with the process
            expected = 0
        elif name == "errors":  # its open connections ended with it
            expected = value + reported["active"]
        else:
            expected = value
        assert getattr(kept, name) == expected, name


def test_counts_of_many_writers_are_exact_while_snapshots_run() -> None:
    """Each thread adds to its own Traffic with no lock; a reader snapshotting meanwhile loses nothing."""
    counters, rounds, writers = Counters(), 20_000, 4
    done = threading.Event()
    seen: list[int] = []

    def write() -> None:
        traffic = counters.traffic()
        for _ in range(rounds):
            traffic.messages_in += 1
            traffic.bytes_in += 2
        counters.retire(traffic)

    def read() -> None:
        while not done.is_set():
            seen.append(counters.snapshot().messages_in)

    reader = threading.Thread(target=read)
    threads = [threading.Thread(target=write) for _ in range(writers)]
    reader.start()
    try:
        for thread in threads:
            thread.start()
    finally:
        for thread in threads:
            thread.join()
        done.set()
        reader.join()
    stats = counters.snapshot()
    assert (stats.messages_in, stats.bytes_in) == (rounds * writers, 2 * rounds * writers)
    assert seen == sorted(seen)  # never a count taken back: a retire moves counts, never doubles or drops them
