"""Fixtures of the firmware tests: the compiled firmware (once per session) and a gateway per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from tests.device.fw_support import compile_firmware


@pytest.fixture(scope="session")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_firmware(tmp_path_factory.mktemp("firmware"))


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path / "gateway").start()
    try:
        yield gw
    finally:
        gw.stop()
