"""Command-line options that ``AIOFLOW_*`` environment variables can set.

Every option of ``aioflow run`` (``--http-port``) has a variable named after it
(``AIOFLOW_HTTP_PORT``), so a container or a unit file can configure a worker without
changing its command. A flag given on the command line wins over the variable, and the
variable over the default. An empty variable counts as unset. A switch (``--drain``)
takes ``1``, ``true``, ``yes`` or ``on`` (and ``0``, ``false``, ``no``, ``off``).

A value that does not parse is refused with an :class:`EnvironmentOptionError` naming
the variable, which the CLI reports with exit status 2, as it does a bad flag.

A variable named like one (``AIOFLOW_*``) that no option reads is most likely misspelt
(``AIOFLOW_HTTP_PROT``): :func:`unknown_variables` finds them, with the variable each one
likely meant, and the CLI logs a warning for each when it starts.

Options are declared with :meth:`EnvironmentOptions.add` instead of
``parser.add_argument``; after parsing, :meth:`EnvironmentOptions.resolve` fills in what
the command line did not give. Only the options of the command being run are read, so a
variable meant for ``aioflow run`` never breaks ``aioflow plan``.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["ENV_PREFIX", "EnvironmentOptionError", "EnvironmentOptions", "env_var", "unknown_variables"]

#: What every variable's name starts with.
ENV_PREFIX = "AIOFLOW_"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class EnvironmentOptionError(ValueError):
    """An ``AIOFLOW_*`` variable holds a value its option does not take. The CLI reports
    it as a wrong command line (exit status 2, the message naming the variable): it never
    reaches users as an exception, so it is not in the tree of :mod:`aioflow._core.errors`."""


def env_var(action: argparse.Action) -> str:
    """The variable of an option: ``--http-port`` -> ``AIOFLOW_HTTP_PORT``."""
    flag = max(action.option_strings, key=len)
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


class EnvironmentOptions:
    """The options of one parser that environment variables can set, with their defaults."""

    def __init__(self) -> None:
        self._options: list[tuple[argparse.Action, Any]] = []
        self._env_types: dict[argparse.Action, Callable[[str], Any]] = {}

    def add(
        self,
        parser: argparse.ArgumentParser,
        *flags: str,
        default: Any = None,
        help: str = "",  # noqa: A002
        env_type: Callable[[str], Any] | None = None,
        **kwargs: Any,
    ) -> argparse.Action:
        """``parser.add_argument(*flags, ...)``, with ``[env AIOFLOW_...]`` added to its help.

        The parser's own default stays ``None``, to tell a flag given on the command line
        from one that was not; ``default`` applies after the environment (:meth:`resolve`).
        ``env_type`` converts and checks the variable's value when that should differ
        from the flag's ``type`` (a flag checked later, by the code that uses it).
        """
        action = parser.add_argument(*flags, default=None, **kwargs)
        action.help = f"{help} [env {env_var(action)}]" if help else f"[env {env_var(action)}]"
        self._options.append((action, default))
        if env_type is not None:
            self._env_types[action] = env_type
        return action

    def resolve(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        """Set each option the command line did not give from its variable, else its
        default; raise :class:`EnvironmentOptionError` naming a variable that does not parse."""
        for action, default in self._options:
            if getattr(args, action.dest, None) is not None:
                continue  # given as a flag: it wins
            name = env_var(action)
            text = environ.get(name, "")
            value = default if text == "" else _parse(action, name, text, self._env_types.get(action))
            setattr(args, action.dest, value)

    def variables(self) -> list[str]:
        """The variables these options read, in declaration order."""
        return [env_var(action) for action, _ in self._options]


def unknown_variables(environ: Mapping[str, str], known: Iterable[str]) -> dict[str, str | None]:
    """The ``AIOFLOW_*`` variables of ``environ`` that are not ``known``, in name order, each
    with the known variable it likely misspells (``None`` when none is close)."""
    options = {name.removeprefix(ENV_PREFIX) for name in known}  # the prefix they share says nothing

    def likely(option: str) -> str | None:
        close = difflib.get_close_matches(option, options, n=1)
        return ENV_PREFIX + close[0] if close else None

    return {
        name: likely(name.removeprefix(ENV_PREFIX))
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name.removeprefix(ENV_PREFIX) not in options
    }


def _parse(action: argparse.Action, name: str, text: str, env_type: Callable[[str], Any] | None) -> Any:
    """The value of variable ``name`` for ``action``, converted and checked as the flag's would be."""
    if isinstance(action, argparse._StoreTrueAction):
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise EnvironmentOptionError(f"{name}={text!r}: expected one of {', '.join(_TRUE + _FALSE)}")
    convert = env_type or (action.type if callable(action.type) else None)
    try:
        value = convert(text) if convert is not None else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise EnvironmentOptionError(f"{name}={text!r}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise EnvironmentOptionError(f"{name}={text!r}: expected one of {choices}")
    return value
