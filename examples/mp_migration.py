"""Migrating from multiprocessing.connection: the same calls, but no pickle, and every wait bounded.

    python examples/mp_migration.py [ADDRESS]   # a server that sums lists; without ADDRESS, its own

    # before: send() pickles, recv() unpickles whatever the peer sent
    conn = multiprocessing.connection.Client(address)
    ready = multiprocessing.connection.wait(connections, timeout)
    # after: a codec that builds only JSON values, and a timeout on every call
    conn = connecteur.connect(address, codec=Json(), timeout=5)
    ready = connecteur.wait(connections, timeout)

Without an authkey, multiprocessing.connection frames bytes with a 4-byte
big-endian length, which is `LengthPrefixed()`: an old client that uses
send_bytes() can talk to the new server while you migrate.
"""

import sys
from multiprocessing.connection import Client

import connecteur
from connecteur.address import parse_address
from connecteur.codecs import Json


def run(address: object) -> None:
    connections = [connecteur.connect(address, codec=Json(), timeout=5) for _ in range(3)]
    for n, conn in enumerate(connections):
        conn.send(list(range(10 * n)))  # a JSON list out, a JSON object back
    waiting = list(connections)
    while waiting:
        ready = connecteur.wait(waiting, timeout=5)  # also sees replies already read into the process
        if not ready:
            raise SystemExit("timed out")
        for conn in ready:
            print(f"connection {connections.index(conn)}: {conn.recv()}")
            waiting.remove(conn)
            conn.close()
    tcp = parse_address(address)
    with Client((tcp.host, tcp.port), authkey=None) as old:  # the old client, unchanged
        old.send_bytes(b"[1, 2, 3]")
        print("multiprocessing client:", old.recv_bytes().decode())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(sys.argv[1])
    else:
        with connecteur.Server(lambda numbers: {"sum": sum(numbers)}, "127.0.0.1:0", codec=Json()) as server:
            run(server.address)
