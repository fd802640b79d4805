"""Keys carried in batches never outlive the operator they were computed for."""

import aioflow as af
from aioflow.testing import run_collect


def test_rekey_after_network_hop_uses_new_key():
    # key_by(user) -> union (network hop: batches carry user keys) -> key_by(country).reduce (chained, p=1)
    app = af.App("rekey", batch_size=4, watermark_interval=0)
    rows = [("u1", "fr", 1), ("u2", "fr", 2), ("u3", "de", 4)]
    a = app.source(rows, name="a").key_by(lambda r: r[0])
    b = app.source([], name="b")
    per_country = (
        a.union(b).key_by(lambda r: r[1]).reduce(lambda x, y: (x[0], x[1], x[2] + y[2]), name="sum_by_country")
    )
    out = run_collect(per_country, timeout=5)
    # Flink: rolling sum per country -> ("u1","fr",1), ("u1","fr",3), ("u3","de",4)
    assert [r[2] for r in out] == [1, 3, 4]


class CtxKey(af.KeyedProcessFunction):
    def process_element(self, value, ctx):
        yield ctx.key


def test_ctx_key_after_filter_and_rekey():
    # same with filter (which keeps batch.keys) after a parallelism change
    app = af.App("rekey2", batch_size=4, watermark_interval=0)
    rows = [("u1", "fr"), ("u2", "fr"), ("u3", "de")]
    s = app.source(rows).map(lambda r: r, name="m", parallelism=2)
    f = s.key_by(lambda r: r[0]).filter(lambda r: True, name="f", parallelism=1)
    out = run_collect(f.key_by(lambda r: r[1]).process(CtxKey, name="p"), timeout=5)
    assert sorted(out) == ["de", "fr", "fr"]
