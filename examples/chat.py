"""A chat room: ann and bob join, talk, and bob leaves; print what each one receives.

    python examples/chat.py [ADDRESS]

ADDRESS is a running ``connecteur serve ADDRESS --app chat``; without it, the
example starts its own room on 127.0.0.1, port 0. The room is
`connecteur.tools.apps.Chat`: a handler object whose ``received(peer,
message)`` passes each text to the other members with ``peer.send``, and
whose ``closed(peer, error)`` tells them who left.
"""

import sys

import connecteur
from connecteur.tools.apps import Chat


def show(who: str, conn: connecteur.Connection) -> None:
    print(f"{who} got: {conn.recv().decode()}")


def converse(address: object) -> None:
    with connecteur.connect(address, timeout=5) as ann:
        ann.send(b"ann")  # the first message is the member's name
        show("ann", ann)  # * welcome ann; ...
        with connecteur.connect(address, timeout=5) as bob:
            bob.send(b"bob")
            show("bob", bob)  # * welcome bob; here: ann
            show("ann", ann)  # * bob joined
            ann.send(b"hello bob")
            show("bob", bob)  # ann: hello bob
        show("ann", ann)  # * bob left


if __name__ == "__main__":
    if len(sys.argv) > 1:
        converse(sys.argv[1])
    else:
        with connecteur.Server(Chat(), "127.0.0.1:0") as server:  # one room, in this process
            converse(server.address)
