"""Clicks enriched from an HTTP service: many calls at once, timeouts, retries, dead letters.

Run it:

    aioflow run examples/enrichment.py:app

The example starts a small profile service of its own on a free loopback port (a thread
standing in for a real service, 10 ms a request). Each click is enriched with its user's
profile from ``GET /profiles/<user>``, through ``map_async``:

- an ``af.AsyncFunction`` owns the aiohttp session: made in ``open`` (in the job's event
  loop), closed in ``close`` when the job is done with it;
- up to 50 requests at once (``capacity=50``): 600 clicks take about a tenth of a second
  of requests instead of six seconds one at a time;
- each request may take 0.5 s (``timeout``), and a failed one is tried twice more
  (``retry``) when it timed out or the service answered 5xx (``retry_if``);
- what still fails goes to a dead-letter side output (``on_error=FAILED``) as
  ``af.FailedCall`` records: here the clicks of ``mallory`` (the service answers 500)
  and of ``slowpoke`` (it answers after 2 s).

Enriched clicks go to ``examples/out/enriched.jsonl``, dead letters to
``examples/out/enrichment_dead_letters.jsonl`` (the click, the error, the attempts).
Needs aiohttp (``pip install aiohttp``; the dev install has it).
"""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import orjson

import aioflow as af

OUT = Path(__file__).parent / "out"
USERS = [f"user{i}" for i in range(48)] + ["mallory", "slowpoke"]
CLICKS = [{"click": i, "user": USERS[i % len(USERS)], "page": f"/p{i % 7}"} for i in range(600)]
FAILED = af.OutputTag("failed")


class ProfileService(BaseHTTPRequestHandler):
    """``GET /profiles/<user>``: the user's profile as JSON, after 10 ms."""

    def do_GET(self):  # noqa: N802 - the http.server API
        user = self.path.rsplit("/", 1)[-1]
        time.sleep(2.0 if user == "slowpoke" else 0.010)
        status, body = (
            (500, b"internal error")
            if user == "mallory"
            else (200, orjson.dumps({"user": user, "plan": "pro" if sum(map(ord, user)) % 3 == 0 else "free"}))
        )
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 50 connections at once: more than the default backlog of 5

    def handle_error(self, request, client_address):
        """A client that gave up (a request timed out) closed its connection: not an error."""


def start_service() -> str:
    """Serve profiles on a free loopback port, in a daemon thread; returns the base URL."""
    server = Server(("127.0.0.1", 0), ProfileService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


SERVICE = start_service()


class WithProfile(af.AsyncFunction):
    """Adds the click's user's plan, from the profile service.

    The aiohttp session (one connection pool per subtask, as large as the calls it makes
    at once) is made in ``open``, in the job's event loop, and closed in ``close`` when the
    subtask ends: a session made at import time would be bound to the first run's event
    loop, fail every call of a second run in the same process, and never be closed.
    """

    async def open(self, ctx):
        connector = aiohttp.TCPConnector(limit=ctx.concurrency)
        self.session = aiohttp.ClientSession(base_url=SERVICE, connector=connector)

    async def __call__(self, click):
        async with self.session.get(f"/profiles/{click['user']}", raise_for_status=True) as response:
            profile = await response.json(content_type=None)
        return {**click, "plan": profile["plan"]}

    async def close(self):
        await self.session.close()


def worth_retrying(error):
    """Timeouts, lost connections and the service's 5xx answers; not a 404 or a bug."""
    if isinstance(error, aiohttp.ClientResponseError):
        return error.status >= 500
    return isinstance(error, (TimeoutError, aiohttp.ClientConnectionError))


app = af.App("enrichment")
clicks = app.source(CLICKS, name="clicks")
enriched = clicks.map_async(
    WithProfile,
    capacity=50,
    timeout=0.5,
    retry=af.RetryPolicy(max_attempts=3, initial_delay=0.05),
    retry_if=worth_retrying,
    on_error=FAILED,
    name="enrich",
)
enriched.sink(af.FileSink(str(OUT / "enriched.jsonl")), name="enriched")
enriched.get_side_output(FAILED).map(
    lambda failed: {"click": failed.value, "error": failed.error, "attempts": failed.attempts},
    name="dead_letter",
).sink(af.FileSink(str(OUT / "enrichment_dead_letters.jsonl")), name="dead_letters")

if __name__ == "__main__":
    app.run()
