"""A local HTTP service for the ``async_http`` workload, in a process of its own.

    python benchmarks/http_service.py      # prints its port, then serves until killed

``GET /<i>`` answers ``{"i": i, "double": 2 * i}`` after ``CALL_S`` (10 ms), like the
simulated call of ``async_io``, over HTTP/1.1 with keep-alive: one asyncio server, so that
its CPU time is neither side's.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from workloads import CALL_S


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            i = int(path.rsplit(b"/", 1)[-1])
            await asyncio.sleep(CALL_S)
            body = orjson.dumps({"i": i, "double": 2 * i})
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(_serve_connection, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
