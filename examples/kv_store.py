"""A key-value store over a tiny binary protocol: a type byte, then a fixed record in network byte order.

    python examples/kv_store.py serve ADDRESS   # run the server
    python examples/kv_store.py [ADDRESS]       # run the client; without ADDRESS, against its own server

Requests: S key value (set), G key (get), D key (delete). Keys are 8 bytes,
values signed 64-bit integers. Replies: K (done), N (no such key), V value.
"""

import struct
import sys

import connecteur
from connecteur.address import format_address
from connecteur.framing import TypeTagged

KEY, SET, VALUE = struct.Struct("!c8s"), struct.Struct("!c8sq"), struct.Struct("!cq")  # "!": network byte order
FRAMING = TypeTagged({b"S": 16, b"G": 8, b"D": 8, b"K": 0, b"N": 0, b"V": 8})  # type byte -> body length
store: dict[bytes, int] = {}  # shared by every connection: the select engine calls handlers from one thread


def handle(message: bytes) -> bytes:
    # The decoder refuses unknown type bytes. A reply type sent as a request (K, N, V)
    # is too short for KEY: unpack_from raises, and the server closes that connection only.
    kind, key = KEY.unpack_from(message)
    if kind == b"S":
        store[key] = SET.unpack(message)[2]
        return b"K"
    if kind == b"G":
        return VALUE.pack(b"V", store[key]) if key in store else b"N"
    return b"K" if store.pop(key, None) is not None else b"N"


def client(address: object) -> None:
    with connecteur.connect(address, framing=FRAMING, timeout=5) as conn:
        for request in [SET.pack(b"S", b"apples", 12), SET.pack(b"S", b"pears", -3), KEY.pack(b"G", b"pears"),
                        KEY.pack(b"D", b"apples"), KEY.pack(b"G", b"apples")]:  # fmt: skip
            reply = conn.request(request)
            kind, key = KEY.unpack_from(request)
            shown = VALUE.unpack(reply)[1] if reply[:1] == b"V" else reply.decode()
            print(kind.decode(), key.rstrip(b"\0").decode(), "->", shown)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        server = connecteur.Server(handle, sys.argv[2], framing=FRAMING)
        server.serve_forever(ready=lambda: print("listening on", format_address(server.address), flush=True))
    elif len(sys.argv) > 1:
        client(sys.argv[1])
    else:
        with connecteur.Server(handle, "127.0.0.1:0", framing=FRAMING) as server:
            client(server.address)
