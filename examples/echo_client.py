"""An echo client: send each argument as a message, print each reply.

    python examples/echo_client.py [ADDRESS [MESSAGE ...]]

With no ADDRESS it starts its own echo server on 127.0.0.1, port 0.
"""

import sys

import connecteur


def talk(address: object, messages: list[str]) -> None:
    with connecteur.connect(address, timeout=5) as conn:  # every wait is bounded: 5 s
        for text in messages:
            reply = conn.request(text.encode())  # send, then receive the next whole message
            print(reply.decode())
        conn.send_many(b"pipelined %d" % i for i in range(3))  # one write, three messages
        for _ in range(3):
            print(conn.recv().decode())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        talk(sys.argv[1], sys.argv[2:] or ["hello", "world"])
    else:
        with connecteur.Server(lambda message: message, "127.0.0.1:0") as server:
            talk(server.address, ["hello", "world"])
