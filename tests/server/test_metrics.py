"""`GET /metrics`: the worker's own numbers in Prometheus' text format 0.0.4, with no broker.

The app, the rebalance and the producer are played as in `test_worker_state`; the exposition is
checked by a strict parser of the format (HELP, then TYPE, then the family's samples; every
sample belongs to a declared family; no series twice).
"""

from __future__ import annotations

import asyncio
import math
import re
from unittest import mock

import pytest
from faust.types import TP

from ferry.prometheus import Metric, prometheus_text
from ferry.server.app import create_app
from ferry.server.config import ServerConfig
from ferry.server.logic import STATUS, TELEMETRY, Record
from ferry.server.streams import Streams, wire

from tests.server.fake_kafka import fake_producer
from tests.server.helpers import T0, reading, status
from tests.server.test_worker_state import Assignment, get, http

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? (\S+)$")
KINDS = {"counter", "gauge", "summary", "histogram", "untyped"}


def parse(text: str) -> dict[str, dict]:
    """name → {kind, help, samples: {labels: value}}; fails on anything the format does not allow."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(NAME, name) and name not in families, line
            families[name] = {"help": help_text, "kind": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and families[name]["kind"] is None and kind in KINDS, line
            families[name]["kind"] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert name == current and families[name]["kind"] is not None, f"{name} outside its family"
            key = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels or "")))
            assert key not in families[name]["samples"], f"{line!r} twice"
            families[name]["samples"][key] = float(value)
    for name, family in families.items():
        assert family["kind"] in ("counter", "gauge"), name
        assert family["help"], name
        assert name.endswith("_total") == (family["kind"] == "counter"), name
    return families


@pytest.fixture
def streams(tmp_path) -> Streams:
    config = ServerConfig(broker="127.0.0.1:1", app_id="ferry-test-metrics", data_dir=str(tmp_path),
                          partitions=1)
    app = create_app(config)
    streams = wire(app, config)
    app.finalize()
    return streams


@pytest.fixture
def assignment(streams: Streams):
    assigned = Assignment(streams)
    with mock.patch.object(streams.worker.app.assignor, "assigned_actives", side_effect=assigned.tps):
        yield assigned


def telemetry(seqs, first_offset: int) -> list[Record]:
    return [Record("dev-01", TELEMETRY, reading(s), T0 + s * 1000, T0 + s * 1000, 0, first_offset + i)
            for i, s in enumerate(seqs)]


async def scrape(client) -> tuple[int, str, dict[str, dict]]:
    response = await client.get("/metrics")
    text = await response.text()
    return response.status, response.headers["Content-Type"], parse(text)


def value(families: dict[str, dict], name: str, **labels: str) -> float:
    return families[name]["samples"][tuple(sorted(labels.items()))]


def test_the_counts_move_as_records_are_processed(streams: Streams, assignment: Assignment) -> None:
    worker = streams.worker
    telemetry_topic = worker.config.telemetry_topic

    async def run() -> list:
        with fake_producer(worker.app):
            async with http(streams) as client:
                await assignment.start({0})
                await assignment.complete()
                scrapes = [await scrape(client)]
                await worker.process(telemetry(range(3), 0))
                await worker.process(telemetry([1], 1)  # offset 1 again: Kafka redelivering it
                                     + telemetry([1, 2, 6], 3)   # two duplicates; 3, 4, 5 missing
                                     + [Record("dev-01", STATUS, status(2), T0, T0, 0, 0),
                                        Record("dev-01", TELEMETRY, b"{", T0, T0, 0, 6)])
                worker.app.monitor.tp_end_offsets[TP(telemetry_topic, 0)] = 10  # the consumer fetched up to 10
                scrapes.append(await scrape(client))
                return scrapes

    (status0, kind, before), (status1, _, after) = asyncio.run(run())
    assert (status0, status1) == (200, 200)
    assert kind == "text/plain; version=0.0.4; charset=utf-8"

    assert value(before, "ferry_worker_ready") == 1
    assert value(before, "ferry_worker_records_total", channel="telemetry", verdict="new") == 0
    assert value(before, "ferry_worker_batches_total") == 0
    assert value(before, "ferry_worker_gaps") == 0 and value(before, "ferry_worker_devices") == 0
    assert "ferry_worker_last_batch_seconds" not in before
    assert "ferry_worker_consumer_lag" not in before

    records = {labels: n for labels, n in after["ferry_worker_records_total"]["samples"].items()}
    assert records == {
        (("channel", "telemetry"), ("verdict", "new")): 4,
        (("channel", "telemetry"), ("verdict", "duplicate")): 2,
        (("channel", "telemetry"), ("verdict", "late")): 0,
        (("channel", "telemetry"), ("verdict", "invalid")): 1,
        (("channel", "telemetry"), ("verdict", "replayed")): 1,
        (("channel", "status"), ("verdict", "new")): 1,
        (("channel", "status"), ("verdict", "invalid")): 0,
        (("channel", "status"), ("verdict", "replayed")): 0,
    }
    assert value(after, "ferry_worker_batches_total") == 2
    assert value(after, "ferry_worker_last_batch_records") == 6
    assert 0 < value(after, "ferry_worker_last_batch_seconds") <= value(after, "ferry_worker_batch_seconds_total")
    assert value(after, "ferry_worker_devices") == 1
    assert value(after, "ferry_worker_gaps") == 3
    assert value(after, "ferry_worker_lost_at_device") == 2
    # Offsets 0..6 processed; the partition's high-water mark is 10: 7, 8 and 9 wait.
    assert after["ferry_worker_consumer_lag"]["samples"] == {(("partition", "0"), ("topic", telemetry_topic)): 3}
    # The 4 new clock-synced readings, each once, in the latency histogram (server/latency.py): their
    # sample times (T0 + seq s, 2024) are long before now, so all fall in the last bucket.
    assert value(before, "ferry_worker_reading_latency_seconds_count") == 0
    assert value(after, "ferry_worker_reading_latency_seconds_count") == 4
    assert after["ferry_worker_reading_latency_seconds_bucket"]["samples"][(("le", "+Inf"),)] == 4
    assert value(after, "ferry_worker_reading_latency_seconds_sum") > 4 * 600


def test_metrics_answer_while_the_tables_recover(streams: Streams, assignment: Assignment) -> None:
    """The other views answer 503 then; /metrics says the worker is not ready, and leaves out the
    numbers read from a half-replayed table."""
    worker = streams.worker

    async def run() -> tuple:
        with fake_producer(worker.app):
            async with http(streams) as client:
                await assignment.start({0})
                await assignment.complete()
                await worker.process(telemetry([0, 2], 0))
                await assignment.start({0})
                during = await scrape(client), (await get(client, "/accounting?scope=local"))[0]
                await assignment.complete()
                return during, await scrape(client)

    ((status_during, _, during), accounting_status), (_, _, after) = asyncio.run(run())
    assert (status_during, accounting_status) == (200, 503)
    assert value(during, "ferry_worker_ready") == 0
    assert value(during, "ferry_worker_records_total", channel="telemetry", verdict="new") == 2
    assert value(during, "ferry_worker_batches_total") == 1
    assert {"ferry_worker_gaps", "ferry_worker_devices", "ferry_worker_lost_at_device",
            "ferry_worker_consumer_lag"}.isdisjoint(during)
    assert value(after, "ferry_worker_ready") == 1 and value(after, "ferry_worker_gaps") == 1


def test_the_lag_counts_only_partitions_this_worker_owns(streams: Streams, assignment: Assignment) -> None:
    worker = streams.worker
    topic = worker.config.telemetry_topic

    async def run() -> dict:
        with fake_producer(worker.app):
            async with http(streams) as client:
                await assignment.start({0})
                await assignment.complete()
                await worker.process(telemetry(range(3), 40))
                # A partition the worker does not own (standby, or another app's), and one never processed.
                worker.watch.next_offset[(topic, 5)] = 1
                worker.app.monitor.tp_end_offsets.update({TP(topic, 0): 43, TP(topic, 5): 9,
                                                          TP(worker.config.status_topic, 0): 7})
                return (await scrape(client))[2]

    families = asyncio.run(run())
    assert families["ferry_worker_consumer_lag"]["samples"] == {(("partition", "0"), ("topic", topic)): 0}


def test_the_exposition_escapes_and_spells_special_values() -> None:
    special = ((("v", "inf"),), math.inf), ((("v", "-inf"),), -math.inf), ((("v", "nan"),), math.nan), \
        ((("v", "big"),), 12345678901.0), ((("v", "small"),), 0.125)
    text = prometheus_text([
        Metric("a_total", "counter", "back\\slash\nnewline", (((("k", 'q"\\\n'),), 1.0),)),
        Metric("b", "gauge", "special values", special),
    ])
    assert text.splitlines() == [
        "# HELP a_total back\\\\slash\\nnewline", "# TYPE a_total counter", 'a_total{k="q\\"\\\\\\n"} 1',
        "# HELP b special values", "# TYPE b gauge",
        'b{v="inf"} +Inf', 'b{v="-inf"} -Inf', 'b{v="nan"} NaN', 'b{v="big"} 12345678901', 'b{v="small"} 0.125',
    ]
    families = parse(text)
    assert math.isnan(value(families, "b", v="nan"))
