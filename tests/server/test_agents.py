"""The agents, through Faust's `agent.test_context()`: no broker, the real tables in memory."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest

from server.app import create_app
from server.config import ServerConfig
from server.streams import Streams, wire

from tests.server.helpers import T0, reading, status


@pytest.fixture
def streams(tmp_path) -> Streams:
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-agents", data_dir=str(tmp_path),
                          allowed_lateness_s=0, partitions=1)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()
    return streams


def test_ingest_dedupes_accounts_and_publishes_closed_minutes(streams: Streams) -> None:
    base = T0 - T0 % 60_000

    async def run() -> list:
        with mock.patch.object(streams.series, "send", mock.AsyncMock()) as send:
            async with streams.ingest.test_context() as agent:
                for seq in (0, 1, 1, 3):
                    await agent.put(reading(seq, ts_ms=base + seq * 1000), key=b"dev-01", timestamp=1.0)
                await agent.put(reading(4, ts_ms=base + 60_000), key=b"dev-01", timestamp=1.0)
                await agent.put(b"{}", key=b"dev-01", timestamp=1.0)
            return [call.kwargs for call in send.await_args_list]

    sent = asyncio.run(run())
    account = streams.accounts["dev-01"]
    assert (account["received"], account["duplicates"], account["invalid"]) == (4, 1, 1)
    assert account["boots"]["1"]["high"] == 4
    assert [(s["key"], s["value"].metric, s["value"].start_ms, s["value"].count) for s in sent] == \
        [("dev-01", "temp_c", base, 3)]
    assert streams.windows["dev-01"]["max_event_ms"] == base + 60_000
    assert streams.history["dev-01"]["1m"]["temp_c"] == [[base, base + 60_000, 3, 20.0, 23.0, 64.0 / 3, 23.0]]


def test_unsynced_reading_is_windowed_at_the_record_time(streams: Streams) -> None:
    async def run() -> None:
        with mock.patch.object(streams.series, "send", mock.AsyncMock()):
            async with streams.ingest.test_context() as agent:
                await agent.put(reading(0, ts_ms=42, synced=False), key=b"dev-01", timestamp=T0 / 1000)

    asyncio.run(run())
    assert streams.windows["dev-01"]["max_event_ms"] == T0


def test_status_agent_adds_device_losses(streams: Streams) -> None:
    async def run() -> None:
        async with streams.statuses.test_context() as agent:
            await agent.put(status(2), key=b"dev-01")
            await agent.put(status(5), key=b"dev-01")

    asyncio.run(run())
    assert streams.device_status["dev-01"]["lost_at_device"] == 5
