"""The state cache bounds memory: ten times the keys, or the timers, in LMDB state take
(almost) no more of the process's own memory (RssAnon; LMDB's mapped pages are the
kernel's to drop), however much was evicted between checkpoints.

Each size runs in a process of its own, with checkpoints while it runs; the peak RssAnon
is sampled by a thread. Sizes are small for CI; ``benchmarks/state.py`` measures millions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

JOB = """
import sys, threading, time
import aioflow as af

kind, n, cache, state = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
peak = [0]


def sample():
    while True:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.01)


threading.Thread(target=sample, daemon=True).start()


class Count(af.KeyedProcessFunction):
    def open(self, ctx):
        self.n = ctx.value_state("n", 0)

    def process_element(self, key, ctx):
        self.n.update(self.n.value() + 1)
        if kind == "timers":  # far in the future: pending at every checkpoint, fired at the end
            ctx.timer_service.register_event_time_timer(2**40 + int(key[1:]))

    def on_timer(self, timestamp, ctx):
        self.n.clear()


fired = af.CollectSink()
app = af.App("bound", state_dir=state, checkpoint_interval=0.2, state_cache_size=cache)
app.source(af.from_iterable(f"k{i}" for i in range(n)), name="keys", timestamps=lambda k: 1,
           watermarks=af.MonotonousTimestamps()).key_by(lambda k: k).process(Count(), name="count").sink(fired)
app.run()
time.sleep(0.05)
print(peak[0] // 1024, flush=True)
"""


def _peak_rss_anon_mb(tmp_path: Path, kind: str, n: int, cache: int, checkpoints: int) -> int:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    state = tmp_path / f"{kind}-{n}"
    done = subprocess.run(
        [sys.executable, str(script), kind, str(n), str(cache), str(state)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    completed = done.stderr.count('"checkpoint complete"')
    assert completed >= checkpoints, f"only {completed} checkpoints: nothing to show about memory between them"
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RssAnon is read from /proc")
@pytest.mark.timeout(300)  # some 20 s of CPU for 300k timers: longer when the tests run in parallel
@pytest.mark.parametrize("kind", ["keys", "timers"])
def test_ten_times_the_state_takes_no_more_memory_than_the_cache_allows(tmp_path: Path, kind: str) -> None:
    small = _peak_rss_anon_mb(tmp_path, kind, 30_000, 1_000, checkpoints=1)
    large = _peak_rss_anon_mb(tmp_path, kind, 300_000, 1_000, checkpoints=5)
    # Unbounded, 270,000 more keys (and timers) would take well over 100 MB: a key, its
    # value and a timer cost hundreds of bytes as Python objects.
    assert large - small < 25, f"{kind}: {small} MB for 30k, {large} MB for 300k"
