"""Keyed state handles."""

import aioflow as af
from aioflow.testing import run_collect


def test_value_state_mutable_default_not_shared_between_keys():
    app = af.App("vs", batch_size=1, watermark_interval=0)

    class Collect(af.KeyedProcessFunction):
        def open(self, ctx):
            self.seen = ctx.value_state("seen", default=[])

        def process_element(self, value, ctx):
            items = self.seen.value()
            items.append(value[1])
            self.seen.update(items)
            yield (ctx.key, list(items))

    out = run_collect(app.source([("a", 1), ("b", 2)]).key_by(lambda r: r[0]).process(Collect, name="c"))
    assert out == [("a", [1]), ("b", [2])]
