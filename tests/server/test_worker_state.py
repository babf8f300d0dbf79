"""`WorkerState` through a real Faust app and its rebalance signals, with no broker.

A rebalance is played as Faust plays it (faust/app/base.py, faust/tables/recovery.py):
`on_rebalance_start()` first, then the `on_partitions_revoked` and `on_partitions_assigned`
signals (recovery *starts*), the tables filling from their changelogs, then
`on_rebalance_complete` and `on_rebalance_end()` (recovery done). The assignment is what the
partition assignor says; records go to a `FakeProducer`.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from unittest import mock

import pytest
from aiohttp.test_utils import TestClient, TestServer
from faust.types import TP

from ferry.server import streams as streams_module
from ferry.server.app import create_app
from ferry.server.config import ServerConfig
from ferry.server.logic import TELEMETRY, Record
from ferry.server.streams import Streams, wire
from ferry.server.kafka_batches import LostWrite
from ferry.server.worker_state import LIVE, decode_value, encode_value

from tests.server.fake_kafka import fake_producer
from tests.server.helpers import T0, reading

CHANGELOGS = ("ferry-test-worker-state-devices-changelog", "ferry-test-worker-state-history-changelog")


@pytest.fixture
def streams(tmp_path) -> Streams:
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-worker-state", data_dir=str(tmp_path),
                          allowed_lateness_s=0, partitions=1)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()
    return streams


class Assignment:
    """The partitions the assignor gives this worker as active (the rest of the group has the others)."""

    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.actives: set[int] = set()

    def tps(self) -> set[TP]:
        config = self.streams.worker.config
        return {TP(topic, p) for p in self.actives for topic in (config.telemetry_topic, config.status_topic)}

    async def start(self, actives: set[int]) -> None:
        """A rebalance begins: the new assignment is known, the tables are not recovered yet."""
        app = self.streams.worker.app
        app.on_rebalance_start()
        await app.on_partitions_revoked.send(set())
        self.actives = set(actives)
        await app.on_partitions_assigned.send(self.tps())

    async def complete(self) -> None:
        """Recovery of the assigned partitions is done (every partition has a committed offset: no
        consumer runs here for `rewind_uncommitted` to ask)."""
        app = self.streams.worker.app
        with mock.patch.object(app.consumer, "seek_to_committed", mock.AsyncMock(return_value={})), \
                mock.patch.object(app.consumer, "assignment", mock.Mock(return_value=self.tps())):
            await app.on_rebalance_complete.send()
        app.on_rebalance_end()


@pytest.fixture
def assignment(streams: Streams) -> Iterator[Assignment]:
    assigned = Assignment(streams)
    with mock.patch.object(streams.worker.app.assignor, "assigned_actives", side_effect=assigned.tps):
        yield assigned


@asynccontextmanager
async def http(streams: Streams) -> AsyncIterator[TestClient]:
    """The worker's HTTP API, served in process with what `faust worker` serves: `init_server()` (as
    `Web.on_start` calls it) adds the Faust blueprints its settings enable (faust/web/base.py)."""
    web = streams.worker.app.web
    web.init_server()
    async with TestClient(TestServer(web.web_app)) as client:
        yield client


async def get(client: TestClient, path: str) -> tuple[int, object]:
    response = await client.get(path)
    return response.status, await response.json()


def readings(seqs, received_ms: int = T0) -> list[Record]:
    return [Record("dev-01", TELEMETRY, reading(s), T0 + s * 1000, received_ms + s * 1000, 0) for s in seqs]


def test_a_memory_store_holds_no_second_copy_of_a_live_state(streams: Streams, assignment: Assignment) -> None:
    """The changelog gets the encoded state, the store a marker while the state is live, and the
    encoded state again once a rebalance drops the live one: what the next batch or view decodes."""
    worker, devices = streams.worker, streams.devices
    changelog = devices.changelog_topic.get_topic_name()

    async def run() -> tuple:
        with fake_producer(worker.app) as producer:
            await assignment.start({0})
            await assignment.complete()
            await worker.process(readings(range(4)))
            while_live = devices.data["dev-01"]
            await assignment.start({0})  # a rebalance begins: the live states go
            after = devices.data["dev-01"]
            await assignment.complete()
            await worker.process(readings(range(3, 6)))  # seq 3 again: a duplicate
            return while_live, after, producer.newest(changelog, "dev-01"), worker.state("dev-01").account

    while_live, after, newest, account = asyncio.run(run())
    assert while_live == LIVE
    assert decode_value(after)["account"]["received"] == 4
    assert (account.received, account.duplicates) == (6, 1)
    assert decode_value(newest)["account"]["received"] == 6


def test_nothing_is_cached_or_served_while_the_tables_recover(streams: Streams, assignment: Assignment) -> None:
    """The health timer and the views asked mid-recovery must not pin a half-recovered state,
    which the next batch would build on and write back (readings lost from `received`)."""
    worker, devices = streams.worker, streams.devices

    changelog = devices.changelog_topic.get_topic_name()

    async def run() -> tuple:
        with fake_producer(worker.app) as producer:
            async with http(streams) as client:
                await assignment.start({0})
                await assignment.complete()
                await worker.process(readings(range(3)))
                half = producer.newest(changelog, "dev-01")
                await worker.process(readings(range(3, 5)))
                whole = producer.newest(changelog, "dev-01")

                await assignment.start({0})
                devices.data["dev-01"] = half  # the changelog replayed so far
                during = [await worker.check_health(T0 + 10_000), await get(client, "/accounting?scope=local"),
                          await get(client, "/devices?scope=local"), worker.state("dev-01").account.received]
                devices.data["dev-01"] = whole  # the changelog replayed to its end
                await assignment.complete()
                await worker.process(readings([5]))
                return during, await get(client, "/accounting?scope=local"), producer.newest(changelog, "dev-01")

    during, after, newest = asyncio.run(run())
    assert decode_value(newest)["account"]["received"] == 6
    assert during[0] == 0
    assert [status for status, _ in during[1:3]] == [503, 503]
    assert "recover" in during[1][1]["error"]
    assert during[3] == 3  # what the table holds, read but not kept
    assert after[0] == 200 and after[1]["received"] == 6


def test_a_worker_with_no_active_partition_owns_no_device(streams: Streams, assignment: Assignment) -> None:
    """More workers than partitions: this one holds standby copies only. It must not count them
    (the owner does), raise their `offline` alerts or write their changelogs."""
    worker = streams.worker

    async def run() -> tuple:
        with fake_producer(worker.app) as producer:
            async with http(streams) as client:
                await assignment.start({0})
                await assignment.complete()
                await worker.process(readings(range(5), received_ms=T0 - 3_600_000))
                before = len(producer.sent)
                await assignment.start(set())  # the partition moved; its table stays as a standby copy
                await assignment.complete()
                raised = await worker.check_health(T0 + 3_600_000)
                answers = [await get(client, "/accounting?scope=local"), await get(client, "/devices?scope=local"),
                           await get(client, "/alerts?scope=local")]
                return raised, answers, producer.sent[before:]

    raised, answers, sent = asyncio.run(run())
    assert streams.devices["dev-01"] is not None  # the standby copy
    assert raised == 0 and sent == []
    (accounting_status, accounting), (devices_status, devices), (_, alerts) = answers
    assert (accounting_status, accounting["devices"], accounting["received"]) == (200, 0, 0)
    assert (devices_status, devices, alerts) == (200, {}, {"alerts": []})


def test_no_device_is_called_offline_while_its_readings_wait_in_kafka(streams: Streams,
                                                                      assignment: Assignment) -> None:
    """A worker catching up on a backlog (batches not full: `take_events` hands over what arrived
    within `batch_within_ms`) must not call its devices offline: their newer readings are in Kafka.
    Before, only a full last batch counted as behind, and a 10,000-device catch-up flapped every
    device offline and online again (58,378 alerts for 56,082 readings in `ferry bench server`)."""
    worker = streams.worker
    topic = worker.config.telemetry_topic

    async def run() -> list[int]:
        with fake_producer(worker.app):
            await assignment.start({0})
            await assignment.complete()
            await worker.process([replace(r, offset=i)  # offsets 0-4
                                  for i, r in enumerate(readings(range(5), received_ms=T0 - 3_600_000))])
            raised = []
            worker.app.monitor.tp_end_offsets[TP(topic, 0)] = 5 + worker.config.batch_size + 1
            raised.append(await worker.check_health(T0 + 3_600_000))  # a batch and more wait: not judged
            worker.app.monitor.tp_end_offsets[TP(topic, 0)] = 5 + worker.config.batch_size
            raised.append(await worker.check_health(T0 + 3_600_000))  # what waits fits in a batch: judged
            return raised

    assert asyncio.run(run()) == [0, 1]


def test_with_the_rocksdb_store_each_device_is_written_to_its_partitions_database(tmp_path) -> None:
    """Faust's RocksDB store keeps a database per partition and takes the partition from the event
    being processed, asserting there is one on a write (faust/stores/rocksdb.py `_set`); a batch
    or a timer has none of its own. Before `in_partition` the first batch failed there."""
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-rocksdb", data_dir=str(tmp_path),
                          store="rocksdb://", partitions=2, allowed_lateness_s=0)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()
    worker = streams.worker
    devices: dict[int, str] = {}
    for n in range(50):
        devices.setdefault(worker.partition_of(f"dev-{n:02d}"), f"dev-{n:02d}")
    assert sorted(devices) == [0, 1]

    async def run() -> dict:
        with fake_producer(app):
            await worker.process([Record(dev, TELEMETRY, reading(0, dev=dev), T0, T0, p, 0)
                                  for p, dev in devices.items()])
            await worker.process([Record(dev, TELEMETRY, reading(1, dev=dev), T0, T0 + 1000, p, 1)
                                  for p, dev in devices.items()])
            worker.forget()
            store = streams.devices.data
            changelog = streams.devices.changelog_topic.get_topic_name()
            return {p: (store._db_for_partition(p).get(dev.encode()) is not None,
                        store._db_for_partition(1 - p).get(dev.encode()) is None,
                        worker.state(dev).account.received,
                        store.persisted_offset(TP(changelog, p)))
                    for p, dev in devices.items()}

    # Each database keeps the newest changelog offset it holds (two writes per partition: 0, 1), as
    # Faust's own changelog callback keeps it: a restart reads the changelog from there on.
    assert asyncio.run(run()) == {0: (True, True, 2, 1), 1: (True, True, 2, 1)}


def test_a_batch_is_done_only_once_kafka_has_every_record_it_wrote(streams: Streams,
                                                                   assignment: Assignment) -> None:
    """Series points, alerts and health changes acknowledged before the tables that say they were published;
    the tables' changelog records acknowledged before the batch returns (and its offsets may be
    committed: `take_events` acks the batch's events only when the agent's body is done with it)."""
    worker = streams.worker
    config = worker.config
    base = T0 - T0 % 60_000
    batch = [Record("dev-01", TELEMETRY, reading(s, ts_ms=base + s * 20_000, metrics={"temp_c": 20.0 + s}),
                    base + s * 20_000, base + s * 20_000, 0) for s in range(4)]  # seq 3 closes the first minute
    published = {config.series_topic, config.series_5m_topic, config.alerts_topic, config.health_topic}

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def run() -> list:
        with fake_producer(worker.app, hold=True) as producer:
            await assignment.start({0})
            await assignment.complete()
            task = asyncio.ensure_future(worker.process(batch))
            await settle()
            steps = [(task.done(), sorted(set(producer.topics())))]
            producer.ack(published)
            await settle()
            steps.append((task.done(), sorted(set(producer.topics()) - published)))
            producer.ack()
            await settle()
            steps.append((task.done(), producer.ack()))
            await task
            return steps

    steps = asyncio.run(run())
    # Both kinds of window closed, and the device's health became known (ok); no alert.
    assert steps[0] == (False, sorted([config.series_topic, config.series_5m_topic, config.health_topic]))
    assert steps[1] == (False, sorted(CHANGELOGS))
    assert steps[2] == (True, 0)


def test_a_record_kafka_refuses_fails_the_batch_before_the_tables_are_written(streams: Streams,
                                                                             assignment: Assignment) -> None:
    worker = streams.worker
    base = T0 - T0 % 60_000
    batch = [Record("dev-01", TELEMETRY, reading(s, ts_ms=base + s * 40_000), base + s * 40_000, base + s * 40_000, 0)
             for s in range(3)]  # seq 2 closes the first minute

    async def run() -> None:
        with fake_producer(worker.app, refuse=True):
            await assignment.start({0})
            await assignment.complete()
            await worker.process(batch)

    with pytest.raises(LostWrite, match="refused"):
        asyncio.run(run())
    assert streams.devices.get("dev-01") is None
    # Faust's own future of the refused record logs "exception never retrieved" when collected;
    # collect it now, not during a later test module's compile (CPython 3.11 then raises
    # "AST constructor recursion depth mismatch", gh-106905).
    gc.collect()


def test_a_batch_kafka_does_not_acknowledge_in_time_fails(tmp_path) -> None:
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-worker-state", data_dir=str(tmp_path),
                          partitions=1, write_timeout_s=0.05)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()

    async def run() -> None:
        with fake_producer(app, hold=True):
            await streams.worker.process(readings(range(2)))

    with pytest.raises(LostWrite, match="no answer in 0.05 s"):
        asyncio.run(run())


def test_the_worker_exits_at_once_when_a_write_is_lost() -> None:
    """Leaving the batch by an exception would let Faust commit its offsets."""

    async def lost() -> None:
        raise LostWrite("1 of 1 records not acknowledged by Kafka")

    with mock.patch.object(streams_module.os, "_exit", side_effect=SystemExit) as exit_now:
        with pytest.raises(SystemExit):
            asyncio.run(streams_module._or_exit(lost()))
    exit_now.assert_called_once_with(streams_module.EXIT_LOST_WRITE)


def test_the_worker_exits_at_once_when_a_batch_fails() -> None:
    """A failed batch's records stay tracked and unacked: carrying on, the next rebalance or shutdown
    would wait for them forever and nothing after them could be committed."""

    async def broken() -> None:
        raise ValueError("a bug")

    with mock.patch.object(streams_module.os, "_exit", side_effect=SystemExit) as exit_now:
        with pytest.raises(SystemExit):
            asyncio.run(streams_module._or_exit(broken()))
    exit_now.assert_called_once_with(streams_module.EXIT_LOST_WRITE)


def test_history_values_are_compressed_and_plain_json_values_still_read() -> None:
    """A device's closed windows are its biggest table value: stored zlib-compressed (docs/server.md,
    "Memory per device"); a value written before, plain JSON, reads back as it was."""
    rows = [[T0 + i * 60_000, T0 + (i + 1) * 60_000, 6, 20.0, 21.5, 20.75, 21.0] for i in range(60)]
    value = {"1m": {"temp_c": rows, "rh_pct": rows}, "5m": {"temp_c": rows, "rh_pct": rows}}
    plain, packed = encode_value(value), encode_value(value, compress=True)
    assert packed[:1] == b"x" and len(packed) * 5 < len(plain)
    assert decode_value(packed) == value and decode_value(plain) == value and decode_value(None) is None
