"""Namespaced timer queues (a window operator's timers), over memory and over LMDB with a
tiny cache, so that trimming spills timers to the store and they fire from there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioflow._core.runtime.keygroups import key_group
from aioflow._core.state.durable import LmdbBackend
from aioflow._core.state.memory import MemoryBackend
from aioflow._core.windows.assigners import WINDOW_KEYS, TimeWindow

from .conftest import Durable

W1, W2, W3 = TimeWindow(0, 10), TimeWindow(10, 20), TimeWindow(20, 30)


def _groups(backend: MemoryBackend | LmdbBackend, queue: Any, limit: int) -> list[tuple[int, Any, list[Any]]]:
    """What ``pop_due_groups`` yields, each group's keys consumed before the next, with a
    trim between groups as the window operator may do."""
    out = []
    for timestamp, namespace, keys in queue.pop_due_groups(limit):
        out.append((timestamp, namespace, list(keys)))
        backend.trim()
    return out


def test_timers_fire_a_window_at_a_time_in_timestamp_order(
    make_backend: Callable[[], MemoryBackend | LmdbBackend],
) -> None:
    backend = make_backend()
    timers = backend.namespaced_timers("w", "window-event-timers", namespaces=WINDOW_KEYS)
    timers.add_all(19, W2, ["b", "a"])
    timers.add(9, "a", W1)
    timers.add(9, "b", W1)
    timers.add(9, "a", W1)  # once per (timestamp, key, window)
    timers.add(19, "c", W2)
    timers.add(19, "a", W1)  # a cleanup timer of W1 at W2's end: another namespace, same time
    timers.add_all(29, W3, ["a"])
    backend.trim()  # with a tiny cache: most of them now fire from the store
    assert timers.next_time() == 9

    fired = _groups(backend, timers, 19)

    times = [t for t, _, _ in fired]
    assert times == sorted(times) and all(keys for _, _, keys in fired)
    if isinstance(backend, MemoryBackend):  # all cached: namespaces in registration order, each whole
        assert [(t, ns, keys) for t, ns, keys in fired] == [
            (9, W1, ["a", "b"]),
            (19, W2, ["b", "a", "c"]),
            (19, W1, ["a"]),
        ]
    else:  # stored ones fire in key order: a window's keys may come in several runs
        assert len(fired) >= 3
    assert sorted((t, ns, key) for t, ns, keys in fired for key in keys) == [
        (9, W1, "a"),
        (9, W1, "b"),
        (19, W1, "a"),
        (19, W2, "a"),
        (19, W2, "b"),
        (19, W2, "c"),
    ]
    assert all(isinstance(ns, tuple) and tuple(ns) in {tuple(W1), tuple(W2)} for _, ns, _ in fired)
    assert timers.next_time() == 29
    assert _groups(backend, timers, 28) == []
    assert list(timers.pop_due(2**62)) == [(29, "a", W3)]
    assert timers.next_time() is None


def test_a_removed_timer_does_not_fire_whether_cached_or_stored(
    make_backend: Callable[[], MemoryBackend | LmdbBackend],
) -> None:
    backend = make_backend()
    timers = backend.namespaced_timers("w", "window-event-timers", namespaces=WINDOW_KEYS)
    timers.add_all(9, W1, ["a", "b", "c"])
    backend.trim()
    timers.remove(9, "b", W1)
    timers.remove(9, "zz", W1)  # not there: nothing happens
    timers.remove(9, "a", W2)  # another window's: nothing happens
    timers.add(19, "d", W2)
    timers.remove(19, "d", W2)
    assert sorted(key for _, _, keys in _groups(backend, timers, 100) for key in keys) == ["a", "c"]
    assert timers.next_time() is None


def test_timers_registered_while_firing_fire_too_if_due(
    make_backend: Callable[[], MemoryBackend | LmdbBackend],
) -> None:
    backend = make_backend()
    timers = backend.namespaced_timers("w", "window-event-timers", namespaces=WINDOW_KEYS)
    timers.add_all(9, W1, ["a", "b"])
    fired = []
    for timestamp, namespace, keys in timers.pop_due_groups(15):
        for key in keys:
            fired.append((timestamp, key, namespace))
            if namespace == W1:
                timers.add(12, key, W2)  # due: fires in this same call
                timers.add(9, key, W3)  # at the time being fired: fires too
                timers.add(16, key, W2)  # not due yet
    assert fired[:2] == [(9, "a", W1), (9, "b", W1)]
    assert sorted(fired[2:]) == [(9, "a", W3), (9, "b", W3), (12, "a", W2), (12, "b", W2)]
    assert timers.next_time() == 16


def test_releasing_key_groups_drops_their_timers(make_backend: Callable[[], MemoryBackend | LmdbBackend]) -> None:
    backend = make_backend()
    timers = backend.namespaced_timers("w", "window-event-timers", namespaces=WINDOW_KEYS)
    keys = [f"k{i}" for i in range(40)]
    timers.add_all(9, W1, keys)
    timers.add_all(19, W2, keys[:10])
    gone = {key_group(key, 128) for key in keys[:20]}
    kept = [key for key in keys if key_group(key, 128) not in gone]
    assert kept  # the test means something: some keys stay
    backend.release(gone)
    fired = [(t, key) for t, _, keys_ in _groups(backend, timers, 100) for key in keys_]
    assert sorted(fired) == sorted([(9, key) for key in kept] + [(19, key) for key in keys[:10] if key in kept])


def test_stored_timers_come_back_with_their_windows_after_a_restore(durable: Durable) -> None:
    """On LMDB a namespaced timer is stored as the window operator always stored its
    timers, a ``(key, window)`` key: a restore reads them back, windows decoded."""
    backend = durable.open()
    timers = backend.namespaced_timers("w", "window-event-timers", namespaces=WINDOW_KEYS)
    timers.add_all(9, W1, ["a", "b"])
    timers.add(19, "a", W2)
    durable.checkpoint(backend)
    timers.add(29, "a", W3)  # after the checkpoint: undone by the restore

    backend = durable.open()
    restored = backend.namespaced_timers("w", "window-event-timers", namespaces=WINDOW_KEYS)
    fired = _groups(backend, restored, 2**62)
    assert [(t, ns, sorted(keys)) for t, ns, keys in fired] == [(9, W1, ["a", "b"]), (19, W2, ["a"])]
    assert all(ns.__class__ is TimeWindow for _, ns, _ in fired)

    again = durable.open()  # the same checkpoint, read through the flat queue of (key, window) keys
    flat = again.timers(
        "w", "window-event-timers", key_group_of=lambda pair: key_group(pair[0], 128), keys=_PairOfWindow()
    )
    assert sorted(flat.pop_due(2**62)) == [(9, ("a", W1)), (9, ("b", W1)), (19, ("a", W2))]


class _PairOfWindow:
    def encode(self, obj: Any) -> Any:
        return obj[0], WINDOW_KEYS.encode(obj[1])

    def decode(self, plain: Any) -> Any:
        return plain[0], WINDOW_KEYS.decode(plain[1])


def test_cached_timers_fire_a_window_at_a_time_on_both_backends(durable: Durable) -> None:
    """Keys of one window registered with another window's in between still fire as one
    group, windows in the order of their first timer: in memory, and on LMDB while the
    timers are cached (the same order, so both backends emit alike)."""
    w2_ = TimeWindow(-5, 10)  # another window ending at the same time (a merged session)
    orders = []
    for backend in (MemoryBackend(), durable.open()):
        timers = backend.namespaced_timers("w", "window-event-timers", namespaces=WINDOW_KEYS)
        timers.add(9, "k1", W1)
        timers.add(9, "k2", w2_)
        timers.add(9, "k3", W1)
        timers.add(9, "k4", w2_)
        orders.append([(t, ns, list(keys)) for t, ns, keys in timers.pop_due_groups(9)])
    assert orders[0] == orders[1] == [(9, W1, ["k1", "k3"]), (9, w2_, ["k2", "k4"])]
