"""The asyncio twin: an async handler served inside a running loop, and the awaitable client.

    python examples/aio_echo.py [ADDRESS]   # an echo server; without ADDRESS, its own on 127.0.0.1

`aio.serve()` runs the asyncio engine on the current loop; `aio.connect()`
has the blocking client's names, awaitable. Replies leave in the order the
requests came, even when an async handler finishes them out of order.
"""

import asyncio
import sys

from connecteur import aio


async def slow_echo(message: bytes) -> bytes:
    await asyncio.sleep(0.01 * len(message))  # longer messages take longer...
    return message


async def talk(address: object) -> None:
    async with await aio.connect(address, timeout=5) as conn:
        await conn.send_many([b"a much longer message", b"short"])
        print((await conn.recv()).decode())  # ...but replies keep their order
        print((await conn.recv()).decode())
        print((await conn.request(b"bye")).decode())


async def main() -> None:
    if len(sys.argv) > 1:
        await talk(sys.argv[1])
    else:
        async with await aio.serve(slow_echo, "127.0.0.1:0") as server:
            await talk(server.address)


if __name__ == "__main__":
    asyncio.run(main())
