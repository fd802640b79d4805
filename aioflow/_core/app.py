"""The :class:`App`: a named pipeline of operators, and the way to run it."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable, Iterable
from typing import Any, cast

import anyio
import structlog

from aioflow._core.checkpoint.storage import storage_at
from aioflow._core.connectors.base import Source
from aioflow._core.connectors.collection import from_iterable
from aioflow._core.errors import PipelineError, suggest_keywords
from aioflow._core.graph.logical import LogicalGraph
from aioflow._core.graph.plan import Plan, build_plan
from aioflow._core.log import configure_logging
from aioflow._core.runtime.job import Job, RuntimeConfig
from aioflow._core.runtime.operator import Operator
from aioflow._core.runtime.restart import DEFAULT_RESTART_STRATEGY, NoRestart, RestartStrategy
from aioflow._core.stream import Stream
from aioflow._core.time.watermarks import WatermarkStrategy

__all__ = ["App"]


def _storage_location(location: str | os.PathLike[str] | None) -> str | None:
    """A checkpoint storage location, checked now (a path or ``file://`` URL)."""
    if location is None:
        return None
    if not isinstance(location, (str, os.PathLike)):
        raise PipelineError(f"checkpoint_storage takes a path or a file:// URL, got {location!r}")
    storage_at(location)  # refuses what it cannot use, naming it
    return os.fspath(location)


_IN_MEMORY = (
    "checkpoint_interval needs the 'lmdb' state_backend (a checkpoint records the working copy it keeps in "
    "state_dir); got state_backend='memory'"
)


def _check_checkpointable(state_dir: str | None, state_backend: str) -> None:
    """Refuse checkpoints without a state directory, or with state kept in memory: a
    checkpoint records the working copy of the state that the LMDB backend keeps there."""
    if state_dir is None:
        raise PipelineError(
            "checkpoint_interval needs a state_dir, where the working copy of the state lives (a checkpoint "
            "records it): give App(state_dir=...) or run(state_dir=...), or to the worker `aioflow run "
            "--state-dir PATH` or the environment variable AIOFLOW_STATE_DIR (read by `aioflow run` only)"
        )
    if state_backend != "lmdb":
        raise PipelineError(_IN_MEMORY)


def _check_restorable(state_dir: str | None, checkpoint_interval: float | None) -> None:
    """A savepoint is restored into a working copy, which checkpoints then keep: both must
    be given (a configuration to fix, not state to refuse)."""
    if state_dir is None:
        raise PipelineError(
            "restoring from a savepoint needs a state_dir to restore into: give App(state_dir=...) or "
            "run(state_dir=...), or to the worker `aioflow run --state-dir PATH` or the environment variable "
            "AIOFLOW_STATE_DIR (read by `aioflow run` only)"
        )
    if checkpoint_interval is None:
        raise PipelineError(
            "restoring from a savepoint needs checkpoints (without them the restored state would change with no "
            "checkpoint to come back to): give App(checkpoint_interval=...) or run(checkpoint_interval=...), or "
            "to the worker `aioflow run --checkpoint-interval SECONDS` or the environment variable "
            "AIOFLOW_CHECKPOINT_INTERVAL (read by `aioflow run` only)"
        )


def _positive(value: Any, what: str, kinds: tuple[type, ...] = (int,)) -> Any:
    if isinstance(value, bool) or not isinstance(value, kinds) or cast(float, value) <= 0:
        unit = "int" if kinds == (int,) else "number"
        raise PipelineError(f"{what} must be a positive {unit}, got {value!r}")
    return value


class App:
    """A stream-processing application: sources, operators and sinks, run as one job.

    ``parallelism`` is the default number of subtasks per operator. ``batch_size`` is
    how many records move together between tasks; ``linger`` (seconds) how long a
    partly filled batch may wait while its task is busy (an idle task sends at once).
    ``channel_capacity`` is each channel's credit, in batches: memory stays bounded by
    channels × capacity × batch size. ``watermark_interval`` (seconds) is how often
    sources emit watermarks; 0 emits one after every source batch. By default (``None``)
    replayable sources (files, lists) emit after every batch, so replaying the same
    input gives the same output, and live sources every 0.2 s. ``state_dir`` and
    ``checkpoint_interval`` configure persistent state and checkpoints (see
    docs/state.md and docs/fault-tolerance.md); with checkpoints, a failed job restarts
    from the last one as ``restart_strategy`` says (default: up to 3 attempts in a row,
    1, 2 and 4 s apart). ``max_concurrency`` is how many records an ``async def`` user
    function runs on at once (records of one key one after the other), unless its
    operator says otherwise (see docs/async.md).
    """

    @suggest_keywords
    def __init__(
        self,
        name: str,
        *,
        state_dir: str | None = None,
        checkpoint_interval: float | None = None,
        checkpoint_storage: str | os.PathLike[str] | None = None,
        parallelism: int = 1,
        max_parallelism: int = 128,
        batch_size: int = 1024,
        linger: float = 0.005,
        channel_capacity: int = 4,
        watermark_interval: float | None = None,
        state_backend: str | None = None,
        state_cache_size: int = 100_000,
        checkpoint_mode: str = "exactly_once",
        checkpoint_timeout: float = 600.0,
        min_pause_between_checkpoints: float = 0.0,
        retained_checkpoints: int = 3,
        tolerable_checkpoint_failures: int | None = None,
        restart_strategy: RestartStrategy | None = None,
        max_concurrency: int = 100,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise PipelineError(f"App needs a non-empty name, got {name!r}")
        self.name = name
        self.state_dir = state_dir
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_storage = _storage_location(checkpoint_storage)
        self.max_parallelism = _positive(max_parallelism, "max_parallelism")
        self.graph = LogicalGraph(name, self.max_parallelism)
        self.parallelism = self.graph.check_parallelism(parallelism, "App")
        self.batch_size = _positive(batch_size, "batch_size")
        self.linger = float(_positive(linger, "linger", (int, float))) if linger else 0.0
        self.channel_capacity = _positive(channel_capacity, "channel_capacity")
        if watermark_interval is not None and (
            isinstance(watermark_interval, bool)
            or not isinstance(watermark_interval, (int, float))
            or watermark_interval < 0
        ):
            raise PipelineError(f"watermark_interval must be seconds >= 0 or None, got {watermark_interval!r}")
        self.watermark_interval = None if watermark_interval is None else float(watermark_interval)
        if state_backend not in (None, "memory", "lmdb"):
            raise PipelineError(f"state_backend must be 'memory' or 'lmdb', got {state_backend!r}")
        self.state_backend = state_backend or ("lmdb" if state_dir is not None else "memory")
        if checkpoint_interval is not None:
            _positive(checkpoint_interval, "checkpoint_interval", (int, float))
            # A missing state_dir is checked when the job starts (_config): the worker may give
            # it (--state-dir, AIOFLOW_STATE_DIR). A chosen memory backend no run can change.
            if state_backend == "memory":
                raise PipelineError(_IN_MEMORY)
        if checkpoint_mode not in ("exactly_once", "at_least_once"):
            raise PipelineError(f"checkpoint_mode must be 'exactly_once' or 'at_least_once', got {checkpoint_mode!r}")
        self.checkpoint_mode = checkpoint_mode
        self.checkpoint_timeout = float(_positive(checkpoint_timeout, "checkpoint_timeout", (int, float)))
        if (
            isinstance(min_pause_between_checkpoints, bool)
            or not isinstance(min_pause_between_checkpoints, (int, float))
            or min_pause_between_checkpoints < 0
        ):
            raise PipelineError(
                f"min_pause_between_checkpoints must be seconds >= 0, got {min_pause_between_checkpoints!r}"
            )
        self.min_pause_between_checkpoints = float(min_pause_between_checkpoints)
        self.retained_checkpoints = _positive(retained_checkpoints, "retained_checkpoints")
        if tolerable_checkpoint_failures is not None and (
            isinstance(tolerable_checkpoint_failures, bool)
            or not isinstance(tolerable_checkpoint_failures, int)
            or tolerable_checkpoint_failures < 0
        ):
            raise PipelineError(
                f"tolerable_checkpoint_failures must be an int >= 0 or None, got {tolerable_checkpoint_failures!r}"
            )
        self.tolerable_checkpoint_failures = tolerable_checkpoint_failures
        self.state_cache_size = _positive(state_cache_size, "state_cache_size")
        self.max_concurrency = _positive(max_concurrency, "max_concurrency")
        if restart_strategy is not None and not isinstance(restart_strategy, RestartStrategy):
            raise PipelineError(
                f"restart_strategy takes af.FixedDelayRestart(...), af.ExponentialBackoffRestart(...), "
                f"af.FailureRateRestart(...) or af.NoRestart(), got {restart_strategy!r}"
            )
        self._chosen = {"state_backend": state_backend, "restart_strategy": restart_strategy}  # None: derived
        if restart_strategy is None:
            restart_strategy = DEFAULT_RESTART_STRATEGY if checkpoint_interval is not None else NoRestart()
        self.restart_strategy = restart_strategy
        self._job: Job | None = None

    def __repr__(self) -> str:
        count = len(self.graph)
        return f"<App {self.name!r}: {count} operator{'' if count == 1 else 's'}>"

    def source(
        self,
        source: Source | Iterable[Any],
        *,
        name: str | None = None,
        timestamps: Callable[[Any], int] | None = None,
        watermarks: WatermarkStrategy | None = None,
        parallelism: int | None = None,
    ) -> Stream:
        """A stream read from ``source`` (a connector such as :func:`read_jsonl`, or any
        iterable). ``timestamps`` extracts each record's event time (int ms); without it,
        records of a source that knows their time (Kafka) carry that. ``watermarks`` says
        how event time advances (e.g. ``BoundedOutOfOrderness(2000)``)."""
        if not isinstance(source, Source):
            if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
                raise PipelineError(
                    f"app.source() takes an aioflow Source (from_iterable, read_jsonl, ...) or an "
                    f"iterable, got {type(source).__name__}"
                )
            source = from_iterable(source)
        if timestamps is not None and (not callable(timestamps) or inspect.iscoroutinefunction(timestamps)):
            raise PipelineError(f"timestamps= takes a function returning int ms, got {timestamps!r}")
        if watermarks is not None:
            if not isinstance(watermarks, WatermarkStrategy):
                raise PipelineError(f"watermarks= takes a WatermarkStrategy, got {watermarks!r}")
            if timestamps is None and not source.timestamped:
                raise PipelineError("watermarks= needs timestamps= to know each record's event time")
        node = self.graph.add_node(
            "source",
            name,
            source.default_name,
            Operator,
            parallelism,
            [],
            source=source,
            timestamps=timestamps,
            watermarks=watermarks,
        )
        return Stream(self, node)

    def plan(self, *, parallelism: int | None = None) -> Plan:
        """The physical plan: tasks of chained operators and how they connect.
        ``parallelism`` overrides the app's default (operators that set their own keep it)."""
        if parallelism is not None:
            self.graph.check_parallelism(parallelism, "parallelism")
        return build_plan(self.name, self.graph.nodes, parallelism or self.parallelism)

    def _config(
        self,
        *,
        state_dir: str | None = None,
        checkpoint_interval: float | None = None,
        checkpoint_storage: str | None = None,
        **run_options: Any,
    ) -> RuntimeConfig:
        """The runtime configuration; ``state_dir`` and ``checkpoint_interval`` override the
        app's for one run (``aioflow run --state-dir/--checkpoint-interval``), with what
        derives from them (the LMDB backend, the default restart strategy) derived again."""
        state_backend, restart_strategy = self.state_backend, self.restart_strategy
        if state_dir is None:
            state_dir = self.state_dir
        elif self._chosen["state_backend"] is None:
            state_backend = "lmdb"
        if checkpoint_interval is None:
            checkpoint_interval = self.checkpoint_interval
        else:
            _positive(checkpoint_interval, "checkpoint_interval", (int, float))
            if self._chosen["restart_strategy"] is None and isinstance(restart_strategy, NoRestart):
                restart_strategy = DEFAULT_RESTART_STRATEGY
        if run_options.get("from_savepoint") is not None:
            _check_restorable(state_dir, checkpoint_interval)
        if checkpoint_interval is not None:
            _check_checkpointable(state_dir, state_backend)
        elif not isinstance(restart_strategy, NoRestart):
            raise PipelineError(
                "restart_strategy needs checkpoint_interval: a restart resumes from the last checkpoint (without "
                "one it would replay the input into the sinks): give App(checkpoint_interval=...) or "
                "run(checkpoint_interval=...), or to the worker `aioflow run --checkpoint-interval SECONDS` or the "
                "environment variable AIOFLOW_CHECKPOINT_INTERVAL (read by `aioflow run` only)"
            )
        return RuntimeConfig(
            batch_size=self.batch_size,
            linger=self.linger,
            channel_capacity=self.channel_capacity,
            max_parallelism=self.max_parallelism,
            watermark_interval=self.watermark_interval,
            state_dir=state_dir,
            checkpoint_storage=_storage_location(checkpoint_storage) or self.checkpoint_storage,
            state_backend=state_backend,
            state_cache_size=self.state_cache_size,
            max_concurrency=self.max_concurrency,
            checkpoint_interval=checkpoint_interval,
            checkpoint_mode=self.checkpoint_mode,
            checkpoint_timeout=self.checkpoint_timeout,
            min_pause_between_checkpoints=self.min_pause_between_checkpoints,
            retained_checkpoints=self.retained_checkpoints,
            tolerable_checkpoint_failures=self.tolerable_checkpoint_failures,
            restart_strategy=restart_strategy,
            **run_options,
        )

    async def run_async(
        self,
        *,
        parallelism: int | None = None,
        from_savepoint: str | os.PathLike[str] | None = None,
        allow_non_restored_state: bool = False,
        drain_on_stop: bool = False,
        state_dir: str | os.PathLike[str] | None = None,
        checkpoint_interval: float | None = None,
        checkpoint_storage: str | os.PathLike[str] | None = None,
    ) -> None:
        """Run the job inside a running event loop; returns when bounded input is done, or
        after a stop. ``parallelism`` overrides the app's default parallelism.
        ``from_savepoint`` restores the savepoint directory into ``state_dir`` first; a
        checkpoint or savepoint with state of operators the job no longer has is refused
        unless ``allow_non_restored_state``. With checkpoints, :meth:`stop` takes a
        savepoint and keeps open windows and timers in it, unless ``drain_on_stop``.
        ``state_dir``, ``checkpoint_interval`` and ``checkpoint_storage`` override the
        app's for this run (a ``state_dir`` then means the LMDB backend, unless the app
        chose one). The loop must be asyncio's (see docs/api.md, "asyncio only")."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise PipelineError(
                "aioflow runs on asyncio only: run_async() needs a running asyncio event loop "
                "(asyncio.run, anyio with the asyncio backend); trio is not supported"
            ) from None
        if not structlog.is_configured():
            configure_logging()
        plan = self.plan(parallelism=parallelism)
        config = self._config(
            from_savepoint=None if from_savepoint is None else os.fspath(from_savepoint),
            allow_non_restored_state=allow_non_restored_state,
            drain_on_stop=drain_on_stop,
            state_dir=None if state_dir is None else os.fspath(state_dir),
            checkpoint_interval=checkpoint_interval,
            checkpoint_storage=None if checkpoint_storage is None else os.fspath(checkpoint_storage),
        )
        self._job = job = Job(plan, config)
        try:
            await job.run()
        finally:
            self._job = None

    def run(
        self,
        *,
        parallelism: int | None = None,
        from_savepoint: str | os.PathLike[str] | None = None,
        allow_non_restored_state: bool = False,
        drain_on_stop: bool = False,
        state_dir: str | os.PathLike[str] | None = None,
        checkpoint_interval: float | None = None,
        checkpoint_storage: str | os.PathLike[str] | None = None,
    ) -> None:
        """Run the job (blocking); the options are :meth:`run_async`'s. Inside a running
        event loop use ``await app.run_async()``."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            run = functools.partial(
                self.run_async,
                parallelism=parallelism,
                from_savepoint=from_savepoint,
                allow_non_restored_state=allow_non_restored_state,
                drain_on_stop=drain_on_stop,
                state_dir=state_dir,
                checkpoint_interval=checkpoint_interval,
                checkpoint_storage=checkpoint_storage,
            )
            anyio.run(run, backend="asyncio")
            return
        raise PipelineError("App.run() was called inside a running event loop; use `await app.run_async()`")

    def stop(self) -> None:
        """Ask the job to stop: with checkpoints, sources stop at a savepoint's barrier and
        the job ends once it is committed; otherwise (or with ``drain_on_stop``) sources
        stop and the job drains what is in flight, firing windows as at the end of input."""
        if self._job is not None:
            self._job.request_stop()

    @property
    def job(self) -> Job | None:
        """The job being run (``None`` when none runs): what the worker's health check
        and metrics read (its status, subtasks, checkpoint statistics, restarts)."""
        return self._job

    @property
    def stops_with_savepoint(self) -> bool:
        """Whether :meth:`stop` takes a savepoint in the running job (else it drains)."""
        job = self._job
        return job is not None and job.config.checkpoint_interval is not None and not job.config.drain_on_stop
