"""An HTTP sink in a few lines: page views per page and minute, POSTed in batches as JSON.

Run it:  python examples/http_sink.py      (or: aioflow run examples/http_sink.py:app)

``JsonPostSink`` is an ``af.AsyncBatchSink``: the base class collects the results into
batches of at most 20 (or whatever came within 0.2 s), keeps two requests in flight, and
retries a batch that failed with a connection error, a timeout or a 5xx/429 answer, with
exponential backoff. Other errors (a 4xx answer) fail the job with an
``af.SinkDeliveryError`` naming the sink. At every checkpoint and at the end of input the
sink waits until the server has acknowledged every batch (at least once).

The results go to ``HTTP_SINK_URL``. Without it, the example starts a tiny HTTP server of
its own on a free loopback port, which prints each batch it receives. The HTTP client is
a minimal HTTP/1.1 POST over asyncio streams, so the example needs nothing beyond
aioflow; a real service would use its usual client (httpx, aiohttp), created in the
sink's ``open()`` and closed in ``close()``. See docs/async-sinks.md.
"""

import asyncio
import contextlib
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import orjson

import aioflow as af

HERE = Path(__file__).parent
MINUTE = 60_000  # ms


async def post_json(url: str, body: bytes) -> int:
    """POST ``body`` (JSON) to ``url`` on a new connection; returns the status code."""
    target = urlsplit(url)
    reader, writer = await asyncio.open_connection(target.hostname, target.port or 80)
    try:
        head = (
            f"POST {target.path or '/'} HTTP/1.1\r\nHost: {target.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        status_line = await reader.readline()  # b"HTTP/1.1 200 OK\r\n"
        await reader.read()  # the rest of the answer, until the server closes
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"POST {url}: no HTTP answer ({status_line!r})")  # retryable: an OSError
    return int(parts[1])


class HttpStatusError(Exception):
    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"POST {url} answered {status}")
        self.status = status


class JsonPostSink(af.AsyncBatchSink):
    """POSTs each batch of records to ``url`` as one JSON array."""

    default_name = "http_sink"

    def __init__(self, url: str) -> None:
        super().__init__(
            max_batch_size=20,
            max_linger=0.2,
            max_in_flight=2,
            send_timeout=10.0,
            retry=af.RetryPolicy(max_attempts=5, initial_delay=0.05),
        )
        self.url = url

    async def send_batch(self, records: list) -> None:
        status = await post_json(self.url, orjson.dumps(records))
        if status >= 300:
            raise HttpStatusError(self.url, status)

    def is_retryable(self, error: Exception) -> bool:
        if isinstance(error, HttpStatusError):
            return error.status == 429 or error.status >= 500  # the server may recover; a 4xx will not
        return super().is_retryable(error)  # connection errors and timeouts


# -- a tiny HTTP server standing in for the store, when HTTP_SINK_URL is not set ------------

received: list[list[dict]] = []  # the batches the demo server got


class _Store(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the name http.server looks for
        batch = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        received.append(batch)
        sys.stdout.write(f"server: {self.path} received {len(batch)} results\n")  # one write: threads interleave
        sys.stdout.flush()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log on stderr


def start_demo_server() -> str:
    """Serve on a free loopback port in a daemon thread; returns the URL to POST to."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Store)
    threading.Thread(target=server.serve_forever, name="demo-http-server", daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/results"


URL = os.environ.get("HTTP_SINK_URL") or start_demo_server()

# -- the pipeline ---------------------------------------------------------------------------

app = af.App("http_sink")

views = app.source(
    af.read_jsonl(HERE / "data" / "page_views.jsonl"),
    name="views",
    timestamps=lambda view: view["ts"],
    watermarks=af.BoundedOutOfOrderness(5_000),
)

per_page = (
    views.map(
        lambda view: {"page": view["page"], "minute": view["ts"] - view["ts"] % MINUTE, "views": 1}, name="one_view"
    )
    .key_by(lambda row: row["page"])
    .window(af.TumblingEventTimeWindows(MINUTE))
    .reduce(lambda a, b: {**a, "views": a["views"] + b["views"]}, name="per_page")
)
per_page.sink(JsonPostSink(URL), name="post_results")

if __name__ == "__main__":
    app.run()
    if received:
        print(f"the server received {sum(map(len, received))} results in {len(received)} batches")
