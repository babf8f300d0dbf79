"""Fixtures that start real `ferry gateway` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways (each with its own data dir unless given); all are stopped at the end."""
    started: list[GatewayProcess] = []

    def start(data_dir: Path | None = None, **kwargs) -> GatewayProcess:
        gateway = GatewayProcess(data_dir or tmp_path / f"gw{len(started)}", **kwargs)
        started.append(gateway)
        return gateway.start()

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(start_gateway) -> GatewayProcess:
    return start_gateway()
