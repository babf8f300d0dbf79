"""The ingest task and the worker's table writes through Faust, with no broker: the real tables in
memory, and every record the worker produces taken (and acknowledged) by a `FakeProducer`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from unittest import mock

import pytest

from faust.transport.consumer import ConsumerMessage
from faust.types import TP

from ferry.worker_records import parse_alert, parse_health_change, parse_series_point
from ferry.server.app import create_app
from ferry.server.config import ServerConfig
from ferry.server.logic import STATUS, TELEMETRY, Record
from ferry.server.streams import Streams, wire
from ferry.server.worker_state import decode_value

from tests.server.fake_kafka import FakeProducer, fake_producer
from tests.server.helpers import T0, asleep, reading, status
from tests.vectors import load as load_vectors

WORKER = load_vectors("contract/worker_records.json")


@pytest.fixture
def streams(tmp_path) -> Streams:
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-agents", data_dir=str(tmp_path),
                          allowed_lateness_s=0, partitions=1, batch_within_ms=10)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()
    return streams


def changelog_partitions(producer: FakeProducer, table) -> list[int]:
    """The partition of every changelog record written to `table`, in order."""
    return [s.partition for s in producer.sent if s.topic == table.changelog_topic.get_topic_name()]


def changelog_state(producer: FakeProducer, streams: Streams, device: str) -> dict:
    """The device's newest state in the `devices` changelog: what Kafka holds and a recovering worker
    reads (the memory store holds `LIVE` while the state is live)."""
    return decode_value(producer.newest(streams.devices.changelog_topic.get_topic_name(), device))


@pytest.fixture(autouse=True)
def owning(streams: Streams):
    """The worker owns partition 0 of the source topics, its tables are recovered and records flow."""
    from faust.types import TP

    config = streams.worker.config
    with mock.patch.object(streams.worker.app.assignor, "assigned_actives",
                           return_value={TP(config.telemetry_topic, 0), TP(config.status_topic, 0)}):
        streams.worker.recovery_completed()
        streams.worker.app.flow_control.resume()
        yield


def source_message(streams: Streams, value: bytes, offset: int, *, generation: int | None = None,
                   topic: str | None = None) -> ConsumerMessage:
    """A record of the source topics as the consumer hands it over (partition 0, no receive time)."""
    config = streams.worker.config
    topic = topic or config.telemetry_topic
    return ConsumerMessage(topic, 0, offset, 1.0, 0, [], b"dev-01", value, None,
                           6, len(value), TP(topic, 0),
                           generation_id=streams.worker.app.consumer_generation_id if generation is None
                           else generation)


async def ingested(streams: Streams, messages: list[ConsumerMessage], until: Callable[[], bool]) -> None:
    """Put `messages` in the source buffer, run the ingest task until `until()`, then stop it."""
    for message in messages:
        streams.buffer.add(message)
    task = asyncio.ensure_future(streams.ingest())
    for _ in range(100):
        if until():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_ingest_dedupes_accounts_and_publishes_closed_minutes(streams: Streams) -> None:
    base = T0 - T0 % 60_000
    records = [reading(seq, ts_ms=base + seq * 1000) for seq in (0, 1, 1, 3)] + \
        [reading(4, ts_ms=base + 60_000), b"{}"]
    messages = [source_message(streams, value, offset) for offset, value in enumerate(records)]

    async def run() -> FakeProducer:
        with fake_producer(streams.worker.app) as producer:
            await ingested(streams, messages, lambda: bool(streams.worker.counts.get("telemetry.invalid")))
            return producer

    producer = asyncio.run(run())
    # Each batch writes the device's state once, to the source record's partition.
    devices_log = changelog_partitions(producer, streams.devices)
    assert len(devices_log) <= 6 and set(devices_log) == {0}
    assert len(changelog_partitions(producer, streams.history)) == 1
    account = changelog_state(producer, streams, "dev-01")["account"]
    assert (account["received"], account["duplicates"], account["invalid"]) == (4, 1, 1)
    assert account["boots"]["1"]["high"] == 4
    assert [(key, value["metric"], value["start_ms"], value["count"])
            for key, value in producer.values(streams.worker.config.series_topic)] == \
        [("dev-01", "temp_c", base, 3)]
    # The 5-minute windows that ended by base + 60 s (the watermark) are published too, to their own topic.
    assert [(key, value["window"], value["start_ms"], value["end_ms"], value["count"])
            for key, value in producer.values(streams.worker.config.series_5m_topic)] == \
        [("dev-01", "5m", base - 240_000, base + 60_000, 3)]
    assert changelog_state(producer, streams, "dev-01")["windows"]["max_event_ms"] == base + 60_000
    assert streams.history["dev-01"][:1] == b"x"  # zlib: the history table's values are compressed
    assert decode_value(streams.history["dev-01"])["1m"]["temp_c"] == \
        [[base, base + 60_000, 3, 20.0, 23.0, 64.0 / 3, 23.0]]
    # Acked once written: Faust commits acked offsets only, and a rebalance waits for the unacked.
    assert all(m.acked for m in messages)


def test_records_of_an_older_generation_are_dropped_and_never_acked(streams: Streams) -> None:
    """As Faust's stream skips them: after a rebalance the partitions are read again from their
    committed offsets, so these records come back (in the current generation)."""
    generation = streams.worker.app.consumer_generation_id
    stale = [source_message(streams, reading(seq), seq, generation=generation - 1) for seq in range(3)]
    fresh = source_message(streams, reading(3), 3)

    async def run() -> None:
        with fake_producer(streams.worker.app):
            await ingested(streams, [*stale, fresh], lambda: bool(streams.worker.counts))

    asyncio.run(run())
    assert streams.worker.counts == {"telemetry.new": 1}
    assert fresh.acked and not any(m.acked for m in stale)


def test_the_source_buffer_holds_one_batch_and_is_cleared_by_flow_control(streams: Streams) -> None:
    """Backpressure: the consumer's drain loop waits for room once a batch waits (the one being
    applied is out of the buffer); a rebalance clears it (Faust's flow control clears the queues it
    manages) and the records are fetched again."""
    buffer = streams.buffer
    size = streams.worker.config.batch_size

    async def run() -> list[tuple[bool, int]]:
        seen = []
        for offset in range(size + size // 2):
            if not buffer._room.is_set():
                seen.append((False, len(buffer)))
                seen.append((True, len(await buffer.take(0.01))))
            buffer.add(source_message(streams, reading(offset % 1000), offset))
        streams.worker.app.flow_control.suspend()
        streams.worker.app.flow_control.clear()
        seen.append((buffer._room.is_set(), len(buffer)))
        return seen

    assert asyncio.run(run()) == [(False, size), (True, size), (True, 0)]


def test_a_batch_ends_before_a_device_beyond_batch_devices() -> None:
    """`batch_devices` bounds the devices a batch touches (so the states it writes at once), in record
    order, whatever `batch_size` allows; a batch cut so, or of `batch_size`, says more records wait."""
    from ferry.server.ingest import SourceBuffer

    buffer = SourceBuffer({"t"}, batch_size=8, batch_devices=3)
    for offset, dev in enumerate("abacbdaef"):
        buffer.add(ConsumerMessage("t", 0, offset, 1.0, 0, [], dev.encode(), b"{}", None, 6, 2, TP("t", 0)))

    async def run() -> list[tuple[str, bool]]:
        taken = []
        for _ in range(3):
            batch = await buffer.take(0.01)
            taken.append(("".join(m.key.decode() for m in batch), buffer.full))
        return taken

    assert asyncio.run(run()) == [("abacb", True), ("dae", True), ("f", False)]
    assert len(buffer) == 0


def test_unsynced_reading_is_windowed_at_the_record_time(streams: Streams) -> None:
    async def run() -> FakeProducer:
        with fake_producer(streams.worker.app) as producer:
            await streams.worker.process([Record("dev-01", TELEMETRY, reading(0, ts_ms=42, synced=False),
                                                 T0, T0, 0)])
            return producer

    producer = asyncio.run(run())
    assert changelog_state(producer, streams, "dev-01")["windows"]["max_event_ms"] == T0


def test_status_adds_device_losses_and_lwt_raises_an_offline_alert(streams: Streams) -> None:
    offline = b'{"v":1,"dev":"dev-01","state":"offline","boot":1}'

    async def run() -> FakeProducer:
        with fake_producer(streams.worker.app) as producer:
            await streams.worker.process([Record("dev-01", STATUS, status(2), T0, T0, 0),
                                          Record("dev-01", STATUS, status(5), T0, T0 + 1, 0)])
            await streams.worker.process([Record("dev-01", STATUS, offline, T0, T0 + 2, 0)])
            return producer

    producer = asyncio.run(run())
    assert changelog_partitions(producer, streams.devices) == [0, 0]  # one write per batch
    value = changelog_state(producer, streams, "dev-01")
    assert value["status"]["lost_at_device"] == 5
    assert [(key, alert["kind"]) for key, alert in producer.values(streams.worker.config.alerts_topic)] == \
        [("dev-01", "offline")]
    assert value["alerts_raised"] == 1
    assert [a["kind"] for a in decode_value(streams.alert_log["partition-0"])] == ["offline"]
    # Health: known (the birth), then offline (the last will); the second birth changed nothing.
    assert [(key, h["previous"], h["state"], h["offline_reason"], h["ts_ms"])
            for key, h in producer.values(streams.worker.config.health_topic)] == \
        [("dev-01", "unknown", "ok", None, T0), ("dev-01", "ok", "offline", "lwt", T0 + 2)]


def test_the_health_timer_raises_offline_for_a_silent_device(streams: Streams) -> None:
    async def run() -> tuple[int, int, FakeProducer]:
        with fake_producer(streams.worker.app) as producer:
            await streams.worker.process([Record("dev-01", TELEMETRY, reading(s), T0, T0 + s * 1000, 0)
                                          for s in range(10)])
            soon = await streams.worker.check_health(T0 + 10_000)
            later = await streams.worker.check_health(T0 + 3_600_000)
            again = await streams.worker.check_health(T0 + 3_700_000)
            return soon, later + again, producer

    soon, later, producer = asyncio.run(run())
    assert (soon, later) == (0, 1)
    assert [alert["kind"] for _, alert in producer.values(streams.worker.config.alerts_topic)] == ["offline"]
    assert decode_value(streams.alert_log["partition-0"])[-1]["kind"] == "offline"
    assert [(h["previous"], h["state"], h["offline_reason"], h["ts_ms"])
            for _, h in producer.values(streams.worker.config.health_topic)] == \
        [("unknown", "ok", None, T0), ("ok", "offline", "silent", T0 + 3_600_000)]


def test_a_batch_applies_records_of_a_partition_revoked_while_they_waited(streams: Streams) -> None:
    """`take_events` acks the whole batch afterwards: a record left out would be committed unapplied."""
    from faust.types import TP

    owned_elsewhere = {TP(streams.worker.config.telemetry_topic, 0)}

    async def run() -> FakeProducer:
        with fake_producer(streams.worker.app) as producer, \
                mock.patch.object(streams.worker.app.assignor, "assigned_actives", return_value=owned_elsewhere):
            await streams.worker.process([Record("dev-01", TELEMETRY, reading(0), T0, T0, partition=1)])
            return producer

    producer = asyncio.run(run())
    assert changelog_state(producer, streams, "dev-01")["account"]["received"] == 1


def test_the_worker_publishes_the_contracts_golden_records(streams: Streams) -> None:
    """The `worker` vectors of tests/vectors/contract/worker_records.json, byte for byte, from a birth and a
    last will (boot 18) and four readings; every record on every output topic decodes, none carries Faust
    metadata, and each is keyed by its device id."""
    config = streams.worker.config
    dev = "esp32-a1b2c3"
    birth, will = 1_732_480_000_456, 1_732_480_000_999
    values = (21.5, 22.25, 23.0, 24.0)

    async def run() -> FakeProducer:
        with fake_producer(streams.worker.app) as producer:
            await streams.worker.process([Record(dev, STATUS, status(0, dev=dev, boot=18), birth, birth, 0),
                                          Record(dev, STATUS, asleep(dev=dev, boot=18), will, will, 0)])
            await streams.worker.process([
                Record(dev, TELEMETRY, reading(s, dev=dev, ts_ms=T0 + s * 20_000, metrics={"temp_c": v}),
                       T0 + s * 20_000, T0 + s * 20_000, 0) for s, v in enumerate(values)])
            return producer

    producer = asyncio.run(run())
    topics = {"ferry.series.1m": config.series_topic, "ferry.series.5m": config.series_5m_topic,
              "ferry.alerts": config.alerts_topic, "ferry.health": config.health_topic}
    parse = {config.series_topic: parse_series_point, config.series_5m_topic: parse_series_point,
             config.alerts_topic: parse_alert, config.health_topic: parse_health_change}
    sent = {topic: [(s.key, s.value) for s in producer.sent if s.topic == topic] for topic in parse}
    golden = [case for kind in ("series", "alerts", "health") for case in WORKER[kind]["valid"] if case.get("worker")]
    assert len(golden) == 5
    for case in golden:
        assert (case["key"].encode(), case["value"].encode()) in sent[topics[case["topic"]]], case["name"]
    for topic, records in sent.items():
        assert records, topic
        for key, value in records:
            assert b"__faust" not in value
            assert parse[topic](value).device.encode() == key
