"""A real worker process against the local broker: contract records in, accounting out over HTTP, contract
records out on the series topics, copied into SQLite by docs/contract.md's example."""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from ferry.worker_records import SeriesPoint, parse_series_point

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
    assert sorted((p.device, p.window, p.start_ms - T0, p.count) for p in points) == \
        [("dev-a", "1m", 0, 3), ("dev-a", "1m", 60_000, 3), ("dev-a", "1m", 120_000, 2), ("dev-b", "1m", 0, 3),
         ("dev-b", "1m", 60_000, 2)]

    # A new worker of the same app, on the same data dir, restores dedupe state and counts.
    produce(kafka, topics.naming, [telemetry("dev-a", 9), telemetry("dev-a", 10), telemetry("dev-b", 3, boot=2)])
    again, port = worker_process(kafka, topics, tmp_path / "again", port=port,
                                 app_id=worker.env["FERRY_SERVER_APP_ID"], allowed_lateness_s=0,
                                 data_dir=worker.env["FERRY_SERVER_DATA_DIR"])
    with again:
        expected = {**expected, "received": 20, "duplicates": 5}
        accounting = wait_for(lambda: numbers(get_json(port, "/accounting")), lambda a: a == expected, again)
        assert accounting == expected, (accounting, get_json(port, "/devices/dev-a"), get_json(port, "/devices/dev-b"),
                                        again.log_tail())
        kept = closed_windows(port)
        assert again.stop() == 0, again.log_tail()

    # docs/contract.md's example copies both series topics into SQLite: every window the API lists as closed,
    # once, as the two workers published it (dev-b's boot-2 reading closed its minute and a 5-minute window).
    series_to_sqlite = contract_example("series_to_sqlite")
    db_path = tmp_path / "series.db"
    series_to_sqlite(kafka.bootstrap_servers, str(db_path), topics=(topics.series, topics.series_5m), idle_s=8.0)
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT dev, window, metric, start_ms, end_ms, count, min, max, mean, last FROM series"
                          " ORDER BY dev, window, start_ms").fetchall()
    db.close()
    assert rows == [(d, kind, "temp_c", w["start_ms"], w["end_ms"], w["count"], w["min"], w["max"], w["mean"],
                     w["last"]) for (d, kind), windows in sorted(kept.items()) for w in windows]
    assert [(d, kind, len(windows)) for (d, kind), windows in sorted(kept.items())] == \
        [("dev-a", "1m", 3), ("dev-a", "5m", 3), ("dev-b", "1m", 3), ("dev-b", "5m", 7)]
    assert {(p.device, p.window, p.metric, p.start_ms, p.count) for p in points} <= \
        {row[:4] + row[5:6] for row in rows}


def closed_windows(port: int) -> dict[tuple[str, str], list[dict]]:
    """(device, kind) -> the closed windows the series API lists."""
    return {(d, kind): [w for w in get_json(port, f"/devices/{d}/series/temp_c")[kind] if w["closed"]]
            for d in ("dev-a", "dev-b") for kind in ("1m", "5m")}


def consume(kafka, topic: str, expected: int) -> list[SeriesPoint]:
    """Series records as the contract reads them: no Faust metadata, keyed by the device id."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    points: list[SeriesPoint] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(points) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                assert b"__faust" not in message.value()
                point = parse_series_point(message.value())
                assert message.key() == point.device.encode()
                points.append(point)
    finally:
        consumer.close()
    return points


def contract_example(name: str):
    """The function `name` defined by docs/contract.md's Python block that defines it, run as it stands."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if f"def {name}(" in b]
    namespace: dict = {"__name__": "contract_example"}
    exec(compile(block, "docs/contract.md", "exec"), namespace)
    return namespace[name]
