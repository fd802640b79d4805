"""The worker's HTTP server: routes, errors, and clients that misbehave."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from aioflow._core.worker.http import HttpServer, Response


def _routes() -> dict[str, object]:
    def broken() -> Response:
        raise RuntimeError("route bug")

    return {"/hello": lambda: Response(200, b"hi\n"), "/broken": broken}


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[HttpServer]:
    """A server with a route that answers and one that raises, dropping silent clients after 0.5 s."""
    server = HttpServer(_routes(), port=0, request_timeout=0.5)  # type: ignore[arg-type]
    await server.open()
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        yield server
        group.cancel_scope.cancel()


async def _request(server: HttpServer, raw: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        await stream.send(raw)
        answer = b""
        with anyio.fail_after(10):
            while True:
                try:
                    answer += await stream.receive()
                except anyio.EndOfStream:
                    return answer


async def test_a_route_answers_get_and_head() -> None:
    async with serving() as server:
        answer = await _request(server, b"GET /hello?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK" and body == b"hi\n"
        assert b"Content-Length: 3" in head and b"Connection: close" in head
        assert (await _request(server, b"HEAD /hello HTTP/1.1\r\n\r\n")).endswith(b"Connection: close\r\n\r\n")


async def test_errors_have_their_status() -> None:
    async with serving() as server:
        assert (await _request(server, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 Not Found")
        not_allowed = await _request(server, b"POST /hello HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert not_allowed.startswith(b"HTTP/1.1 405 Method Not Allowed") and b"Allow: GET, HEAD" in not_allowed
        assert (await _request(server, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 Bad Request")
        assert (await _request(server, b"GET /" + b"x" * 20_000)).startswith(b"HTTP/1.1 431")
        failed = await _request(server, b"GET /broken HTTP/1.1\r\n\r\n")
        assert failed.startswith(b"HTTP/1.1 500") and failed.endswith(b"internal error: RuntimeError\n")
        assert (await _request(server, b"GET /hello HTTP/1.1\r\n\r\n")).endswith(b"hi\n")  # still serving


async def test_a_silent_or_vanishing_client_does_not_hold_the_server() -> None:
    async with serving() as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as silent:
            assert (await _request(server, b"GET /hello HTTP/1.1\r\n\r\n")).endswith(b"hi\n")
            with anyio.fail_after(10):  # dropped after request_timeout
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await silent.receive()
        gone = await anyio.connect_tcp("127.0.0.1", server.port)
        await gone.send(b"GET /hel")
        await gone.aclose()
        assert (await _request(server, b"GET /hello HTTP/1.1\r\n\r\n")).endswith(b"hi\n")


async def test_a_port_in_use_is_an_os_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            await HttpServer({}, port=taken.getsockname()[1]).open()


def test_a_worker_whose_port_is_taken_exits_1_saying_so(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(
        "import aioflow as af\napp = af.App('busy')\napp.source([1]).sink(af.CollectSink())\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "aioflow", "run", "job.py:app", "--log-format", "json", "--http-port", port],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    (line,) = [json.loads(text) for text in result.stderr.splitlines() if "cannot start the http server" in text]
    assert line["port"] == int(port) and line["app"] == "busy" and line["level"] == "error"
    assert '"job started"' not in result.stderr
