"""A slow sink slows the source: what is read but not yet written stays bounded."""

from __future__ import annotations

import anyio

import aioflow as af


class SlowSink(af.Sink):
    def __init__(self, pulled: list[int]) -> None:
        self.pulled = pulled
        self.written = 0
        self.max_in_flight = 0

    def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
        sink = self

        class Writer(af.SinkWriter):
            async def write(self, values: list) -> None:
                sink.written += len(values)
                sink.max_in_flight = max(sink.max_in_flight, sink.pulled[0] - sink.written)
                await anyio.sleep(0)

        return Writer()


def test_source_reads_at_most_a_bounded_amount_ahead_of_a_slow_sink() -> None:
    total, batch, capacity = 20_000, 10, 2
    pulled = [0]

    def numbers():
        for i in range(total):
            pulled[0] += 1
            yield i

    app = af.App("bp", batch_size=batch, channel_capacity=capacity)
    sink = SlowSink(pulled)
    # Parallelism 2 at the sink puts real channels between the tasks.
    app.source(af.from_iterable(numbers())).map(lambda x: x).sink(sink, parallelism=2)
    app.run()
    assert sink.written == total
    # per channel: `capacity` batches buffered; plus the writer's buffer, the batch being
    # read and the batch being written
    bound = 2 * capacity * batch + 3 * batch
    assert sink.max_in_flight <= bound, sink.max_in_flight
