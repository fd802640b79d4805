"""Logging setup: readable console lines on a terminal, JSON lines otherwise.

Library code only calls ``structlog.get_logger("aioflow....")``; configuring output is
the application's choice. The CLI calls :func:`configure_logging`; a service embedding
aioflow may call it too, or configure structlog itself.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["LOG_LEVELS", "configure_logging"]

LogFormat = Literal["auto", "console", "json"]
#: The levels :func:`configure_logging` takes.
LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Send structlog output to stderr at ``level``; ``fmt="auto"`` picks console on a
    terminal and JSON lines otherwise."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    exc_info = structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info
    _route_standard_logging(numeric, [*shared, structlog.stdlib.add_logger_name], exc_info, renderer)
    structlog.configure(
        processors=[*shared, exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


#: The handler :func:`configure_logging` put on the root logger (replaced by the next call).
_handler: logging.Handler | None = None


def _route_standard_logging(
    level: int,
    pre_chain: list[structlog.typing.Processor],
    exc_info: structlog.typing.Processor,
    renderer: structlog.typing.Processor,
) -> None:
    """Render the standard library's log records (aiokafka's, say) as aioflow's own lines,
    in the same format, with the logger's name: a JSON log stays all JSON. Libraries log at
    ``info`` at most: their debug lines (one per fetch) drown everything else."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, exc_info, renderer],
        )
    )
    root.addHandler(_handler)
    root.setLevel(max(level, logging.INFO))
