"""The stall watch: a worker whose consumer stopped while records wait notices it."""

from __future__ import annotations

import asyncio
import uuid
from unittest import mock

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ferry.server.app import create_app
from ferry.server.config import ServerConfig
from ferry.server.liveness import StallWatch, bootstrap_servers
from ferry.server.logic import TELEMETRY, Record
from ferry.server.streams import wire

from tests.server.fake_kafka import fake_producer
from tests.server.helpers import reading


def test_bootstrap_servers_accepts_both_spellings() -> None:
    assert bootstrap_servers("kafka://a:1;b:2") == "a:1,b:2"
    assert bootstrap_servers(" a:1, b:2 ") == "a:1,b:2"


def test_a_stall_needs_past_progress_quiet_time_and_waiting_records() -> None:
    watch = StallWatch("a:1", timeout_s=60)
    assert not watch.due(1000.0)  # never processed anything: no verdict (nothing to compare with)
    watch.processed([("t", 0, 41), ("t", 0, 42), ("t", 1, 7)], now=100.0)
    assert not watch.due(159.0) and watch.due(160.0)
    assert watch.waiting({("t", 0): 43, ("t", 1): 8}) is None  # all processed
    reason = watch.waiting({("t", 0): 50, ("t", 1): 8})
    assert reason is not None and "7 records wait in 1 partition(s)" in reason and "t[0]" in reason
    assert watch.waiting({}) is None  # the broker did not answer: no verdict
    watch.forget()
    assert not watch.due(1000.0) and watch.next_offset == {}


@pytest.mark.integration
def test_partition_ends_come_from_the_broker(kafka) -> None:
    topic = f"live-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for i in range(5):  # one batch each: the local broker reports a batch's base offset + 1 as the end
        producer.produce(topic, b"x", b"k")
        assert producer.flush(10) == 0
    watch = StallWatch(f"kafka://{kafka.bootstrap_servers}", timeout_s=1)
    watch.processed([(topic, 0, 1)], now=0.0)
    ends = watch.partition_ends()
    assert ends == {(topic, 0): 5}
    assert "3 records wait" in watch.waiting(ends)


def test_the_worker_reports_a_stall_only_when_records_wait(tmp_path) -> None:
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-liveness", data_dir=str(tmp_path),
                          partitions=1, stall_timeout_s=30)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()
    worker = streams.worker

    async def run() -> tuple:
        with fake_producer(app), \
                mock.patch.object(worker.watch, "partition_ends", return_value={(config.telemetry_topic, 0): 10}):
            await worker.process([Record("dev-01", TELEMETRY, reading(0), 0, 0, 0, offset=9)])
            fresh = await worker.stalled()
            worker.watch.progress_at -= 31
            caught_up = await worker.stalled()
            worker.watch.partition_ends.return_value = {(config.telemetry_topic, 0): 25}
            return fresh, caught_up, await worker.stalled()

    fresh, caught_up, stuck = asyncio.run(run())
    assert fresh is None and caught_up is None
    assert stuck is not None and "15 records wait" in stuck
