"""How long `server.stop(timeout)` takes while a handler blocks for ever, on every engine.

    python benchmarks/stop_deadline.py               # stop(timeout=2), 3 rounds per engine
    python benchmarks/stop_deadline.py --timeout 0.5 --rounds 5

Each round runs in a fresh process (the thread a stop gives up on stays
until that process ends): a server whose handler blocks on an event nobody
sets, one client whose message is in that handler, then `stop(timeout)`,
timed. Prints the slowest, median and fastest stop per engine, and whether
the client saw its connection closed. The promise: within timeout + 0.5 s
(`ABANDON_GRACE` is 0.25 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

VARIANTS = ["select", "threads", "processes", "asyncio", "select*2"]
if importlib.util.find_spec("uvloop") is not None:
    VARIANTS.insert(4, "asyncio@uvloop")


def one_round(variant: str, timeout: float, marker: Path) -> dict[str, object]:
    """Time one stop in this process."""
    from connecteur import Server

    rest, _, loop = variant.partition("@")
    engine, _, workers = rest.partition("*")

    def blocked(message: bytes) -> bytes:
        marker.touch()  # seen from any process: the handler is running
        threading.Event().wait()  # for ever: nothing sets it
        return message

    server = Server(blocked, "127.0.0.1:0", engine=engine, workers=int(workers or 1), loop=loop or "asyncio")
    server.start()
    with socket.create_connection(server.address, timeout=60) as client:
        client.sendall(server.framing.encode(b"block"))
        for _ in range(6000):  # at most 60 s
            if marker.exists():
                break
            time.sleep(0.01)
        started = time.monotonic()
        server.stop(timeout=timeout)
        took = time.monotonic() - started
        client.settimeout(5)
        try:
            closed = client.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
    return {"variant": variant, "took": took, "client_saw_close": closed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=2.0, help="the stop's timeout, seconds (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per engine (default 3)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a round, in a child process
    parser.add_argument("--marker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_round(args.one, args.timeout, Path(args.marker))), flush=True)
        return
    print(f"stop(timeout={args.timeout}) with a handler blocked for ever, {args.rounds} rounds each")
    print(f"{'engine':16} {'slowest':>8} {'median':>8} {'fastest':>8}  client saw the close")
    for variant in VARIANTS:
        times, closed = [], []
        for index in range(args.rounds):
            marker = Path(f"/tmp/stop_deadline.{variant}.{index}.{time.monotonic_ns()}")
            command = [sys.executable, __file__, "--one", variant, "--timeout", str(args.timeout)]
            result = subprocess.run([*command, "--marker", str(marker)], capture_output=True, text=True, timeout=120)
            marker.unlink(missing_ok=True)
            measured = json.loads(result.stdout.splitlines()[-1])
            times.append(measured["took"])
            closed.append(measured["client_saw_close"])
        print(
            f"{variant:16} {max(times):7.3f}s {statistics.median(times):7.3f}s {min(times):7.3f}s  "
            f"{'yes' if all(closed) else 'NO'}"
        )


if __name__ == "__main__":
    main()
