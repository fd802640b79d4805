"""The public surface (as trio's ``test_exports``): the public modules are the ones listed
here; each public name is exported from exactly one of them, names its public module,
and is no private helper; every import path the docs and examples use is public."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import aioflow

ROOT = Path(__file__).parent.parent
#: The modules users import. Anything else under ``aioflow`` is private (``aioflow._core``).
PUBLIC = ("aioflow", "aioflow.kafka", "aioflow.testing")


def _public_modules() -> dict[str, ModuleType]:
    return {name: importlib.import_module(name) for name in PUBLIC}


def test_every_module_outside_the_private_core_is_a_listed_public_one() -> None:
    found = {"aioflow"} | {info.name for info in pkgutil.iter_modules(aioflow.__path__, "aioflow.")}
    assert found - {"aioflow._core", "aioflow.__main__"} == set(PUBLIC)


@pytest.mark.parametrize("module", PUBLIC)
def test_all_is_complete_and_names_only_what_the_module_has(module: str) -> None:
    namespace = importlib.import_module(module)
    exported = namespace.__all__
    assert len(exported) == len(set(exported)), module
    assert not [name for name in exported if name.startswith("_")]
    for name in exported:
        assert hasattr(namespace, name), f"{module}.{name}"
    extras = {name for name in vars(namespace) if not name.startswith("_")} - set(exported)
    exported_anywhere = {id(getattr(public, name)) for public in _public_modules().values() for name in public.__all__}
    # Anything else a public module holds is a submodule, or what it imported for its own use:
    # never something of aioflow's that only it has.
    stray = [
        name
        for name in extras
        if not isinstance(getattr(namespace, name), ModuleType)
        and getattr(getattr(namespace, name), "__module__", "").startswith("aioflow")
        and id(getattr(namespace, name)) not in exported_anywhere
    ]
    assert stray == [], module


def test_each_public_name_is_exported_from_exactly_one_public_module() -> None:
    homes: dict[int, list[str]] = {}
    for module_name, module in _public_modules().items():
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, (type, type(test_each_public_name_is_exported_from_exactly_one_public_module))):
                homes.setdefault(id(value), []).append(f"{module_name}.{name}")
    assert [places for places in homes.values() if len(places) > 1] == []


def test_public_classes_and_functions_name_their_public_module() -> None:
    wrong = []
    for module_name, module in _public_modules().items():
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) and getattr(value, "__module__", module_name) != module_name:
                wrong.append(f"{module_name}.{name}: {value.__module__}")
    assert wrong == []
    assert repr(aioflow.App) == "<class 'aioflow.App'>"


# -- what the docs and examples import -------------------------------------------------------------------------


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.py"))]


_DOTTED = re.compile(r"\baioflow(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_AF_ATTRIBUTE = re.compile(r"\baf\.([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?")


def _code_of(path: Path) -> str:
    """Python code: the file, or a Markdown file's ``python`` blocks and inline code."""
    text = path.read_text()
    if path.suffix == ".py":
        return text
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(blocks + inline)


def _logger_names() -> set[str]:
    """The loggers aioflow logs under (documented; not import paths)."""
    source = "\n".join(path.read_text() for path in (ROOT / "aioflow").rglob("*.py"))
    return set(re.findall(r'get_logger\("(aioflow[.a-z_]*)"\)', source))


def _resolves(dotted: str) -> bool:
    """``aioflow.x.y``: a public module, or a name a public module exports (and its attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if module in PUBLIC:
            value: object = importlib.import_module(module)
            for i, attribute in enumerate(parts[cut:]):
                if i == 0 and attribute not in importlib.import_module(module).__all__:
                    return False
                if not hasattr(value, attribute):
                    return False
                value = getattr(value, attribute)
            return True
    return False


def test_every_import_path_in_the_docs_and_examples_is_public() -> None:
    used: dict[str, set[str]] = {}
    for path in _documents():
        code = _code_of(path)
        where = str(path.relative_to(ROOT))
        for dotted in _DOTTED.findall(code):
            used.setdefault(dotted, set()).add(where)
        for first, second in _AF_ATTRIBUTE.findall(code):
            dotted = f"aioflow.{first}" + (f".{second}" if first == "kafka" and second else "")
            used.setdefault(dotted, set()).add(where)
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aioflow"):
                    for alias in node.names:
                        used.setdefault(f"{node.module}.{alias.name}", set()).add(where)
    assert len(used) > 50  # the docs were read
    assert "aioflow.kafka.KafkaSource" in used and "aioflow.App" in used
    loggers = _logger_names()
    assert "aioflow.runtime" in loggers
    assert {
        dotted: sorted(places) for dotted, places in used.items() if dotted not in loggers and not _resolves(dotted)
    } == {}


def test_py_typed_marker_ships() -> None:
    from importlib.resources import files

    assert files("aioflow").joinpath("py.typed").is_file()


def test_run_async_outside_an_asyncio_loop_says_aioflow_runs_on_asyncio_only() -> None:
    app = aioflow.App("outside")
    app.source(aioflow.from_iterable([1])).sink(aioflow.CollectSink())
    coroutine = app.run_async()
    with pytest.raises(aioflow.PipelineError, match="aioflow runs on asyncio only"):
        coroutine.send(None)  # driven by hand, as another event loop would: no asyncio loop runs
