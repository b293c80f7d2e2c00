"""The server of the fault soak (`test_soak.py`), run in a process of its own.

``python -m tests.engines._soak_server ENGINE STORE`` serves on 127.0.0.1, port
0, prints its address as a JSON line, answers each ``stats`` line on its
standard input with its counters, and stops gracefully on SIGTERM
(`Server.serve_forever`); it then writes ``STORE/verdict.json``.

The wire: a message is ``client_id u32 | seq u64 | payload | crc32 u32`` (the
checksum covers all before it); the reply is ``seq u64 | status u8``.

Exactly once, with reconnects: a client resends every message not yet acked,
in order, on its next connection, while the old connection may still be
delivering on the server side (another thread, or another process with the
processes engine). So the last delivered sequence number of each client lives
in a file shared by every process: ``STORE/<client_id>.log``, fixed-size
records ``seq u64 | size u32 | crc32(payload) u32``, appended under an
exclusive ``flock``; its last record is the last delivered seq. ``seq ==
last + 1`` delivers (appends), ``seq <= last`` is a resend (acked, not
delivered again), ``seq > last + 1`` is a gap; a bad checksum is corruption.
Gaps and corruption go to ``STORE/errors.log``, one JSON line each.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import struct
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, Final

from connecteur import Server

HEADER: Final = struct.Struct("!IQ")  # client_id, seq
CHECK: Final = struct.Struct("!I")  # crc32 of header + payload
ACK: Final = struct.Struct("!QB")  # seq, status
RECORD: Final = struct.Struct("!QII")  # seq, payload size, crc32 of the payload

DELIVERED: Final = 0
DUPLICATE: Final = 1
CORRUPT: Final = 2
GAP: Final = 3

IDLE_TIMEOUT: Final = 2.0
"""Seconds: closes the server side of connections the proxy blackholed."""
MESSAGE_TIMEOUT: Final = 3.0
"""Seconds: a message cut by a blackhole in its middle. A 4 KiB message cut
into 1-byte fragments by a busy proxy takes well under that."""


def encode(client_id: int, seq: int, payload: bytes) -> bytes:
    """One message of the soak, checksum included."""
    body = HEADER.pack(client_id, seq) + payload
    return body + CHECK.pack(zlib.crc32(body))


def read_log(path: Path) -> list[tuple[int, int, int]]:
    """The delivery records of one client: (seq, size, crc32), in delivery order."""
    data = path.read_bytes()
    if len(data) % RECORD.size:
        raise AssertionError(f"{path} holds a torn record ({len(data)} bytes)")
    return list(RECORD.iter_unpack(data))


def read_errors(store: Path) -> list[dict[str, Any]]:
    """What the handler recorded as corruption or gaps."""
    path = store / "errors.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class Deliver:
    """The handler: deliver each message exactly once, whatever connection it comes by."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def __call__(self, message: bytes) -> bytes:
        message = bytes(message)
        if len(message) < HEADER.size + CHECK.size:
            self._error("corrupt", size=len(message))
            return ACK.pack(0, CORRUPT)
        body, (check,) = message[: -CHECK.size], CHECK.unpack(message[-CHECK.size :])
        client_id, seq = HEADER.unpack_from(body)
        if zlib.crc32(body) != check:
            self._error("corrupt", client_id=client_id, seq=seq, size=len(message))
            return ACK.pack(seq, CORRUPT)
        payload = body[HEADER.size :]
        fd = os.open(self.store / f"{client_id}.log", os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close()
            size = os.fstat(fd).st_size
            last = RECORD.unpack(os.pread(fd, RECORD.size, size - RECORD.size))[0] if size else 0
            if seq == last + 1:
                os.write(fd, RECORD.pack(seq, len(payload), zlib.crc32(payload)))
                status = DELIVERED
            elif seq <= last:
                status = DUPLICATE
            else:
                status = GAP
        finally:
            os.close(fd)
        if status == GAP:
            self._error("gap", client_id=client_id, seq=seq, last=last)
        return ACK.pack(seq, status)

    def _error(self, kind: str, **details: int) -> None:
        line = json.dumps({"kind": kind, "pid": os.getpid(), **details}) + "\n"
        fd = os.open(self.store / "errors.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def answer_stats(server: Server) -> None:
    """Print the server's counters for each line read, until standard input closes."""
    for _ in sys.stdin:
        print(json.dumps(dataclasses.asdict(server.stats)), flush=True)


def main(engine: str, store: Path) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    server = Server(
        Deliver(store), "127.0.0.1:0", engine=engine, idle_timeout=IDLE_TIMEOUT, message_timeout=MESSAGE_TIMEOUT
    )

    def ready() -> None:
        print(json.dumps(server.address[:2]), flush=True)
        threading.Thread(target=answer_stats, args=(server,), name="stats", daemon=True).start()

    server.serve_forever(ready=ready)
    verdict = {"stats": dataclasses.asdict(server.stats), "errors": read_errors(store), "pid": os.getpid()}
    (store / "verdict.tmp").write_text(json.dumps(verdict))
    os.replace(store / "verdict.tmp", store / "verdict.json")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
