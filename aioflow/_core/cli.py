"""The ``aioflow`` command: ``aioflow run module:app`` and ``aioflow plan module:app``.

``module:app`` is a dotted module path (``myservice.pipeline:app``) or a file path
(``examples/wordcount.py:app``); ``app`` names an :class:`aioflow.App` in it.

Exit status of ``aioflow run``: 0 the job finished (its input ended, or a stop signal
drained it or stopped it with a savepoint); 1 it failed; 2 the app could not be loaded
(importing its module raised: ``cannot load app`` is logged with the traceback) or the command line is wrong;
3 the worker refused to run (:class:`~aioflow._core.errors.RefusedError`: corrupt, missing or
foreign state, a checkpoint the job cannot resume as it is): restarting it would repeat
that, so a supervisor should not; 128 + the signal number (130 for SIGINT, 143 for SIGTERM) it was cancelled before
completion, by a second signal or because the stop took longer than ``--stop-timeout``.

Configuration: every option can also be set by an environment variable named after it
(``--http-port`` -> ``AIOFLOW_HTTP_PORT``, ``--drain`` -> ``AIOFLOW_DRAIN=1``); a flag on
the command line wins over the variable, and a variable that does not parse is refused
naming it (exit status 2). See :mod:`aioflow._core.worker.config`. ``aioflow run`` reads
``AIOFLOW_LOG_LEVEL``, ``AIOFLOW_LOG_FORMAT``, ``AIOFLOW_PARALLELISM``,
``AIOFLOW_STATE_DIR``, ``AIOFLOW_CHECKPOINT_INTERVAL``, ``AIOFLOW_CHECKPOINT_STORAGE``,
``AIOFLOW_FROM_SAVEPOINT``,
``AIOFLOW_ALLOW_NON_RESTORED_STATE``, ``AIOFLOW_DRAIN``, ``AIOFLOW_STOP_TIMEOUT``,
``AIOFLOW_HTTP_PORT``, ``AIOFLOW_HTTP_HOST``, ``AIOFLOW_HEALTH_MAX_CHECKPOINT_FAILURES``,
``AIOFLOW_HEALTH_MAX_WATERMARK_LAG`` and ``AIOFLOW_HEALTH_MAX_SOURCE_LAG``;
``aioflow plan`` the log options and ``AIOFLOW_PARALLELISM``. An ``AIOFLOW_*`` variable
that no option reads is logged as a warning naming the one it likely misspells, and a
misspelt flag is refused naming the flag it likely meant.

``--http-port N`` serves ``/health`` (200 while the job runs and is caught up, else 503
with a JSON body saying why) and ``/metrics`` (Prometheus text format) on
``--http-host`` (127.0.0.1 by default); see :mod:`aioflow._core.worker.health`,
:mod:`aioflow._core.worker.collectors` and docs/deployment.md.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import faulthandler
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import structlog
from structlog.contextvars import bound_contextvars

from aioflow._core.app import App
from aioflow._core.checkpoint.storage import storage_at
from aioflow._core.errors import AioflowError, AppLoadError, PipelineError, RefusedError
from aioflow._core.log import LOG_LEVELS, configure_logging
from aioflow._core.worker.collectors import register_job_metrics
from aioflow._core.worker.config import EnvironmentOptionError, EnvironmentOptions, unknown_variables
from aioflow._core.worker.health import DEFAULT_MAX_CHECKPOINT_FAILURES, HealthCheck
from aioflow._core.worker.http import DEFAULT_HOST, HttpServer, worker_routes
from aioflow._core.worker.metrics import MetricsRegistry
from aioflow._core.worker.stop import STOP_TIMEOUT, StopSignals

__all__ = [
    "EXIT_CANNOT_LOAD",
    "EXIT_FAILED",
    "EXIT_FINISHED",
    "EXIT_REFUSED",
    "HttpOptions",
    "load_app",
    "main",
    "parse_args",
]

log = structlog.get_logger("aioflow.cli")

EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_CANNOT_LOAD = 2
EXIT_REFUSED = 3


def load_app(target: str) -> App:
    """Import ``module.path:attr`` or ``path/to/file.py:attr`` and return the App it names."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise AppLoadError(f"{target!r} is not of the form 'module.path:app' or 'path/to/file.py:app'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise AppLoadError(f"{target!r}: file {module_part!r} does not exist")
        # The file is loaded under a private name and its folder goes last on the path: a
        # pipeline called json.py must shadow neither the standard json module nor any other.
        # Under its own name too, unless that name is taken, so that sibling modules that
        # import it (`from pipeline import events`) share its App instead of loading a copy.
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.append(folder)
        name = f"_aioflow_target_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise AppLoadError(f"{target!r}: cannot import {module_part!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        existing = importlib.util.find_spec(path.stem) if path.stem.isidentifier() else None
        if existing is not None and existing.origin == str(path.resolve()):
            sys.modules[path.stem] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise _import_failed(target, module_part, exc) from exc
    else:
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and (module_part == exc.name or module_part.startswith(exc.name + ".")):
                raise AppLoadError(f"{target!r}: no module named {exc.name!r}") from None
            raise _import_failed(target, module_part, exc) from exc  # one the module imports
        except Exception as exc:
            raise _import_failed(target, module_part, exc) from exc
    try:
        app = getattr(module, attr)
    except AttributeError:
        apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
        hint = f"; it defines {', '.join(apps)}" if apps else "; it defines no aioflow.App"
        raise AppLoadError(f"{target!r}: module {module_part!r} has no attribute {attr!r}{hint}") from None
    if not isinstance(app, App):
        raise AppLoadError(f"{target!r}: {attr!r} is a {type(app).__name__}, not an aioflow.App")
    return app


def _import_failed(target: str, module_part: str, exc: Exception) -> AppLoadError:
    """The :class:`AppLoadError` for a module whose import raised ``exc`` (its cause),
    whose traceback is cut to the frames of the user's code: the loader's say nothing."""
    trace = exc.__traceback__
    while trace is not None and _is_loader(trace.tb_frame.f_code.co_filename):
        trace = trace.tb_next
    exc.__traceback__ = trace  # None for a SyntaxError: it shows its file and line itself
    return AppLoadError(f"{target!r}: importing {module_part!r} raised {type(exc).__name__}: {exc}")


def _is_loader(filename: str) -> bool:
    return filename in (__file__, importlib.__file__) or filename.startswith("<frozen importlib")


@dataclass(frozen=True)
class HttpOptions:
    """``--http-host/--http-port`` and the limits of ``/health``."""

    host: str
    port: int
    max_checkpoint_failures: int = DEFAULT_MAX_CHECKPOINT_FAILURES
    max_watermark_lag: float | None = None
    max_source_lag: int | None = None


async def _run_worker(app: App, stop_timeout: float, options: dict[str, Any], http: HttpOptions | None = None) -> int:
    """Run ``app`` until it finishes or a stop signal ends it; return the exit status.
    With ``http``, serve ``/health`` and ``/metrics`` next to the job while it runs."""
    with bound_contextvars(app=app.name):  # the worker's log lines name the app, as the job's do
        return await _serve_and_run(app, stop_timeout, options, http)


async def _serve_and_run(app: App, stop_timeout: float, options: dict[str, Any], http: HttpOptions | None) -> int:
    job = anyio.CancelScope()
    finished = False
    ended: list[str] = []  # how the job ended, for /health while the worker exits
    server = None
    if http is not None:
        registry = MetricsRegistry()
        register_job_metrics(registry, lambda: app.job)
        health = HealthCheck(
            app.name,
            lambda: app.job,
            ended=lambda: ended[-1] if ended else None,
            max_checkpoint_failures=http.max_checkpoint_failures,
            max_watermark_lag=http.max_watermark_lag,
            max_source_lag=http.max_source_lag,
        )
        server = HttpServer(worker_routes(health, registry), host=http.host, port=http.port)
        try:
            await server.open()
        except OSError as exc:
            log.error("cannot start the http server", app=app.name, host=http.host, port=http.port, error=str(exc))
            return EXIT_FAILED
    failure: BaseException | None = None
    with StopSignals(app, job, stop_timeout=stop_timeout) as signals, job:
        async with anyio.create_task_group() as group:
            if server is not None:
                group.start_soon(server.serve, name="aioflow http server")
            try:
                await app.run_async(**options)
                finished = True  # nothing can interrupt between the job's end and this line
                ended.append("finished")
            except anyio.get_cancelled_exc_class():
                ended.append("cancelled")
                raise
            except BaseException as exc:  # raised below as it is, not inside an exception group
                ended.append("failed")
                failure = exc
            group.cancel_scope.cancel()  # the server ends with the job
    if failure is not None:
        raise failure
    if finished:
        return EXIT_FINISHED
    log.warning("job cancelled before completion", app=app.name)
    return 128 + (signals.first or signal.SIGTERM)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return seconds


def _positive_seconds(text: str) -> float:
    try:
        seconds = _seconds(text)
    except argparse.ArgumentTypeError:
        seconds = 0.0
    if seconds == 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return seconds


def _storage_location(text: str) -> str:
    """A checkpoint storage location the worker can use (checked now: a wrong one is a
    wrong command line, exit status 2)."""
    try:
        storage_at(text)
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


_parallelism = _positive_int


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
    return value


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


class _Parser(NamedTuple):
    parser: argparse.ArgumentParser
    #: Per command: its parser.
    commands: dict[str, argparse.ArgumentParser]
    #: Per command: the options that AIOFLOW_* variables can set.
    env: dict[str, list[EnvironmentOptions]]


def _parser() -> _Parser:
    parser = argparse.ArgumentParser(
        prog="aioflow",
        description="Run and inspect aioflow pipelines.",
        epilog="Every option (except plan's --json) can also be set by an environment variable named after it, "
        "shown as [env AIOFLOW_...]: a flag on the command line wins over the variable.",
    )
    parser.add_argument("--version", action="version", version=f"aioflow {importlib.metadata.version('aioflow')}")
    common = argparse.ArgumentParser(add_help=False)
    shared = EnvironmentOptions()
    shared.add(
        common,
        "--log-level",
        env_type=_log_level,
        default="info",
        metavar="LEVEL",
        help="debug, info, warning or error (default: info)",
    )
    shared.add(
        common,
        "--log-format",
        default="auto",
        choices=["auto", "console", "json"],
        help="console lines, JSON lines, or auto: console on a terminal, JSON otherwise (default: auto)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        parents=[common],
        help="run a pipeline until its input ends (or SIGINT/SIGTERM)",
        description="Run the App named by TARGET. Bounded jobs end by themselves. SIGINT or SIGTERM "
        "stops the job: with checkpoints, with a savepoint (open windows and timers are kept "
        "in it, not fired); without, or with --drain, the sources stop and what is in flight "
        "drains. A state_dir that holds a checkpoint or savepoint is resumed from. Each option "
        "can be set by the environment variable shown with it; a flag wins over the variable.",
    )
    run.add_argument("target", metavar="TARGET", help="module.path:app or path/to/file.py:app")
    env = EnvironmentOptions()
    env.add(
        run,
        "--parallelism",
        "-p",
        type=_parallelism,
        metavar="N",
        help="override the app's default parallelism (a restore redistributes keyed state)",
    )
    env.add(
        run,
        "--state-dir",
        metavar="PATH",
        help="override the app's state_dir: where the working copy of keyed state (LMDB), savepoints and, "
        "by default, checkpoints live",
    )
    env.add(
        run,
        "--checkpoint-storage",
        type=_storage_location,
        metavar="PATH_OR_URL",
        help="override the app's checkpoint_storage: a directory or file:// URL where checkpoints are "
        "written (default: STATE_DIR/checkpoints)",
    )
    env.add(
        run,
        "--checkpoint-interval",
        type=_positive_seconds,
        metavar="SECONDS",
        help="override the app's checkpoint_interval (needs a state directory)",
    )
    env.add(
        run,
        "--from-savepoint",
        metavar="PATH",
        help="rebuild the app's state_dir from the savepoint PATH (or a retained checkpoint's folder), then "
        "resume from it as a new job",
    )
    env.add(
        run,
        "--allow-non-restored-state",
        action="store_true",
        default=False,
        help="restore even if the checkpoint has state of operators the job no longer has (that state is dropped)",
    )
    env.add(
        run,
        "--drain",
        action="store_true",
        default=False,
        help="on SIGINT/SIGTERM drain (fire every window and timer, as at the end of input) "
        "instead of stopping with a savepoint",
    )
    env.add(
        run,
        "--stop-timeout",
        type=_seconds,
        default=STOP_TIMEOUT,
        metavar="SECONDS",
        help=f"after a stop signal, cancel the job if it has not drained within SECONDS; an operator "
        f"stuck in synchronous code makes the worker exit 3 s later (default: {STOP_TIMEOUT:g})",
    )
    env.add(
        run,
        "--http-port",
        type=_port,
        metavar="N",
        help="serve /health and /metrics (Prometheus) over HTTP on port N; 0 picks a free port, "
        "logged as `http server started` (default: no HTTP server)",
    )
    env.add(
        run,
        "--http-host",
        default=DEFAULT_HOST,
        metavar="HOST",
        help=f"the address the HTTP server listens on (default: {DEFAULT_HOST}, this machine only; "
        "0.0.0.0 for every interface)",
    )
    env.add(
        run,
        "--health-max-checkpoint-failures",
        type=_positive_int,
        metavar="N",
        default=DEFAULT_MAX_CHECKPOINT_FAILURES,
        help=f"/health answers 503 once N checkpoints in a row failed (default: {DEFAULT_MAX_CHECKPOINT_FAILURES})",
    )
    env.add(
        run,
        "--health-max-watermark-lag",
        type=_positive_seconds,
        metavar="SECONDS",
        help="/health answers 503 while a source's watermark is more than SECONDS behind the wall clock "
        "(default: no limit)",
    )
    env.add(
        run,
        "--health-max-source-lag",
        type=_positive_int,
        metavar="RECORDS",
        help="/health answers 503 while a source is more than RECORDS behind the end of a split, "
        "e.g. Kafka consumer lag (default: no limit)",
    )
    plan = commands.add_parser(
        "plan",
        parents=[common],
        help="print the physical plan (tasks, chaining, partitioning)",
        description="Print how the App named by TARGET is split into tasks of chained operators.",
    )
    plan.add_argument("target", metavar="TARGET", help="module.path:app or path/to/file.py:app")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan_env = EnvironmentOptions()
    plan_env.add(
        plan,
        "--parallelism",
        "-p",
        type=_parallelism,
        metavar="N",
        help="the plan with this default parallelism, as `aioflow run -p N` would run it",
    )
    return _Parser(parser, {"run": run, "plan": plan}, {"run": [shared, env], "plan": [shared, plan_env]})


def parse_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The command line, with what it does not give taken from ``AIOFLOW_*`` variables of
    ``environ`` (default: ``os.environ``), then from the defaults. A bad flag exits (as
    argparse does); a bad variable raises :class:`EnvironmentOptionError` naming it."""
    parser, commands, env = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _unrecognized(commands[args.command], extras)
    for options in env[args.command]:
        options.resolve(args, os.environ if environ is None else environ)
    return args


def _unrecognized(command: argparse.ArgumentParser, extras: list[str]) -> None:
    """Exit as argparse does on arguments ``command`` does not take, naming the option
    each misspelt one likely meant (``--http-prot``: ``--http-port``). Python 3.14's
    ``suggest_on_error``, for the Python we run on."""
    known = [flag for flag in command._option_string_actions if flag.startswith("--")]
    hints = []
    for extra in extras:
        flag = extra.partition("=")[0]
        if flag.startswith("--"):
            close = difflib.get_close_matches(flag, known, n=1)
            if close:
                hints.append(f"{close[0]} for {flag}")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def main(argv: list[str] | None = None) -> int:
    """The ``aioflow`` command; returns the exit status (see the module docstring)."""
    try:
        args = parse_args(argv)
    except EnvironmentOptionError as exc:
        print(f"aioflow: environment variable {exc}", file=sys.stderr)
        return EXIT_CANNOT_LOAD
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:
        print(f"aioflow: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LOAD
    known = {name for options in _parser().env.values() for each in options for name in each.variables()}
    for name, likely in unknown_variables(os.environ, known).items():  # a misspelt one is silently unused
        fields = {} if likely is None else {"did_you_mean": likely}
        log.warning("unknown environment variable: no option reads it", variable=name, **fields)
    try:
        app = load_app(args.target)
    except AppLoadError as exc:
        if exc.__cause__ is None:  # the target names nothing loadable: a wrong command line
            print(f"aioflow: cannot load app: {exc}", file=sys.stderr)
        else:  # the user's code raised: what it raised, with its traceback, in the log's format
            log.error("cannot load app", target=args.target, error=str(exc), exc_info=exc.__cause__)
        return EXIT_CANNOT_LOAD
    if args.command == "plan":
        try:
            plan = app.plan(parallelism=args.parallelism)
        except AioflowError as exc:
            print(f"aioflow: {exc}", file=sys.stderr)
            return EXIT_CANNOT_LOAD
        try:
            print(json.dumps(plan.to_dict(), indent=2) if args.json else plan, flush=True)
        except BrokenPipeError:  # `aioflow plan ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FINISHED
    # LMDB asserts on pages it finds damaged (SIGABRT): then at least the Python stack is shown.
    with contextlib.suppress(io.UnsupportedOperation, ValueError):  # stderr without a file (captured)
        faulthandler.enable()
    settings = {
        "from_savepoint": args.from_savepoint,
        "allow_non_restored_state": args.allow_non_restored_state,
        "drain_on_stop": args.drain,
        "state_dir": args.state_dir,
        "checkpoint_interval": args.checkpoint_interval,
        "checkpoint_storage": args.checkpoint_storage,
    }
    try:  # the app's settings with the command line's, checked before anything runs
        app._config(**settings)
    except PipelineError as exc:  # checkpoints without a state directory, say
        print(f"aioflow: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LOAD
    http = None
    if args.http_port is not None:
        http = HttpOptions(
            args.http_host,
            args.http_port,
            args.health_max_checkpoint_failures,
            args.health_max_watermark_lag,
            args.health_max_source_lag,
        )
    try:
        options = {"parallelism": args.parallelism, **settings}
        return anyio.run(_run_worker, app, args.stop_timeout, options, http, backend="asyncio")
    except RefusedError as exc:
        log.error("refused", app=app.name, error=str(exc), exit_status=EXIT_REFUSED)
        return EXIT_REFUSED
    except Exception as exc:  # whatever it was: one "job failed" line, in the log's format
        log.error("job failed", app=app.name, error=str(exc) or repr(exc), exc_info=exc)
        return EXIT_FAILED
    except SystemExit as exc:
        log.error("job failed", app=app.name, error=f"user code raised SystemExit({exc.code!r})", exc_info=exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        log.warning("job cancelled before completion", app=app.name, reason="KeyboardInterrupt")
        return 128 + signal.SIGINT
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # the job has ended: a late signal changes nothing
            signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
