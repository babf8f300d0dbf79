"""The ingest agent and the worker's table writes through Faust, with no broker: the real tables in memory."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest

from ferry.server.app import create_app
from ferry.server.config import ServerConfig
from ferry.server.logic import STATUS, TELEMETRY, Record
from ferry.server.streams import Streams, wire

from tests.server.helpers import T0, reading, status


@pytest.fixture
def streams(tmp_path) -> Streams:
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-agents", data_dir=str(tmp_path),
                          allowed_lateness_s=0, partitions=1, batch_within_ms=10)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()
    return streams


def sent_values(send: mock.AsyncMock) -> list:
    return [call.kwargs for call in send.await_args_list]


def test_ingest_dedupes_accounts_and_publishes_closed_minutes(streams: Streams) -> None:
    base = T0 - T0 % 60_000

    async def run() -> list:
        with mock.patch.object(streams.series, "send", mock.AsyncMock()) as send, \
                mock.patch.object(streams.devices, "send_changelog") as devices_log, \
                mock.patch.object(streams.history, "send_changelog") as history_log:
            async with streams.ingest.test_context() as agent:
                for seq in (0, 1, 1, 3):
                    await agent.put(reading(seq, ts_ms=base + seq * 1000), key=b"dev-01", timestamp=1.0)
                await agent.put(reading(4, ts_ms=base + 60_000), key=b"dev-01", timestamp=1.0)
                await agent.put(b"{}", key=b"dev-01", timestamp=1.0)
                for _ in range(100):
                    if streams.worker.counts.get("telemetry.invalid"):
                        break
                    await asyncio.sleep(0.02)
            # Each batch writes the device's state once, to the source record's partition.
            assert devices_log.call_count <= 6 and {c.args[0] for c in devices_log.call_args_list} == {0}
            assert history_log.call_count == 1
            return sent_values(send)

    sent = asyncio.run(run())
    account = streams.devices["dev-01"]["account"]
    assert (account["received"], account["duplicates"], account["invalid"]) == (4, 1, 1)
    assert account["boots"]["1"]["high"] == 4
    assert [(s["key"], s["value"].metric, s["value"].start_ms, s["value"].count) for s in sent] == \
        [("dev-01", "temp_c", base, 3)]
    assert streams.devices["dev-01"]["windows"]["max_event_ms"] == base + 60_000
    assert streams.history["dev-01"]["1m"]["temp_c"] == [[base, base + 60_000, 3, 20.0, 23.0, 64.0 / 3, 23.0]]


def test_unsynced_reading_is_windowed_at_the_record_time(streams: Streams) -> None:
    async def run() -> None:
        with mock.patch.object(streams.series, "send", mock.AsyncMock()), \
                mock.patch.object(streams.devices, "send_changelog"):
            await streams.worker.process([Record("dev-01", TELEMETRY, reading(0, ts_ms=42, synced=False),
                                                 T0, T0, 0)])

    asyncio.run(run())
    assert streams.devices["dev-01"]["windows"]["max_event_ms"] == T0


def test_status_adds_device_losses_and_lwt_raises_an_offline_alert(streams: Streams) -> None:
    offline = b'{"v":1,"dev":"dev-01","state":"offline","boot":1}'

    async def run() -> list:
        with mock.patch.object(streams.alerts, "send", mock.AsyncMock()) as send, \
                mock.patch.object(streams.devices, "send_changelog") as log:
            await streams.worker.process([Record("dev-01", STATUS, status(2), T0, T0, 0),
                                          Record("dev-01", STATUS, status(5), T0, T0 + 1, 0)])
            await streams.worker.process([Record("dev-01", STATUS, offline, T0, T0 + 2, 0)])
            assert [c.args[0] for c in log.call_args_list] == [0, 0]  # one write per batch
            return sent_values(send)

    sent = asyncio.run(run())
    value = streams.devices["dev-01"]
    assert value["status"]["lost_at_device"] == 5
    assert [(s["key"], s["value"]["kind"]) for s in sent] == [("dev-01", "offline")]
    assert value["alerts_raised"] == 1 and value["alerts"][0]["kind"] == "offline"


def test_the_health_timer_raises_offline_for_a_silent_device(streams: Streams) -> None:
    async def run() -> tuple[int, int, list]:
        with mock.patch.object(streams.alerts, "send", mock.AsyncMock()) as send, \
                mock.patch.object(streams.series, "send", mock.AsyncMock()), \
                mock.patch.object(streams.devices, "send_changelog"), \
                mock.patch.object(streams.history, "send_changelog"):
            await streams.worker.process([Record("dev-01", TELEMETRY, reading(s), T0, T0 + s * 1000, 0)
                                          for s in range(10)])
            soon = await streams.worker.check_health(T0 + 10_000)
            later = await streams.worker.check_health(T0 + 3_600_000)
            again = await streams.worker.check_health(T0 + 3_700_000)
            return soon, later + again, sent_values(send)

    soon, later, sent = asyncio.run(run())
    assert (soon, later) == (0, 1)
    assert [s["value"]["kind"] for s in sent] == ["offline"]
    assert streams.devices["dev-01"]["alerts"][-1]["kind"] == "offline"


def test_a_batch_applies_records_of_a_partition_revoked_while_they_waited(streams: Streams) -> None:
    """`take_events` acks the whole batch afterwards: a record left out would be committed unapplied."""
    from faust.types import TP

    owned_elsewhere = {TP(streams.worker.config.telemetry_topic, 0)}

    async def run() -> None:
        with mock.patch.object(streams.devices, "send_changelog"), \
                mock.patch.object(streams.worker.app.assignor, "assigned_actives", return_value=owned_elsewhere):
            await streams.worker.process([Record("dev-01", TELEMETRY, reading(0), T0, T0, partition=1)])

    asyncio.run(run())
    assert streams.devices["dev-01"]["account"]["received"] == 1
