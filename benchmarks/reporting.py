"""What a measured child process reports, and how the harness reads it.

A child prints one line of JSON on stdout, after :data:`RESULT_PREFIX`. This module
imports only the standard library and orjson: floors import it, and their start-up and
peak RSS must stay their own.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass

import orjson

__all__ = ["CHECKPOINT_COMPLETE", "RESULT_PREFIX", "ChildFailed", "Marks", "completed_checkpoints", "peak_rss_mb"]

#: Marks the line of stdout on which a child process reports its measurement.
RESULT_PREFIX = "@@benchmark-result "
#: The log event of a completed checkpoint (aioflow logs JSON lines to a child's stderr).
CHECKPOINT_COMPLETE = "checkpoint complete"


class ChildFailed(Exception):
    """A measurement process failed or reported nothing (or a wrong output)."""


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, not ``ru_maxrss``, which survives ``exec``
    and so would report the parent's peak whenever that is the larger one.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def completed_checkpoints(log: str) -> list[int]:
    """The durations (ms) of the checkpoints a run's JSON log lines report as complete."""
    durations = []
    for line in log.splitlines():
        if CHECKPOINT_COMPLETE in line:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("event") == CHECKPOINT_COMPLETE:
                durations.append(int(event["ms"]))
    return durations


@dataclass
class Marks:
    """What a process of the ``kafka`` workload records, floor or aioflow alike: the
    wall-clock times (``time.time()``, comparable with the harness's clock) at which the
    first input records were in hand, and at which the first and the last batch of
    results were acknowledged by the broker; and how many of each there were.

    Both sides mark per batch (never per record), at the same points.
    """

    first_record: float | None = None
    first_result: float | None = None
    last_result: float | None = None
    records: int = 0
    results: int = 0

    def read(self, records: int) -> None:
        """``records`` input records were fetched."""
        if records:
            if self.first_record is None:
                self.first_record = time.time()
            self.records += records

    def delivered(self, results: int) -> None:
        """The broker acknowledged a batch of ``results`` results."""
        if results:
            now = time.time()
            if self.first_result is None:
                self.first_result = now
            self.last_result = now
            self.results += results

    def report(self) -> None:
        """Print the marks, the CPU time and the peak RSS of this process on the result line."""
        result = asdict(self) | {"cpu_seconds": time.process_time(), "peak_rss_mb": peak_rss_mb()}
        print(RESULT_PREFIX + orjson.dumps(result).decode(), flush=True)
