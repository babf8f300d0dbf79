"""A real worker process against the local broker: contract records in, accounting out over HTTP."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from tests.server.helpers import T0, reading, status
from tests.server.worker_support import (
    DEADLINE_S, Topics, create_topics, get_json, produce, wait_for, worker_process,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka) -> Topics:
    return create_topics(kafka)


NUMBERS = ("received", "duplicates", "gaps", "lost_at_device", "invalid", "late", "devices")


def numbers(answer: object) -> dict | None:
    """The accounting numbers of an `/accounting` answer (it also counts alerts and offline devices)."""
    return {k: answer[k] for k in NUMBERS if k in answer} if isinstance(answer, dict) else None


def telemetry(dev: str, seq: int, boot: int = 1) -> tuple[str, bytes]:
    return f"ferry/site-1/{dev}/telemetry", reading(seq, dev=dev, boot=boot, ts_ms=T0 + (boot - 1) * 600_000 + seq * 20_000)


def test_worker_dedupes_counts_gaps_and_heals_them(kafka, topics: Topics, tmp_path: Path) -> None:
    first = [telemetry("dev-a", s) for s in (0, 1, 2, 3, 3, 4, 5, 7, 8, 9, 5)]  # dups: 3, 5; gap: 6
    first += [telemetry("dev-b", s) for s in range(5)] + [telemetry("dev-b", s, boot=2) for s in (0, 1, 2, 1)]
    first.append(("ferry/site-1/dev-b/status", status(2, dev="dev-b", boot=2)))
    produce(kafka, topics.naming, first)

    worker, port = worker_process(kafka, topics, tmp_path, allowed_lateness_s=0)
    with worker:
        expected = {"received": 17, "duplicates": 3, "gaps": 1, "lost_at_device": 2, "invalid": 0, "late": 0,
                    "devices": 2}
        accounting = wait_for(lambda: numbers(get_json(port, "/accounting")), lambda a: a == expected, worker)
        assert accounting == expected, worker.log_tail()
        device = get_json(port, "/devices/dev-a")
        assert device["boots"]["1"]["gaps"] == [[6, 6]]
        assert device["metrics"] == ["temp_c"]

        produce(kafka, topics.naming, [telemetry("dev-a", 6), telemetry("dev-a", 6)])  # the late one, twice
        expected = {**expected, "received": 18, "duplicates": 4, "gaps": 0, "late": 1}
        accounting = wait_for(lambda: numbers(get_json(port, "/accounting")), lambda a: a == expected, worker)
        assert accounting == expected, worker.log_tail()

        devices = get_json(port, "/devices")
        assert numbers(devices["dev-b"]) == {"received": 8, "duplicates": 1, "gaps": 0, "lost_at_device": 2,
                                             "invalid": 0, "late": 0}
        assert devices["dev-b"]["health"]["state"] == "ok" and devices["dev-b"]["alerts"] == 0
        series = get_json(port, "/devices/dev-a/series/temp_c")
        closed = [w for w in series["1m"] if w["closed"]]
        # Minutes of seqs 0-2, 3-5 and 6-8; 6 came after seq 9 had closed its minute: late, not applied.
        assert [w["count"] for w in closed] == [3, 3, 2]
        assert series["1m"][-1] == {**series["1m"][-1], "count": 1, "closed": False}
        assert get_json(port, "/devices/nobody") is None  # 404
        points = consume(kafka, topics.series, 5)  # dev-a: 3 closed minutes; dev-b: 2
        assert worker.stop() == 0, worker.log_tail()
    assert sorted((p["device"], p["start_ms"] - T0, p["count"]) for p in points) == \
        [("dev-a", 0, 3), ("dev-a", 60_000, 3), ("dev-a", 120_000, 2), ("dev-b", 0, 3), ("dev-b", 60_000, 2)]

    # A new worker of the same app restores dedupe state and counts from the changelogs.
    produce(kafka, topics.naming, [telemetry("dev-a", 9), telemetry("dev-a", 10), telemetry("dev-b", 3, boot=2)])
    again, port = worker_process(kafka, topics, tmp_path / "again", port=port,
                                 app_id=worker.env["FERRY_SERVER_APP_ID"], allowed_lateness_s=0)
    with again:
        expected = {**expected, "received": 20, "duplicates": 5}
        accounting = wait_for(lambda: numbers(get_json(port, "/accounting")), lambda a: a == expected, again)
        assert accounting == expected, (accounting, get_json(port, "/devices/dev-a"), get_json(port, "/devices/dev-b"),
                                        again.log_tail())
        assert again.stop() == 0, again.log_tail()


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
