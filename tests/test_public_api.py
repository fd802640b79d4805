"""The public surface: ``aioflow.__all__`` is complete and every module declares ``__all__``."""

from __future__ import annotations

import importlib
import pkgutil

import aioflow


def test_all_names_exist_and_are_unique() -> None:
    assert len(aioflow.__all__) == len(set(aioflow.__all__))
    for name in aioflow.__all__:
        assert hasattr(aioflow, name), name


def test_public_classes_are_exported() -> None:
    public = {name for name in dir(aioflow) if not name.startswith("_") and name[0].isupper()}
    assert public <= set(aioflow.__all__)


def test_every_module_declares_all() -> None:
    missing = []
    for info in pkgutil.walk_packages(aioflow.__path__, "aioflow."):
        if info.ispkg or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if not hasattr(module, "__all__"):
            missing.append(info.name)
    assert missing == []


def test_py_typed_marker_ships() -> None:
    from importlib.resources import files

    assert files("aioflow").joinpath("py.typed").is_file()
