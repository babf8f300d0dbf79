"""Two workers of one app on one partition: one owns every device, the other holds standby copies only.

The standby-only worker must count nothing as its own: not in `/accounting`, `/devices` or
`/alerts`, and its health timer must raise no `offline` alert for the devices it does not own
(the owner raises one per device, once).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from tests.server.helpers import T0, reading
from tests.server.worker_support import create_topics, produce, wait_for, worker_process

pytestmark = pytest.mark.integration
DEVICES = sorted(f"dev-{i:04d}" for i in range(1000))
"""Enough to fill Faust's standby buffer (1,000 changelog records per table) at once: a standby
copy reaches the table only in such batches, or when a rebalance flushes it."""
PER_DEVICE = 2
HEALTH_CHECK_S = 2
WATCH_S = 5.0
"""How long both workers are watched once settled: more than two health checks (every HEALTH_CHECK_S)."""


def test_a_worker_without_an_active_partition_counts_nothing_as_its_own(kafka, tmp_path: Path) -> None:
    topics = create_topics(kafka, "spare", partitions=1)
    messages = [(f"ferry/site/{dev}/telemetry", reading(s, dev=dev, ts_ms=T0 + s * 10_000))
                for s in range(PER_DEVICE) for dev in DEVICES]
    # Received an hour ago and silent since: the owner's first health check calls every device offline.
    produce(kafka, topics.naming, messages, received_ms=int(time.time() * 1000) - 3_600_000)
    app_id = f"ferry-spare-{uuid.uuid4().hex[:8]}"
    first, _ = worker_process(kafka, topics, tmp_path / "first", app_id=app_id, partitions=1,
                              health_check_interval_s=HEALTH_CHECK_S)
    second, _ = worker_process(kafka, topics, tmp_path / "second", app_id=app_id, partitions=1,
                               health_check_interval_s=HEALTH_CHECK_S)
    expected = len(DEVICES) * PER_DEVICE
    with first, second:
        workers = (first, second)
        answers = wait_for(lambda: [w.get("/accounting") for w in workers],
                           lambda a: all(x and x["received"] >= expected for x in a), first)
        assert all(a and a["received"] >= expected for a in answers), (answers, first.log_tail(), second.log_tail())
        path = f"/alerts?limit={len(DEVICES)}"  # alerts_keep, 1000: one `offline` each
        alerts = wait_for(lambda: [w.get(path) for w in workers],
                          lambda a: all(x and len(x["alerts"]) >= len(DEVICES) for x in a), first)
        assert all(a and len(a["alerts"]) >= len(DEVICES) for a in alerts), alerts
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            accounting = [w.get("/accounting") for w in workers]
            local = [w.get("/devices?scope=local") for w in workers]
            assert [(a["received"], a["devices"], a["offline"]) for a in accounting] == \
                [(expected, len(DEVICES), len(DEVICES))] * 2, accounting
            assert sorted(len(devices) for devices in local) == [0, len(DEVICES)], local
            time.sleep(0.5)
        alerts = [w.get(path)["alerts"] for w in workers]
        assert alerts[0] == alerts[1]
        assert sorted(a["device"] for a in alerts[0] if a["kind"] == "offline") == DEVICES
        published = consume_all(kafka, topics.alerts)
        assert first.stop() == 0, first.log_tail()
        assert second.stop() == 0, second.log_tail()
    assert sorted(a["dev"] for a in published if a["kind"] == "offline") == DEVICES


def consume_all(kafka, topic: str, idle_s: float = 3.0) -> list[dict]:
    """Every record on `topic`, read until none came for `idle_s`."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    records: list[dict] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s or not records and time.monotonic() - last < 60:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                records.append(json.loads(message.value()))
                last = time.monotonic()
    finally:
        consumer.close()
    return records
