"""Side outputs carry watermarks and end-of-input like the main output (as in Flink)."""

import aioflow as af
from aioflow.testing import run_collect

SMALL = af.OutputTag("small")


class Split(af.ProcessFunction):
    def process_element(self, value, ctx):
        if value < 3:
            yield SMALL, value
        else:
            yield value


def test_side_output_over_network_edge_terminates():
    # side output read by an operator in another task (parallelism 2): it must get EndOfInput
    app = af.App("side_net", batch_size=1, watermark_interval=0)
    main = app.source(range(6)).process(Split)
    small = main.get_side_output(SMALL).map(lambda x: x * 10, parallelism=2)
    out_main, out_small = run_collect(main, small, timeout=5)
    assert sorted(out_small) == [0, 10, 20]


def test_window_on_side_output_fires_at_end_of_input():
    # bounded job: the final +inf watermark must fire windows on a side-output stream too
    app = af.App("side_win", batch_size=1, watermark_interval=0)
    main = app.source(range(6), timestamps=lambda x: x * 1000, watermarks=af.MonotonousTimestamps()).process(Split)
    counts = (
        main.get_side_output(SMALL)
        .key_by(lambda x: 0)
        .window(af.TumblingEventTimeWindows(10_000))
        .reduce(lambda a, b: a + b, name="sum")
    )
    assert run_collect(counts, timeout=5) == [0 + 1 + 2]
