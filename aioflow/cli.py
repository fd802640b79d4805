"""The ``aioflow`` command: ``aioflow run module:app`` and ``aioflow plan module:app``.

``module:app`` is a dotted module path (``myservice.pipeline:app``) or a file path
(``examples/wordcount.py:app``); ``app`` names an :class:`aioflow.App` in it.

Exit status of ``aioflow run``: 0 the job finished (its input ended, or a stop signal
drained it or stopped it with a savepoint); 1 it failed; 2 the app could not be loaded or the command line is wrong;
128 + the signal number (130 for SIGINT, 143 for SIGTERM) it was cancelled before
completion, by a second signal or because the stop took longer than ``--stop-timeout``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import structlog

from aioflow.app import App
from aioflow.errors import AioflowError, AppLoadError
from aioflow.log import configure_logging
from aioflow.worker.stop import STOP_TIMEOUT, StopSignals

__all__ = ["EXIT_CANNOT_LOAD", "EXIT_FAILED", "EXIT_FINISHED", "load_app", "main"]

log = structlog.get_logger("aioflow.cli")

EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_CANNOT_LOAD = 2


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
        spec.loader.exec_module(module)
    else:
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and module_part.startswith(exc.name):
                raise AppLoadError(f"{target!r}: no module named {exc.name!r}") from exc
            raise
    try:
        app = getattr(module, attr)
    except AttributeError:
        apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
        hint = f"; it defines {', '.join(apps)}" if apps else "; it defines no aioflow.App"
        raise AppLoadError(f"{target!r}: module {module_part!r} has no attribute {attr!r}{hint}") from None
    if not isinstance(app, App):
        raise AppLoadError(f"{target!r}: {attr!r} is a {type(app).__name__}, not an aioflow.App")
    return app


async def _run_worker(app: App, stop_timeout: float, options: dict[str, Any]) -> int:
    """Run ``app`` until it finishes or a stop signal ends it; return the exit status."""
    job = anyio.CancelScope()
    finished = False
    with StopSignals(app, job, stop_timeout=stop_timeout) as signals, job:
        await app.run_async(**options)
        finished = True  # nothing can interrupt between the job's end and this line
    if finished:
        return EXIT_FINISHED
    log.warning("job cancelled before completion", app=app.name)
    return 128 + (signals.first or signal.SIGTERM)


def _seconds(text: str) -> float:
    seconds = float(text)
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return seconds


def _parallelism(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aioflow", description="Run and inspect aioflow pipelines.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="info", help="debug, info, warning or error (default: info)")
    common.add_argument(
        "--log-format", default="auto", choices=["auto", "console", "json"],
        help="console lines, JSON lines, or auto: console on a terminal, JSON otherwise",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", parents=[common], help="run a pipeline until its input ends (or SIGINT/SIGTERM)",
        description="Run the App named by TARGET. Bounded jobs end by themselves. SIGINT or SIGTERM "
                    "stops the job: with checkpoints, with a savepoint (open windows and timers are kept "
                    "in it, not fired); without, or with --drain, the sources stop and what is in flight "
                    "drains. A state_dir that holds a checkpoint or savepoint is resumed from.",
    )
    run.add_argument("target", metavar="TARGET", help="module.path:app or path/to/file.py:app")
    run.add_argument("--parallelism", "-p", type=_parallelism, metavar="N",
                     help="override the app's default parallelism (a restore redistributes keyed state)")
    run.add_argument("--from-savepoint", metavar="PATH",
                     help="restore the savepoint directory PATH into the app's state_dir, then resume from it")
    run.add_argument("--allow-non-restored-state", action="store_true",
                     help="restore even if the checkpoint has state of operators the job no longer has "
                          "(that state is dropped)")
    run.add_argument("--drain", action="store_true",
                     help="on SIGINT/SIGTERM drain (fire every window and timer, as at the end of input) "
                          "instead of stopping with a savepoint")
    run.add_argument(
        "--stop-timeout", type=_seconds, default=STOP_TIMEOUT, metavar="SECONDS",
        help=f"after a stop signal, cancel the job if it has not drained within SECONDS; an operator "
             f"stuck in synchronous code makes the worker exit 3 s later (default: {STOP_TIMEOUT:g})",
    )
    plan = commands.add_parser(
        "plan", parents=[common], help="print the physical plan (tasks, chaining, partitioning)",
        description="Print how the App named by TARGET is split into tasks of chained operators.",
    )
    plan.add_argument("target", metavar="TARGET", help="module.path:app or path/to/file.py:app")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--parallelism", "-p", type=_parallelism, metavar="N",
                      help="the plan with this default parallelism, as `aioflow run -p N` would run it")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``aioflow`` command; returns the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:
        print(f"aioflow: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LOAD
    try:
        app = load_app(args.target)
    except AppLoadError as exc:
        print(f"aioflow: cannot load app: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LOAD
    except (AioflowError, OSError) as exc:
        log.error("job failed", app=args.target, error=str(exc), exc_info=exc)
        return EXIT_FAILED
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
    try:
        options = {"parallelism": args.parallelism, "from_savepoint": args.from_savepoint,
                   "allow_non_restored_state": args.allow_non_restored_state, "drain_on_stop": args.drain}
        return anyio.run(_run_worker, app, args.stop_timeout, options)
    except (AioflowError, OSError) as exc:
        log.error("job failed", app=app.name, error=str(exc), exc_info=exc)
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
