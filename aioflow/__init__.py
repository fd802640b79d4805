"""aioflow: asyncio-native stream processing with Flink's model.

Everything a pipeline needs is importable from here (``import aioflow as af``); the Kafka
connectors from :mod:`aioflow.kafka` (also ``af.kafka``) and test harnesses from
:mod:`aioflow.testing`. The implementation lives in ``aioflow._core``, which is private.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from aioflow._core import rehome as _rehome
from aioflow._core.app import App
from aioflow._core.connected import (
    BroadcastConnectedStreams,
    BroadcastStream,
    ConnectedStreams,
    IntervalJoin,
    IntervalJoined,
)
from aioflow._core.connectors.async_sink import AsyncBatchSink
from aioflow._core.connectors.base import (
    BadRecord,
    Sink,
    SinkWriter,
    Source,
    SourceBatch,
    SourceReader,
    TwoPhaseCommitSinkWriter,
)
from aioflow._core.connectors.collection import from_iterable
from aioflow._core.connectors.files import FileSink, read_jsonl, read_text
from aioflow._core.connectors.sinks import CollectSink, PrintSink
from aioflow._core.errors import (
    AioflowError,
    AppLoadError,
    BadRecordError,
    ConnectorError,
    CorruptStateError,
    DuplicateWorkerError,
    IncompatibleStateError,
    OperatorError,
    PipelineError,
    RefusedError,
    SinkClosed,
    SinkDeliveryError,
    StateError,
    StrayCancellation,
    UserFunctionTypeError,
)
from aioflow._core.functions import (
    AggregateFunction,
    AsyncFunction,
    BroadcastProcessFunction,
    CoProcessFunction,
    KeyedBroadcastProcessFunction,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    ProcessJoinFunction,
    ProcessWindowFunction,
)
from aioflow._core.graph.plan import Plan
from aioflow._core.log import configure_logging
from aioflow._core.operators.async_io import FailedCall
from aioflow._core.operators.context import FunctionContext, OperatorContext
from aioflow._core.operators.coprocess import BroadcastContext
from aioflow._core.operators.window import TriggerContext, WindowContext
from aioflow._core.retry import RetryPolicy
from aioflow._core.runtime.restart import (
    ExponentialBackoffRestart,
    FailureRateRestart,
    FixedDelayRestart,
    NoRestart,
    RestartStrategy,
)
from aioflow._core.state.serializers import Serializer
from aioflow._core.state.ttl import StateTtl
from aioflow._core.stream import KeyedStream, Stream
from aioflow._core.time.watermarks import (
    BoundedOutOfOrderness,
    MonotonousTimestamps,
    WatermarkGenerator,
    WatermarkOutput,
    WatermarkStrategy,
)
from aioflow._core.windows.assigners import (
    EventTimeSessionWindows,
    GlobalWindow,
    GlobalWindows,
    ProcessingTimeSessionWindows,
    SlidingEventTimeWindows,
    SlidingProcessingTimeWindows,
    TimeWindow,
    TumblingEventTimeWindows,
    TumblingProcessingTimeWindows,
    WindowAssigner,
)
from aioflow._core.windows.evictors import CountEvictor, DeltaEvictor, Evictor, TimeEvictor
from aioflow._core.windows.stream import WindowedStream
from aioflow._core.windows.triggers import (
    ContinuousEventTimeTrigger,
    ContinuousProcessingTimeTrigger,
    CountTrigger,
    EventTimeTrigger,
    NeverTrigger,
    ProcessingTimeTrigger,
    PurgingTrigger,
    Trigger,
    TriggerResult,
)

__version__ = "0.1.0"


if _TYPE_CHECKING:  # type checkers see af.kafka as the module, and no other attribute made up at run time
    from aioflow import kafka as kafka
else:

    def __getattr__(name: str) -> object:
        """``af.kafka``: imported on first use (aiokafka takes a while to import)."""
        if name == "kafka":
            import importlib

            return importlib.import_module("aioflow.kafka")
        raise AttributeError(f"module 'aioflow' has no attribute {name!r}")


__all__ = [
    "AggregateFunction",
    "AioflowError",
    "App",
    "AppLoadError",
    "AsyncBatchSink",
    "AsyncFunction",
    "BadRecord",
    "BadRecordError",
    "BoundedOutOfOrderness",
    "BroadcastConnectedStreams",
    "BroadcastContext",
    "BroadcastProcessFunction",
    "BroadcastStream",
    "CoProcessFunction",
    "CollectSink",
    "ConnectedStreams",
    "ConnectorError",
    "CorruptStateError",
    "DuplicateWorkerError",
    "ContinuousEventTimeTrigger",
    "ContinuousProcessingTimeTrigger",
    "CountEvictor",
    "CountTrigger",
    "DeltaEvictor",
    "EventTimeSessionWindows",
    "EventTimeTrigger",
    "Evictor",
    "ExponentialBackoffRestart",
    "FailedCall",
    "FailureRateRestart",
    "FileSink",
    "FixedDelayRestart",
    "FunctionContext",
    "GlobalWindow",
    "GlobalWindows",
    "IncompatibleStateError",
    "IntervalJoin",
    "IntervalJoined",
    "KeyedBroadcastProcessFunction",
    "KeyedCoProcessFunction",
    "KeyedProcessFunction",
    "KeyedStream",
    "MonotonousTimestamps",
    "NeverTrigger",
    "NoRestart",
    "OperatorContext",
    "OperatorError",
    "OutputTag",
    "PipelineError",
    "Plan",
    "PrintSink",
    "ProcessFunction",
    "ProcessJoinFunction",
    "ProcessWindowFunction",
    "ProcessingTimeSessionWindows",
    "ProcessingTimeTrigger",
    "PurgingTrigger",
    "RefusedError",
    "RestartStrategy",
    "RetryPolicy",
    "Sink",
    "SinkClosed",
    "SinkDeliveryError",
    "SinkWriter",
    "Serializer",
    "SlidingEventTimeWindows",
    "SlidingProcessingTimeWindows",
    "Source",
    "SourceBatch",
    "SourceReader",
    "StateError",
    "StateTtl",
    "StrayCancellation",
    "Stream",
    "TimeEvictor",
    "TimeWindow",
    "Trigger",
    "TriggerContext",
    "TriggerResult",
    "TumblingEventTimeWindows",
    "TumblingProcessingTimeWindows",
    "TwoPhaseCommitSinkWriter",
    "UserFunctionTypeError",
    "WatermarkGenerator",
    "WatermarkOutput",
    "WatermarkStrategy",
    "WindowAssigner",
    "WindowContext",
    "WindowedStream",
    "configure_logging",
    "from_iterable",
    "read_jsonl",
    "read_text",
]


_rehome(__all__, globals(), __name__)
