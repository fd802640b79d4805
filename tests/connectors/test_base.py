"""ErrorPolicy: what a source does with records it cannot decode."""

from __future__ import annotations

import structlog

from aioflow._core.connectors.base import ErrorPolicy


def test_skip_logs_the_first_bad_record_then_one_summary_per_interval() -> None:
    now = 0.0
    policy = ErrorPolicy("skip", "src", log_interval=10, clock=lambda: now)
    with structlog.testing.capture_logs() as logs:
        for second in range(25):  # one bad record a second
            now = float(second)
            policy.handle(ValueError("bad json"), f"f:{second}", b"\xffoops", [])
        policy.close()
        policy.close()  # nothing left to report: no second final line
    assert logs[0] == {
        "event": "skipped bad record",
        "log_level": "warning",
        "source": "src",
        "location": "f:0",
        "error": "bad json",
        "raw": "\ufffdoops",
        "skipped_total": 1,
    }
    assert [(e["event"], e["skipped"], e["skipped_total"], e["last_location"]) for e in logs[1:]] == [
        ("skipped bad records", 10, 11, "f:10"),  # t=10: the records of t=1..10
        ("skipped bad records", 10, 21, "f:20"),
        ("skipped bad records", 4, 25, "f:24"),  # at close: t=21..24
    ]
    assert policy.skipped == 25


def test_close_logs_nothing_when_every_skip_was_reported() -> None:
    policy = ErrorPolicy("skip", "src", clock=lambda: 0.0)
    with structlog.testing.capture_logs() as logs:
        policy.close()
        policy.handle(ValueError("bad"), "f:1", b"x", [])
        policy.close()
    assert [entry["event"] for entry in logs] == ["skipped bad record"]
