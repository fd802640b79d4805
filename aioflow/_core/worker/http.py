"""The worker's HTTP endpoints: ``/health`` and ``/metrics``, on a minimal HTTP/1.1 server.

The server answers ``GET`` (and ``HEAD``) with what a route computes from memory, one
request per connection (``Connection: close``); any other path is a 404 and any other
method a 405. It runs in the worker's task group next to the job and never waits on the
job: a route reads counters and statistics, it does not await anything. A client that
is slow to send its request is dropped after ``request_timeout`` seconds; a failing
route answers 500 and is logged (at most once a minute); nothing a client does can
fail the job.
"""

from __future__ import annotations

import http
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream

from aioflow._core.worker.health import HealthCheck
from aioflow._core.worker.metrics import CONTENT_TYPE, MetricsRegistry

__all__ = ["DEFAULT_HOST", "HttpServer", "Response", "Route", "worker_routes"]

log = structlog.get_logger("aioflow.worker")

#: Where the server listens unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"

_MAX_HEAD = 16 * 1024  # bytes of request line and headers
_ERROR_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


#: A route computes its response from memory, without awaiting.
Route = Callable[[], Response]


def worker_routes(health: HealthCheck, metrics: MetricsRegistry) -> dict[str, Route]:
    """``/health`` (JSON; 200 or 503) and ``/metrics`` (Prometheus text format)."""

    def health_route() -> Response:
        answer = health()
        return Response(answer.status_code, json.dumps(answer.body).encode() + b"\n", "application/json")

    def metrics_route() -> Response:
        return Response(200, metrics.render().encode(), CONTENT_TYPE)

    return {"/health": health_route, "/metrics": metrics_route}


class HttpServer:
    """Serves ``routes`` on ``host:port`` (port 0: a free one, see :attr:`port`).

    ``await server.open()`` binds (raising :class:`OSError` if it cannot) and logs
    ``http server started`` with the port; ``await server.serve()`` then answers requests
    until cancelled.
    """

    def __init__(
        self, routes: Mapping[str, Route], *, host: str = DEFAULT_HOST, port: int = 0, request_timeout: float = 10.0
    ) -> None:
        self.routes = dict(routes)
        self.host = host
        self.port = port
        self.request_timeout = request_timeout
        self._listener: anyio.abc.Listener[SocketStream] | None = None
        self._last_error_log: float | None = None

    async def open(self) -> int:
        """Bind the listening socket; returns the port (the one picked, for port 0)."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self._listener = listener
        self.port = listener.extra(SocketAttribute.local_port)
        log.info("http server started", host=self.host, port=self.port, paths=sorted(self.routes))
        return self.port

    async def serve(self) -> None:
        """Answer requests until cancelled; closes the listener then."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("HttpServer.serve() before open()")
        try:
            while True:
                try:
                    await listener.serve(self._handle)
                except OSError as exc:  # accept() failed (out of file descriptors): retry, never fail the job
                    self._log_error("http server accept failed", exc)
                    await anyio.sleep(1.0)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def _handle(self, stream: SocketStream) -> None:
        try:
            async with stream:
                with anyio.move_on_after(self.request_timeout):
                    head = await self._read_head(stream)
                    if head is not None:
                        await stream.send(self._answer(head))
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            pass  # the client went away
        except Exception as exc:
            self._log_error("http request failed", exc)

    @staticmethod
    async def _read_head(stream: SocketStream) -> bytes | None:
        """The request line and headers; ``None`` if the client closed first."""
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            if len(data) > _MAX_HEAD:
                return data  # answered 431 below
            try:
                data += await stream.receive(4096)
            except anyio.EndOfStream:
                return data if data else None
        return data

    def _answer(self, head: bytes) -> bytes:
        if len(head) > _MAX_HEAD:
            return _encode(Response(431, b"request header too large\n"), head_only=False)
        line = head.split(b"\n", 1)[0].strip()
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _encode(Response(400, b"bad request\n"), head_only=False)
        method, target = parts[0], parts[1].decode("latin-1")
        path = target.split("?", 1)[0]
        route = self.routes.get(path)
        if route is None:
            known = ", ".join(sorted(self.routes))
            return _encode(Response(404, f"not found: {path}; try {known}\n".encode()), head_only=method == b"HEAD")
        if method not in (b"GET", b"HEAD"):
            return _encode(Response(405, b"method not allowed: use GET\n"), head_only=False, allow=True)
        try:
            response = route()
        except Exception as exc:
            self._log_error("http route failed", exc, path=path)
            response = Response(500, f"internal error: {type(exc).__name__}\n".encode())
        return _encode(response, head_only=method == b"HEAD")

    def _log_error(self, event: str, exc: BaseException, **fields: object) -> None:
        now = time.monotonic()
        if self._last_error_log is not None and now - self._last_error_log < _ERROR_LOG_INTERVAL:
            return
        self._last_error_log = now
        log.warning(event, error=f"{type(exc).__name__}: {exc}", exc_info=exc, **fields)


def _encode(response: Response, *, head_only: bool, allow: bool = False) -> bytes:
    phrase = http.HTTPStatus(response.status).phrase
    headers = [
        f"HTTP/1.1 {response.status} {phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if allow:
        headers.append("Allow: GET, HEAD")
    head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
