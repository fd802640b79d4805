"""Logging setup: readable console lines on a terminal, JSON lines otherwise.

Library code only calls ``structlog.get_logger("aioflow....")``; configuring output is
the application's choice. The CLI calls :func:`configure_logging`; a service embedding
aioflow may call it too, or configure structlog itself.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Literal

import structlog

from aioflow._core.errors import PipelineError

__all__ = ["LOG_LEVELS", "QUIET_LOGGERS", "configure_logging"]

LogFormat = Literal["auto", "console", "json"]
#: The levels :func:`configure_logging` takes.
LOG_LEVELS = ("debug", "info", "warning", "error")

#: Standard-library loggers of the libraries aioflow uses that say too much at ``info``
#: for a worker's log (aiokafka: about eight lines each time a consumer joins its group),
#: and the level :func:`configure_logging` gives them: ``info`` with ``level="debug"``.
QUIET_LOGGERS = {"aiokafka": "warning"}


def _numeric(level: str) -> int:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise PipelineError(f"unknown log level {level!r}; use debug, info, warning or error")
    return numeric


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", *, logger_levels: Mapping[str, str] | None = None
) -> None:
    """Send structlog output to stderr at ``level``; ``fmt="auto"`` picks console on a
    terminal and JSON lines otherwise. Standard-library loggers come out the same way, at
    ``info`` at most; those of :data:`QUIET_LOGGERS` (aiokafka) at ``warning``, unless
    ``level`` is ``debug`` or the application set their level itself. ``logger_levels``
    sets the level of standard-library loggers by name (``{"aiokafka": "info"}``)."""
    numeric = _numeric(level)
    levels = {name: _numeric(value) for name, value in (logger_levels or {}).items()}
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
    quiet = logging.INFO if numeric <= logging.DEBUG else logging.WARNING
    _set_levels({name: quiet for name in QUIET_LOGGERS}, explicit=False)
    _set_levels(levels, explicit=True)
    structlog.configure(
        processors=[*shared, exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


#: The handler :func:`configure_logging` put on the root logger (replaced by the next call).
_handler: logging.Handler | None = None
#: Logger name -> the level :func:`configure_logging` gave it by default: changed by the
#: next call, unlike a level the application set.
_defaulted: dict[str, int] = {}


def _set_levels(levels: Mapping[str, int], *, explicit: bool) -> None:
    """Set loggers' levels; a default (not ``explicit``) only where the application did not
    set one (a logger's level is unset, or the last default)."""
    for name, level in levels.items():
        logger = logging.getLogger(name)
        if explicit:
            _defaulted.pop(name, None)
        elif logger.level not in (logging.NOTSET, _defaulted.get(name)):
            continue
        else:
            _defaulted[name] = level
        logger.setLevel(level)


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
