"""aioflow: asyncio-native stream processing with Flink's model.

Everything a pipeline needs is importable from here (``import aioflow as af``).
"""

from aioflow.app import App
from aioflow.connected import (
    BroadcastConnectedStreams,
    BroadcastStream,
    ConnectedStreams,
    IntervalJoin,
    IntervalJoined,
)
from aioflow.connectors.async_sink import AsyncBatchSink
from aioflow.connectors.base import (
    BadRecord,
    Sink,
    SinkClosed,
    SinkWriter,
    Source,
    SourceBatch,
    SourceReader,
    TwoPhaseCommitSinkWriter,
)
from aioflow.connectors.collection import from_iterable
from aioflow.connectors.files import FileSink, read_jsonl, read_text
from aioflow.connectors.sinks import CollectSink, PrintSink
from aioflow.errors import (
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
    SinkDeliveryError,
    StateError,
    UserFunctionTypeError,
)
from aioflow.functions import (
    AggregateFunction,
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
from aioflow.graph.plan import Plan
from aioflow.operators.async_io import FailedCall
from aioflow.operators.context import OperatorContext
from aioflow.operators.window import TriggerContext, WindowContext
from aioflow.retry import RetryPolicy
from aioflow.runtime.restart import (
    ExponentialBackoffRestart,
    FailureRateRestart,
    FixedDelayRestart,
    NoRestart,
    RestartStrategy,
)
from aioflow.state.ttl import StateTtl
from aioflow.stream import KeyedStream, Stream
from aioflow.time.watermarks import (
    BoundedOutOfOrderness,
    MonotonousTimestamps,
    WatermarkGenerator,
    WatermarkOutput,
    WatermarkStrategy,
)
from aioflow.windows.assigners import (
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
from aioflow.windows.evictors import CountEvictor, DeltaEvictor, Evictor, TimeEvictor
from aioflow.windows.stream import WindowedStream
from aioflow.windows.triggers import (
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
    "BadRecord",
    "BadRecordError",
    "BoundedOutOfOrderness",
    "BroadcastConnectedStreams",
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
    "SlidingEventTimeWindows",
    "SlidingProcessingTimeWindows",
    "Source",
    "SourceBatch",
    "SourceReader",
    "StateError",
    "StateTtl",
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
    "from_iterable",
    "read_jsonl",
    "read_text",
]
