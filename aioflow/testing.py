"""Helpers for testing pipelines with pytest.

:func:`run_collect` runs the real job, every operator and every sink of the app
included; it only adds a :class:`CollectSink` to the streams you want to look at, and
removes it afterwards::

    from aioflow.testing import replace_sink, replace_source, run_collect

    def test_big_orders():
        replace_source(app, "orders", af.from_iterable([{"amount": 5}, {"amount": 50}]))
        assert run_collect(big_orders) == [{"amount": 50}]

:func:`replace_sink` swaps a sink for a :class:`CollectSink` the same way, to run a
Kafka pipeline whole without a broker.

:class:`ProcessFunctionHarness` drives one process function by hand, record by record
and watermark by watermark, as Flink's operator test harnesses do::

    @pytest.mark.asyncio  # not needed with asyncio_mode = "auto" in the pytest config
    async def test_inactivity_timer():
        async with ProcessFunctionHarness(Inactivity, key_selector=lambda e: e["user"]) as h:
            await h.process_element({"user": "a"}, timestamp=1_000)
            await h.process_watermark(31_000)
            assert h.output == [(("a", 1), 31_000)]

Such a test is ``async def``, so pytest needs pytest-asyncio to run it: either
``asyncio_mode = "auto"`` under ``[tool.pytest.ini_options]`` or ``@pytest.mark.asyncio``
on the test (without either, pytest does not run it: recent pytest versions fail it with
"async def functions are not natively supported", older ones skip it with a warning).
Set ``asyncio_default_fixture_loop_scope = "function"`` there too, or pytest-asyncio
warns on every run (see docs/getting-started.md, "Test it").
``Inactivity`` may be a class, or the stream that ``@per_user.process`` made of it; the
harness then takes the stream's key selector, so ``key_selector=`` can be left out.
"""

from aioflow._core import rehome as _rehome
from aioflow._core.testing import (
    SETTINGS,
    ProcessFunctionHarness,
    replace_sink,
    replace_source,
    run_collect,
    run_collect_async,
)

__all__ = ["SETTINGS", "ProcessFunctionHarness", "replace_sink", "replace_source", "run_collect", "run_collect_async"]

_rehome(__all__, globals(), __name__)
