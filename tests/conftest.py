"""Shared fixtures."""

from __future__ import annotations

import pytest

from aioflow._core.log import configure_logging


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    configure_logging("warning", "console")
