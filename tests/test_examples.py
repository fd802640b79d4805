"""Every example under examples/ runs through the CLI and prints what it promises."""

from __future__ import annotations

import gc
import logging
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import orjson
import pytest

import aioflow as af
from aioflow._core.cli import load_app
from aioflow.testing import replace_sink, replace_source, run_collect

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(
    p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("kafka_")
)  # those: tests/kafka


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder of the test's own holding a copy of examples/ (the scripts and their data,
    not what earlier runs wrote): the examples write into examples/out/, which tests
    running in parallel must not share."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("out", "__pycache__"))
    return tmp_path


def run_example(folder: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``aioflow run examples/<name>:app`` in ``folder`` (see :func:`folder`)."""
    return subprocess.run(
        [sys.executable, "-m", "aioflow", "run", f"examples/{name}:app", "--log-format", "json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(folder: Path, name: str) -> None:
    result = run_example(folder, name)
    assert result.returncode == 0, result.stderr
    assert '"event": "job finished"' in result.stderr


def test_wordcount_prints_running_counts_ending_in_totals(folder: Path) -> None:
    result = run_example(folder, "wordcount.py")
    last: dict[str, int] = {}
    for line in result.stdout.splitlines():
        word, count = eval(line)  # the PrintSink prints tuples with str()
        last[word] = count
    text = (ROOT / "examples" / "data" / "words.txt").read_text().lower()
    import re

    assert last == dict(Counter(re.findall(r"[a-z']+", text)))


def test_orders_example_writes_big_orders_and_dead_letters(folder: Path) -> None:
    result = run_example(folder, "orders.py")
    assert result.returncode == 0, result.stderr
    out = folder / "examples" / "out"
    big = [orjson.loads(line) for line in (out / "big_orders.jsonl").read_bytes().splitlines()]
    assert big and all(order["amount"] > 50 for order in big)
    assert len(result.stdout.splitlines()) == len(big)
    dead = [orjson.loads(line) for line in (out / "dead_letters.jsonl").read_bytes().splitlines()]
    assert [d["location"].rsplit(":", 1)[1] for d in dead] == ["18"]
    assert dead[0]["raw"] == '{"order": 17.5, "user": "eve", "amount": '  # BadRecord.raw decoded by the example


def test_http_sink_posts_every_result_in_batches_and_retries_a_503(folder: Path) -> None:
    """The example against a server of the test's own, whose first answer is a 503."""
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    batches: list[list[dict]] = []
    answers = [503]  # then 200s

    class Store(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = answers.pop() if answers else 200
            if status == 200:
                batches.append(orjson.loads(body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Store)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/results"
        result = subprocess.run(
            [sys.executable, "-m", "aioflow", "run", "examples/http_sink.py:app", "--log-format", "json"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HTTP_SINK_URL": url},
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the example's own server did not start
    assert '"event": "sink send failed: retrying"' in result.stderr and "answered 503" in result.stderr
    results = [row for batch in batches for row in batch]
    assert all(1 <= len(batch) <= 20 for batch in batches)
    assert len({(row["page"], row["minute"]) for row in results}) == len(results)  # each window once
    assert sum(row["views"] for row in results) == 600  # every page view of examples/data/page_views.jsonl


def test_digits_scoring_reports_per_window_what_the_model_predicts_for_each_image(folder: Path) -> None:
    """The streamed, batched scoring agrees with one predict over every image."""
    import ast

    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    result = run_example(folder, "digits_scoring.py")
    assert result.returncode == 0, result.stderr
    windows = [ast.literal_eval(line) for line in result.stdout.splitlines()]
    digits = load_digits()
    half = len(digits.images) // 2
    model = SVC(gamma=0.001).fit(digits.data[:half], digits.target[:half])
    correct = model.predict(digits.data[half:]) == digits.target[half:]
    expected = [
        {
            "start": start,
            "images": len(chunk),
            "correct": int(chunk.sum()),
            "accuracy": round(chunk.sum() / len(chunk), 3),
        }
        for start, chunk in ((i * 50, correct[i : i + 200]) for i in range(0, len(correct), 200))
    ]
    assert windows == expected


def test_enrichment_runs_twice_in_one_process_and_closes_its_sessions(caplog: pytest.LogCaptureFixture) -> None:
    """Its aiohttp session is made in the job's event loop and closed: a second run in the
    same process calls the service as the first did, and no session is left unclosed."""
    app = load_app(f"{ROOT / 'examples' / 'enrichment.py'}:app")
    module = sys.modules["_aioflow_target_enrichment"]
    clicks = [click for click in module.CLICKS if click["user"] != "slowpoke"]  # no 0.5 s timeouts
    replace_source(app, "clicks", af.from_iterable(clicks))
    for sink in ("enriched", "dead_letters"):
        replace_sink(app, sink, af.CollectSink())
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(2):
            enriched, failed = run_collect(module.enriched, module.enriched.get_side_output(module.FAILED))
            assert [e["click"] for e in enriched] == [c["click"] for c in clicks if c["user"] != "mallory"]
            assert {f.value["user"] for f in failed} == {"mallory"}
        gc.collect()  # an unclosed session says so when it is collected
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
    assert [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()] == []


def test_enrichment_enriches_every_click_but_those_the_service_fails_for_good(folder: Path) -> None:
    result = run_example(folder, "enrichment.py")
    assert result.returncode == 0, result.stderr
    out = folder / "examples" / "out"
    enriched = [orjson.loads(line) for line in (out / "enriched.jsonl").read_bytes().splitlines()]
    dead = [orjson.loads(line) for line in (out / "enrichment_dead_letters.jsonl").read_bytes().splitlines()]
    failing = {"mallory", "slowpoke"}
    assert [e["click"] for e in enriched] == [i for i in range(600) if i % 50 < 48]  # in input order
    assert all(e["plan"] in ("pro", "free") and e["user"] not in failing for e in enriched)
    assert sorted(d["click"]["click"] for d in dead) == [i for i in range(600) if i % 50 >= 48]
    for letter in dead:
        assert letter["attempts"] == 3
        if letter["click"]["user"] == "slowpoke":
            assert letter["error"] == "timed out after 0.5 s (call 3 of 3)"
        else:
            assert "ClientResponseError: 500, message='Internal Server Error'" in letter["error"]
