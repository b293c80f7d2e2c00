"""An HTTP/1.0-style exchange: the client half-closes after its request; the reply ends when the server closes.

    python examples/http10.py [HOST:PORT [PATH]]   # without HOST:PORT, against its own tiny server

Both directions use `CloseDelimited`: a message is everything its sender
sends before ending its side of the stream. The server's handler runs once,
at the client's half-close, and the server closes once its reply is sent.
"""

import sys

import connecteur
from connecteur.address import parse_address
from connecteur.framing import CloseDelimited


def handle(request: bytes) -> bytes:
    path = request.split(b"\r\n", 1)[0].split(b" ")[1]  # from the request line: GET /path HTTP/1.0
    body = b"you asked for %s\n" % path
    return b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def get(address: object, path: str) -> None:
    host = parse_address(address).host.encode()
    with connecteur.connect(address, framing=CloseDelimited(), timeout=10) as conn:
        conn.send(b"GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path.encode(), host))
        conn.shutdown_write()  # "I have finished sending": the server sees EOF, we can still read
        reply = conn.recv()  # everything the server sends until it closes
    head, _, body = reply.partition(b"\r\n\r\n")
    print(head.split(b"\r\n")[0].decode())  # the status line
    print(body.decode(errors="replace"), end="")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        get(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "/")
    else:
        with connecteur.Server(handle, "127.0.0.1:0", framing=CloseDelimited()) as server:
            get(server.address, "/hello")
