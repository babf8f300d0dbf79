"""Fixtures of the firmware tests: the compiled firmware (once per session) and a gateway per test;
the heap figures the tests report, shown at the end of the run without -s."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from tests.device.fw_support import Collector, compile_firmware, compile_firmware_esp32_like


@pytest.fixture(scope="session")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_firmware(tmp_path_factory.mktemp("firmware"))


@pytest.fixture(scope="session")
def firmware_esp32_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The firmware compiled by the ESP32-like interpreter's mpy-cross (skips without that interpreter)."""
    return compile_firmware_esp32_like(tmp_path_factory.mktemp("firmware-esp32-like"))


@pytest.fixture
def collector(gateway: GatewayProcess) -> Iterator[Collector]:
    """A subscriber on the test's gateway that collects what the board publishes."""
    c = Collector(gateway.port)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path / "gateway").start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def heap_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Adds a line to the "firmware heap" section printed at the end of the run (and prints it):
    a report section of tests/conftest.py."""

    def report(line: str) -> None:
        print("\n" + line)
        request.node.user_properties.append(("report: firmware heap (docs/device.md)", f"{request.node.name}: {line}"))

    return report
