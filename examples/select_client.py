"""A client inside a select loop: three non-blocking connects, a request on each, the replies as they come.

    python examples/select_client.py [ADDRESS]   # e.g. `connecteur serve ADDRESS --app upper`; default: its own

`connect_nowait()` returns at once; the socket shows writable once the
connection is made or has failed, and `finish_connect()` says which. Messages
are framed with the sans-I/O framing (`encode`, a decoder's `feed`), so
nothing here blocks: a partial send or a partial message waits for the next event.
"""

import selectors
import sys
from types import SimpleNamespace

import connecteur
from connecteur.framing import LengthPrefixed

FRAMING = LengthPrefixed()


def run(address: object, count: int = 3) -> None:
    selector = selectors.DefaultSelector()
    for n in range(count):
        # outgoing: framed bytes not sent yet; decoder: set once connected
        exchange = SimpleNamespace(number=n, outgoing=FRAMING.encode(b"hello %d" % n), decoder=None)
        selector.register(connecteur.connect_nowait(address), selectors.EVENT_WRITE, exchange)
    while selector.get_map():
        events = selector.select(timeout=5)
        if not events:
            raise SystemExit("timed out")
        for key, mask in events:
            sock, exchange = key.fileobj, key.data
            if mask & selectors.EVENT_WRITE:
                if exchange.decoder is None:  # first writable: the connect has finished, well or not
                    connecteur.finish_connect(sock)  # raises ConnectionRefusedError & co.
                    exchange.decoder = FRAMING.decoder()
                exchange.outgoing = exchange.outgoing[sock.send(exchange.outgoing) :]  # maybe only part of it
                if not exchange.outgoing:
                    selector.modify(sock, selectors.EVENT_READ, exchange)
            elif mask & selectors.EVENT_READ:
                data = sock.recv(65536)
                replies = exchange.decoder.feed(data) if data else exchange.decoder.eof()  # eof(): raises if cut
                for reply in replies:
                    print(f"connection {exchange.number}: {reply.decode()}")
                if replies or not data:
                    selector.unregister(sock)
                    sock.close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(sys.argv[1])
    else:
        with connecteur.Server(lambda message: message.upper(), "127.0.0.1:0") as server:
            run(server.address)
