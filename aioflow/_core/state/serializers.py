"""How state values and keys become bytes, and back.

Values use a :class:`Serializer` chosen per state (``ctx.value_state("n", serializer=...)``).
The default, :class:`JsonSerializer`, is orjson: ``None``, ``bool``, ``int``, finite
``float``, ``str``, lists and dicts with ``str`` keys round-trip exactly; tuples come back
as lists, ``UUID`` and ``Enum`` values as their JSON value, NaN and infinities as ``None``
(JSON has no such numbers). ``datetime``, dataclasses, sets, ``bytes`` and other classes
are refused with an error naming the operator, the state and the type, rather than
coming back as something else. :class:`PickleSerializer` keeps any picklable object as it
is, at some cost in speed and size.

Keys are encoded with :func:`encode_key` (JSON, tuples kept as tuples on the way back):
they must be the same bytes in every process, which rules out pickle.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Protocol, runtime_checkable

import orjson

from aioflow._core.errors import PipelineError

#: Types orjson would turn into strings or dicts: refused, so none comes back as another type.
_REFUSE = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

__all__ = ["JsonSerializer", "PickleSerializer", "Serializer", "decode_key", "encode_key", "serializer_named"]


@runtime_checkable
class Serializer(Protocol):
    """Turns state values into bytes and back. ``name`` is stored with the state, so a
    restart with another serializer is refused instead of misreading the bytes."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    """orjson; see the module docstring for which types round-trip."""

    name = "json"

    def dumps(self, value: Any) -> bytes:
        # A right-sized copy: orjson (3.12+) leaves ~4 KB allocated behind each result, and
        # serialised state waits in snapshots until its checkpoint commits.
        return bytes(memoryview(orjson.dumps(value, option=_REFUSE)))

    def loads(self, data: bytes) -> Any:
        return orjson.loads(data)

    def __repr__(self) -> str:
        return "JsonSerializer()"


class PickleSerializer:
    """pickle (highest protocol): any picklable Python object, as it was."""

    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return _Unpickler(io.BytesIO(data)).load()

    def __repr__(self) -> str:
        return "PickleSerializer()"


#: Where aioflow's classes were before the implementation moved under ``aioflow._core``
#: (0.1.0 pickles name them so): ``aioflow.windows.assigners`` is now
#: ``aioflow._core.windows.assigners``.
_MOVED = frozenset(
    {
        "app",
        "stream",
        "connected",
        "functions",
        "errors",
        "log",
        "retry",
        "cli",
        "testing",
        "graph",
        "runtime",
        "operators",
        "time",
        "windows",
        "state",
        "checkpoint",
        "connectors",
        "worker",
    }
)


class _Unpickler(pickle.Unpickler):
    """Reads state pickled by earlier aioflow versions too: their aioflow classes are
    looked up where they live now."""

    def find_class(self, module: str, name: str) -> Any:
        parts = module.split(".")
        if len(parts) > 1 and parts[0] == "aioflow" and parts[1] in _MOVED:
            module = "aioflow._core." + ".".join(parts[1:])
        return super().find_class(module, name)


_BY_NAME: dict[str, type[JsonSerializer] | type[PickleSerializer]] = {
    "json": JsonSerializer,
    "pickle": PickleSerializer,
}


def serializer_named(spec: Any, where: str) -> Serializer:
    """``"json"``, ``"pickle"`` or a :class:`Serializer` instance, checked."""
    if isinstance(spec, str):
        cls = _BY_NAME.get(spec)
        if cls is None:
            raise PipelineError(f"{where}: unknown serializer {spec!r}; use 'json', 'pickle' or a Serializer")
        return cls()
    if not isinstance(spec, Serializer) or not isinstance(getattr(spec, "name", None), str):
        raise PipelineError(
            f"{where}: serializer= takes 'json', 'pickle' or an object with name, dumps and loads, got {spec!r}"
        )
    return spec


def _state_key(obj: Any) -> Any:
    state_key = getattr(type(obj), "state_key", None)
    if state_key is None:
        raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")
    return state_key(obj)


def encode_key(key: Any) -> bytes:
    """Bytes of a key (or window namespace) that are the same in every process. Objects
    that JSON cannot carry may say what stands for them with a ``state_key()`` method;
    others raise ``TypeError``."""
    return orjson.dumps(key, default=_state_key, option=_REFUSE)


def _tuples(value: Any) -> Any:
    if value.__class__ is list:
        return tuple(_tuples(item) for item in value)
    return value


def decode_key(data: bytes) -> Any:
    """The key :func:`encode_key` encoded (JSON arrays become tuples: keys are hashable)."""
    return _tuples(orjson.loads(data))
