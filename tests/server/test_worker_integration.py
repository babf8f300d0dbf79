"""A real worker process against the local broker: contract records in, accounting out over HTTP."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ferry.contract import BridgeNaming, kafka_record
from ferry.process import ManagedProcess, free_port

from tests.server.helpers import T0, reading, status

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 2
DEADLINE_S = 120.0


def get_json(port: int, path: str) -> object | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_for(probe: Callable[[], object], done: Callable[[object], bool], worker: ManagedProcess) -> object:
    """Poll until `done(value)`; returns the last value (the caller asserts on it). A deadline, not a timing check."""
    deadline = time.monotonic() + DEADLINE_S
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        assert worker.poll() is None, f"worker exited:\n{worker.log_tail()}"
        time.sleep(0.2)
        value = probe()
    return value


@pytest.fixture
def topics(kafka) -> Iterator[BridgeNaming]:
    run = uuid.uuid4().hex[:8]
    naming = BridgeNaming("gw-test", telemetry_topic=f"it-{run}.telemetry", status_topic=f"it-{run}.status")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    names = [naming.telemetry_topic, naming.status_topic, f"it-{run}.series.1m"]
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result(30)
    yield naming


def produce(kafka, naming: BridgeNaming, messages: list[tuple[str, bytes]]) -> None:
    """Produce what the bridge would make of these (MQTT topic, payload) messages."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "acks": "all", "enable.idempotence": True})
    for mqtt_topic, payload in messages:
        record = kafka_record(naming, mqtt_topic, payload, received_ms=int(time.time() * 1000))
        producer.produce(record.topic, record.value, record.key, headers=list(record.headers),
                         timestamp=record.timestamp_ms)
    assert producer.flush(30) == 0


def telemetry(dev: str, seq: int, boot: int = 1) -> tuple[str, bytes]:
    return f"ferry/site-1/{dev}/telemetry", reading(seq, dev=dev, boot=boot, ts_ms=T0 + (boot - 1) * 600_000 + seq * 20_000)


def test_worker_dedupes_counts_gaps_and_heals_them(kafka, topics: BridgeNaming, tmp_path: Path) -> None:
    series_topic = topics.telemetry_topic.replace(".telemetry", ".series.1m")
    first = [telemetry("dev-a", s) for s in (0, 1, 2, 3, 3, 4, 5, 7, 8, 9, 5)]  # dups: 3, 5; gap: 6
    first += [telemetry("dev-b", s) for s in range(5)] + [telemetry("dev-b", s, boot=2) for s in (0, 1, 2, 1)]
    first.append(("ferry/site-1/dev-b/status", status(2, dev="dev-b", boot=2)))
    produce(kafka, topics, first)

    port = free_port()
    env = {**os.environ, "FERRY_SERVER_BROKER": kafka.bootstrap_servers,
           "FERRY_SERVER_APP_ID": f"ferry-it-{uuid.uuid4().hex[:8]}",
           "FERRY_SERVER_TELEMETRY_TOPIC": topics.telemetry_topic, "FERRY_SERVER_STATUS_TOPIC": topics.status_topic,
           "FERRY_SERVER_SERIES_TOPIC": series_topic, "FERRY_SERVER_PARTITIONS": str(PARTITIONS),
           "FERRY_SERVER_WEB_PORT": str(port), "FERRY_SERVER_DATA_DIR": str(tmp_path / "data"),
           "FERRY_SERVER_ALLOWED_LATENESS_S": "0",
           "FERRY_SERVER_BROKER_SESSION_TIMEOUT_S": "6", "FERRY_SERVER_PRODUCER_MAX_BATCH_SIZE": "1"}
    with ManagedProcess("worker", [sys.executable, "-m", "ferry", "worker"], tmp_path / "worker-1.log",
                        env=env, cwd=REPO) as worker:
        worker.start()
        expected = {"received": 17, "duplicates": 3, "gaps": 1, "lost_at_device": 2, "invalid": 0, "late": 0,
                    "devices": 2}
        accounting = wait_for(lambda: get_json(port, "/accounting"), lambda a: a == expected, worker)
        assert accounting == expected, worker.log_tail()
        device = get_json(port, "/devices/dev-a")
        assert device["boots"]["1"]["gaps"] == [[6, 6]]
        assert device["metrics"] == ["temp_c"]

        produce(kafka, topics, [telemetry("dev-a", 6), telemetry("dev-a", 6)])  # the late one, twice
        expected = {**expected, "received": 18, "duplicates": 4, "gaps": 0, "late": 1}
        accounting = wait_for(lambda: get_json(port, "/accounting"), lambda a: a == expected, worker)
        assert accounting == expected, worker.log_tail()

        devices = get_json(port, "/devices")
        assert devices["dev-b"] == {"received": 8, "duplicates": 1, "gaps": 0, "lost_at_device": 2, "invalid": 0,
                                    "late": 0}
        series = get_json(port, "/devices/dev-a/series/temp_c")
        closed = [w for w in series["1m"] if w["closed"]]
        # Minutes of seqs 0-2, 3-5 and 6-8; 6 came after seq 9 had closed its minute: late, not applied.
        assert [w["count"] for w in closed] == [3, 3, 2]
        assert series["1m"][-1] == {**series["1m"][-1], "count": 1, "closed": False}
        assert get_json(port, "/devices/nobody") is None  # 404
        points = consume(kafka, series_topic, 5)  # dev-a: 3 closed minutes; dev-b: 2
        assert worker.stop() == 0, worker.log_tail()
    assert sorted((p["device"], p["start_ms"] - T0, p["count"]) for p in points) == \
        [("dev-a", 0, 3), ("dev-a", 60_000, 3), ("dev-a", 120_000, 2), ("dev-b", 0, 3), ("dev-b", 60_000, 2)]

    # A new worker of the same app restores dedupe state and counts from the changelogs.
    produce(kafka, topics, [telemetry("dev-a", 9), telemetry("dev-a", 10), telemetry("dev-b", 3, boot=2)])
    with ManagedProcess("worker", [sys.executable, "-m", "server.main"], tmp_path / "worker-2.log",
                        env=env, cwd=REPO) as worker:
        worker.start()
        expected = {**expected, "received": 20, "duplicates": 5}
        accounting = wait_for(lambda: get_json(port, "/accounting"), lambda a: a == expected, worker)
        assert accounting == expected, worker.log_tail()
        assert worker.stop() == 0, worker.log_tail()


def consume(kafka, topic: str, expected: int) -> list[dict]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    points: list[dict] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(points) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                points.append(json.loads(message.value()))
    finally:
        consumer.close()
    return points
