"""aioflow: asyncio-native stream processing with Flink's model.

Everything a pipeline needs is importable from here (``import aioflow as af``).
"""

from aioflow.app import App
from aioflow.connectors.base import BadRecord, Sink, SinkWriter, Source, SourceBatch, SourceReader
from aioflow.connectors.collection import from_iterable
from aioflow.connectors.files import FileSink, read_jsonl, read_text
from aioflow.connectors.sinks import CollectSink, PrintSink
from aioflow.errors import (
    AioflowError,
    AppLoadError,
    BadRecordError,
    OperatorError,
    PipelineError,
    UserFunctionTypeError,
)
from aioflow.functions import (
    AggregateFunction,
    CoProcessFunction,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
)
from aioflow.graph.plan import Plan
from aioflow.runtime.context import OperatorContext
from aioflow.stream import KeyedStream, Stream
from aioflow.time.watermarks import (
    BoundedOutOfOrderness,
    MonotonousTimestamps,
    WatermarkGenerator,
    WatermarkOutput,
    WatermarkStrategy,
)

__version__ = "0.1.0"

__all__ = [
    "AggregateFunction",
    "AioflowError",
    "App",
    "AppLoadError",
    "BadRecord",
    "BadRecordError",
    "BoundedOutOfOrderness",
    "CoProcessFunction",
    "CollectSink",
    "FileSink",
    "KeyedCoProcessFunction",
    "KeyedProcessFunction",
    "KeyedStream",
    "MonotonousTimestamps",
    "OperatorContext",
    "OperatorError",
    "OutputTag",
    "PipelineError",
    "Plan",
    "PrintSink",
    "ProcessFunction",
    "Sink",
    "SinkWriter",
    "Source",
    "SourceBatch",
    "SourceReader",
    "Stream",
    "UserFunctionTypeError",
    "WatermarkGenerator",
    "WatermarkOutput",
    "WatermarkStrategy",
    "from_iterable",
    "read_jsonl",
    "read_text",
]
