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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
