"""The ``aioflow`` command: ``aioflow run module:app`` and ``aioflow plan module:app``.

``module:app`` is a dotted module path (``myservice.pipeline:app``) or a file path
(``examples/wordcount.py:app``); ``app`` names an :class:`aioflow.App` in it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import signal
import sys
from pathlib import Path

import anyio
import structlog

from aioflow.app import App
from aioflow.errors import AioflowError, AppLoadError
from aioflow.log import configure_logging

__all__ = ["load_app", "main"]

log = structlog.get_logger("aioflow.cli")


def load_app(target: str) -> App:
    """Import ``module.path:attr`` or ``path/to/file.py:attr`` and return the App it names."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise AppLoadError(f"{target!r} is not of the form 'module.path:app' or 'path/to/file.py:app'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise AppLoadError(f"{target!r}: file {module_part!r} does not exist")
        sys.path.insert(0, str(path.resolve().parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise AppLoadError(f"{target!r}: cannot import {module_part!r}")
        module = importlib.util.module_from_spec(spec)
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


async def _run_until_signalled(app: App) -> None:
    """Run ``app``. The first SIGINT or SIGTERM asks its sources to stop (the job then
    drains what is in flight); a second one cancels the job at once."""
    failure: BaseException | None = None
    async with anyio.create_task_group() as group:
        job = anyio.CancelScope()

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if app._stop:
                        log.warning("second stop signal: cancelling the job", signal=name, app=app.name)
                        job.cancel()
                    else:
                        log.info("stop requested: draining", signal=name, app=app.name)
                        app.stop()

        group.start_soon(watch)
        try:
            with job:
                await app.run_async()
        except Exception as exc:  # re-raised below, outside the task group, unwrapped
            failure = exc
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure


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
        description="Run the App named by TARGET. Bounded jobs end by themselves; SIGINT or "
                    "SIGTERM stops the sources and drains what is in flight.",
    )
    run.add_argument("target", metavar="TARGET", help="module.path:app or path/to/file.py:app")
    plan = commands.add_parser(
        "plan", parents=[common], help="print the physical plan (tasks, chaining, partitioning)",
        description="Print how the App named by TARGET is split into tasks of chained operators.",
    )
    plan.add_argument("target", metavar="TARGET", help="module.path:app or path/to/file.py:app")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:
        print(f"aioflow: {exc}", file=sys.stderr)
        return 2
    try:
        app = load_app(args.target)
        if args.command == "plan":
            plan = app.plan()
            if args.json:
                import json

                print(json.dumps(plan.to_dict(), indent=2))
            else:
                print(plan)
            return 0
        anyio.run(_run_until_signalled, app)
        return 0
    except AppLoadError as exc:
        print(f"aioflow: cannot load app: {exc}", file=sys.stderr)
        return 2
    except (AioflowError, OSError) as exc:
        log.error("job failed", app=args.target, error=str(exc), exc_info=exc)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
