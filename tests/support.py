"""Small functions several test modules use."""

from __future__ import annotations

import aioflow as af


class Count(af.AggregateFunction):
    """Counts a window's records."""

    def create_accumulator(self):
        return 0

    def add(self, value, acc):
        return acc + 1

    def get_result(self, acc):
        return acc

    def merge(self, a, b):
        return a + b
