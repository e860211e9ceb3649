"""A window from the test process into a lab namespace: Unix sockets relayed to TCP addresses.

Lab namespaces have no link to the root namespace (nothing of the lab can touch the machine's
networks), but a Unix socket is a file, and files are shared by every network namespace. Run
inside a namespace (``Lab.spawn``), this relays each connection to a Unix socket path to a TCP
address *of that namespace*, so the test process reaches the lab's web, PostgreSQL, Redis and
member endpoints without any path that a cut link or a lossy router would change::

    python -m tests.lab.gate /tmp/x/web.sock=10.231.3.2:8756 /tmp/x/.s.PGSQL.5432=10.231.3.2:5432

It prints ``ready`` once every path listens, and exits when its stdin closes (the lab is gone)
or on SIGTERM. A target that refuses the connection closes the client's at once, as the
target itself would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _relay(host: str, port: int):  # type: ignore[no-untyped-def]
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, writer), _pipe(reader, client_writer))

    return handle


async def main(mappings: list[str]) -> None:
    for mapping in mappings:
        path, _, address = mapping.partition("=")
        host, _, port = address.rpartition(":")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        await asyncio.start_unix_server(_relay(host, int(port)), path=path)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: os.read(sys.stdin.fileno(), 4096) or stdin_closed.set())
    await stdin_closed.wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
