"""An echo server: every message comes back as it was sent.

    python examples/echo_server.py [ADDRESS]

ADDRESS defaults to 127.0.0.1:0 (a free port); the server prints where it
listens, then serves until Ctrl-C or SIGTERM, and stops gracefully: messages
already received are answered before the connections close.
"""

import sys

import connecteur
from connecteur.address import format_address


def echo(message: bytes) -> bytes:
    return message  # the reply; return None to send nothing


def main(address: str) -> None:
    server = connecteur.Server(echo, address)  # engine="select" and LengthPrefixed() by default
    server.serve_forever(ready=lambda: print("listening on", format_address(server.address), flush=True))
    print("stopped after", server.stats.messages_in, "messages")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:0")
