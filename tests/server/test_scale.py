"""Scale: 3 workers on 12 partitions, one SIGKILLed mid-stream and a 4th added, answer as one worker does.

The input (36 devices, 3 on each of the 12 partitions; gaps, duplicates, a gap healed late, anomaly
spikes, status messages) goes in in two halves. Three workers of one app share the partitions; as soon
as each of them has counted some of the first half, one is killed with SIGKILL (no shutdown, no commit:
a power cut), usually before its first offset commit (Faust commits every 2.8 s), so the worker that
takes its partitions finds no committed offset for them and must read them from the start. A fourth
worker is started and the second half produced while the group rebalances. Once the fleet settles,
every surviving worker's views must equal those of one worker alone (another app id) over the same
source records, and each device must be owned by exactly one worker. All run with an API token (a
per-device view asked of a worker that does not own the device is forwarded with it, a fleet view asks
the others with it; without it every view answers 401), and each advertises http://localhost:<port>
while binding 127.0.0.1 (`advertised_url`): the group reaches each worker there.

What a crash may legitimately repeat (docs/server.md, "After a crash"): Faust is at-least-once, so the
records the killed worker processed since its last commit are delivered again to the worker taking its
partitions. Those it had written to its tables are skipped by their offsets (`DeviceState.offsets`), so
they change no number and raise no alert again: the views, `/alerts` included, must equal the lone
worker's exactly. But the worker publishes a batch's alerts and closed windows *before* writing the
tables that remember them (a crash may repeat one, never lose one), so a batch the kill interrupted
between the two is published again when it is re-processed. So on the alerts and 1-minute series
topics the test asserts: the same distinct records as the lone worker published (nothing lost, nothing
extra), byte for byte; a record published twice only for a device of the killed worker (the batch it
was in the middle of), and never more than twice; every other device's records exactly once (a
rebalance between live workers repeats nothing: Faust waits for the batch in flight before revoking).
`offline`/`online` alerts depend on the wall clock and are left out of every comparison.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from ferry.process import free_port
from ferry.server.process import WorkerProcess

from tests.server.helpers import T0, reading, status
from tests.server.worker_support import create_topics, get_status, produce

pytestmark = pytest.mark.integration
PARTITIONS = 12
PER_PARTITION = 3
NUMBERS = ("received", "duplicates", "gaps", "lost_at_device", "invalid", "late", "devices")
TIME_DEPENDENT = frozenset({"offline", "online"})
TOKEN = "scale-test-token"
"""Alert kinds raised by the health check's wall clock (a device silent between the two halves)."""
DEADLINE_S = 90.0
"""The longest any one wait lasts (a deadline to give up, never a timing the test checks)."""
HALF = 24
"""Readings 0..23 go in the first half, 24..47 in the second."""


def _partition(device: str) -> int:
    return (murmur2(device.encode()) & 0x7FFFFFFF) % PARTITIONS


def _devices() -> list[str]:
    """The first PER_PARTITION names `dev-NNN` of each partition (murmur2, as the bridge keys them):
    every partition has devices."""
    chosen: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    i = 0
    while min(len(devices) for devices in chosen.values()) < PER_PARTITION:
        device = f"dev-{i:03d}"
        if len(chosen[_partition(device)]) < PER_PARTITION:
            chosen[_partition(device)].append(device)
        i += 1
    return sorted(d for devices in chosen.values() for d in devices)


DEVICES = _devices()
EXPECTED = {"received": len(DEVICES) * (2 * HALF - 1),  # every seq once, but the one gap that never heals
            "duplicates": 3 * len(DEVICES), "gaps": len(DEVICES), "late": len(DEVICES),
            "lost_at_device": sum(n % 2 + n % 3 for n in range(len(DEVICES))), "invalid": 0,
            "devices": len(DEVICES)}
"""What `halves()` holds, counted (see its docstring)."""


def halves() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """Per device: a gap in the first half that a late reading heals in the second, one that never
    heals, a duplicate within the first half, two re-sent across the halves, a status in each; a spike
    in the first half (devices 0, 3, ...; the detectors' baseline needs 20 readings) or in the second
    (devices 1, 4, ...: scored against a baseline restored from the changelog)."""
    first, second = [], []
    for n, dev in enumerate(DEVICES):
        temps = {s: 21.0 + (s % 3) * 0.1 for s in range(2 * HALF)}
        if n % 3 < 2:
            temps[(22, 40)[n % 3]] = 60.0
        healed, lost = n % 7 + 3, HALF + 6 + n % 5

        def telemetry(seq: int) -> tuple[str, bytes]:
            return (f"ferry/site/{dev}/telemetry",
                    reading(seq, dev=dev, ts_ms=T0 + seq * 10_000, metrics={"temp_c": temps[seq]}))

        first.append((f"ferry/site/{dev}/status", status(n % 2, dev=dev)))
        first += [telemetry(s) for s in range(HALF) if s != healed] + [telemetry(2)]
        second += [telemetry(s) for s in range(HALF, 2 * HALF) if s != lost]
        second += [telemetry(healed), telemetry(0), telemetry(HALF - 1)]
        second.append((f"ferry/site/{dev}/status", status(n % 2 + n % 3, dev=dev)))
    return first, second


def ask(worker: WorkerProcess, path: str) -> object:
    """The answer to `path`, asked again while the worker answers none (503 during a rebalance)."""
    deadline = time.monotonic() + DEADLINE_S
    answer = worker.get(path)
    while answer is None and time.monotonic() < deadline:
        assert worker.poll() is None, f"{worker.name} exited:\n{worker.log_tail()}"
        time.sleep(0.2)
        answer = worker.get(path)
    assert answer is not None, f"{worker.name} gave no answer to {path}:\n{worker.log_tail()}"
    return answer


def views(worker: WorkerProcess) -> dict:
    """Every view, with what the wall clock changes (health, `offline`/`online` alerts) left out."""
    return {
        "accounting": {k: v for k, v in ask(worker, "/accounting").items() if k in NUMBERS},
        "devices": {d: {k: v[k] for k in NUMBERS if k != "devices"} for d, v in ask(worker, "/devices").items()},
        "alerts": [a for a in ask(worker, "/alerts?limit=1000")["alerts"] if a["kind"] not in TIME_DEPENDENT],
        "one": {d: {k: v for k, v in ask(worker, f"/devices/{d}").items() if k not in ("health", "alerts")}
                for d in DEVICES},
        "series": {d: ask(worker, f"/devices/{d}/series/temp_c") for d in DEVICES},
    }


def read_topic(kafka, topic: str, idle_s: float = 1.0) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record on `topic`: read past every partition's end, then until none came
    for `idle_s` (the local broker may report an end short of the last batch)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"check-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[tuple[bytes, bytes]] = []
        positions = {p: 0 for p in partitions}
        deadline = time.monotonic() + DEADLINE_S
        last = time.monotonic()
        while time.monotonic() < deadline and (any(positions[p] < ends[p] for p in partitions)
                                               or time.monotonic() - last < idle_s):
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            records.append((message.key(), message.value()))
            positions[message.partition()] = message.offset() + 1
            last = time.monotonic()
        assert all(positions[p] >= ends[p] for p in partitions), (topic, positions, ends)
        return records
    finally:
        consumer.close()


def published(kafka, topic: str) -> Counter:
    """How often each record (key, value) is on `topic`, `offline`/`online` alerts left out."""
    return Counter((key, value) for key, value in read_topic(kafka, topic)
                   if json.loads(value).get("kind") not in TIME_DEPENDENT)


def counted(answer: object) -> dict | None:
    return {k: answer[k] for k in NUMBERS} if isinstance(answer, dict) else None


def wait_settled(workers: list[WorkerProcess]) -> None:
    """Until every worker's fleet view counts the whole input (its last records are duplicates: `received`
    alone is complete before they are counted) and the workers' own devices part the fleet (the caller
    asserts both)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for w in workers:
            assert w.poll() is None, f"{w.name} exited:\n{w.log_tail()}"
        fleet = [counted(w.get("/accounting")) for w in workers]
        local = [w.get("/devices?scope=local") or {} for w in workers]
        if fleet == [EXPECTED] * len(workers) and sorted(d for devices in local for d in devices) == DEVICES:
            return
        time.sleep(0.5)


def committed(kafka, group: str, topic: str, partitions: set[int]) -> dict[int, int]:
    """The offsets `group` committed on these partitions of `topic` (-1001: none). Asks without joining."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                         "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset
                for tp in consumer.committed([TopicPartition(topic, p) for p in sorted(partitions)], timeout=10)}
    finally:
        consumer.close()


def diagnose(workers: list[WorkerProcess]) -> dict:
    """What each worker counts, per device it owns, and its own record counters: for a failure's message."""
    out = {}
    for w in workers:
        local = w.get("/devices?scope=local") or {}
        request = urllib.request.Request(f"http://127.0.0.1:{w.port}/metrics",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                metrics = response.read().decode()
        except OSError:
            metrics = ""
        out[w.name] = {"received": {d: v["received"] for d, v in local.items()},
                       "records": [line for line in metrics.splitlines()
                                   if line.startswith("ferry_worker_records_total") and not line.endswith(" 0")]}
    return out


def test_three_workers_one_killed_one_added_answer_as_one(kafka, tmp_path: Path) -> None:
    topics = create_topics(kafka, "scale", partitions=PARTITIONS)
    first_half, second_half = halves()
    run = uuid.uuid4().hex[:8]
    common = {"broker": kafka.bootstrap_servers, "telemetry_topic": topics.naming.telemetry_topic,
              "status_topic": topics.naming.status_topic, "partitions": PARTITIONS,
              "broker_session_timeout_s": 6, "producer_max_batch_size": 1, "allowed_lateness_s": 0,
              # Small batches: the kill lands while the worker is working through its partitions.
              "batch_size": 25, "batch_within_ms": 100,
              # Per-device views asked of a worker that does not own the device are forwarded, and
              # fleet views ask the others: both with the request's token.
              "api_token": TOKEN}
    scaled = {**common, "app_id": f"scale-{run}", "series_topic": topics.series, "series_5m_topic": topics.series_5m,
              "alerts_topic": topics.alerts, "health_topic": topics.health}

    def started(stack: contextlib.ExitStack, name: str) -> WorkerProcess:
        port = free_port()
        w = WorkerProcess(tmp_path, name, web_port=port, advertised_url=f"http://localhost:{port}", **scaled)
        stack.callback(w.stop)  # for the killed worker, this only reaps what is left of its process group
        w.process.start()
        return w

    def ready(w: WorkerProcess) -> None:
        w.process.wait_ready(lambda: w.get("/accounting?scope=local") is not None, DEADLINE_S)

    with contextlib.ExitStack() as stack:
        # Started together, so the group forms once rather than growing one member at a time.
        workers = [started(stack, name) for name in ("w1", "w2", "w3")]
        for w in workers:
            ready(w)
        produce(kafka, topics.naming, first_half)
        # Once every worker is counting its own devices (the group holds all three, each owning partitions),
        # one is killed, most likely before its first offset commit.
        deadline = time.monotonic() + DEADLINE_S
        own: list = [None] * len(workers)
        while time.monotonic() < deadline and not all(a and a["received"] > 0 for a in own):
            own = [w.get("/accounting?scope=local") for w in workers]
            time.sleep(0.05)
        assert all(a and a["received"] > 0 for a in own), (own, [w.log_tail() for w in workers])
        victim = workers[0]
        victim_devices = set(ask(victim, "/devices?scope=local"))
        os.kill(victim.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE_S
        while victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim.poll() == -signal.SIGKILL
        # For a failure's message: what the killed worker had committed of its partitions.
        victim_commits = committed(kafka, scaled["app_id"], topics.naming.telemetry_topic,
                                   {_partition(d) for d in victim_devices})
        fourth = started(stack, "w4")
        produce(kafka, topics.naming, second_half)
        ready(fourth)
        survivors = [w for w in workers if w is not victim] + [fourth]
        wait_settled(survivors)
        fleet = [counted(w.get("/accounting")) for w in survivors]
        assert fleet == [EXPECTED] * len(survivors), json.dumps(
            {"fleet": fleet, "killed": victim.name, "its devices": sorted(victim_devices),
             "its telemetry commits": victim_commits, "survivors": diagnose(survivors)})
        # Each device owned by exactly one surviving worker, every worker owning some.
        local = [ask(w, "/devices?scope=local") for w in survivors]
        assert all(local), ("every worker should own partitions", [sorted(x) for x in local])
        assert sorted(d for devices in local for d in devices) == DEVICES, [sorted(x) for x in local]
        answers = {w.name: views(w) for w in survivors}
        for w in survivors:
            assert w.poll() is None, w.log_tail()
            assert [get_status(w.port, p) for p in ("/accounting", "/devices", f"/devices/{DEVICES[0]}")] == \
                [401] * 3  # the same views without the token
        statuses = {w.name: w.stop() for w in survivors}
    assert statuses == {w.name: 0 for w in survivors}, [w.log_tail() for w in survivors]
    scaled_alerts, scaled_series = published(kafka, topics.alerts), published(kafka, topics.series)

    # The reference: one worker alone, its own app id and output topics, over the same source records.
    alone_topics = {"alerts_topic": f"{topics.alerts}.alone", "series_topic": f"{topics.series}.alone",
                    "series_5m_topic": f"{topics.series_5m}.alone", "health_topic": f"{topics.health}.alone"}
    with WorkerProcess(tmp_path, "alone", app_id=f"alone-{run}", **common, **alone_topics) as alone:
        wait_settled([alone])
        assert counted(alone.get("/accounting")) == EXPECTED, alone.log_tail()
        reference = views(alone)
    reference_alerts = published(kafka, alone_topics["alerts_topic"])
    reference_series = published(kafka, alone_topics["series_topic"])

    # The input is what it says: the lone worker counts it so.
    assert reference["accounting"] == EXPECTED
    assert sorted((a["device"], a["kind"], a["ts_ms"]) for a in reference["alerts"]) == \
        sorted((d, "anomaly", T0 + (22, 40)[i % 3] * 10_000) for i, d in enumerate(DEVICES) if i % 3 < 2)
    assert set(reference_alerts.values()) == {1} and len(reference_alerts) == len(reference["alerts"])
    assert reference_series and set(reference_series.values()) == {1}

    # Every view of every surviving worker is the lone worker's.
    for name, answer in answers.items():
        for view in reference:
            assert answer[view] == reference[view], (name, view)

    # On the topics: the lone worker's records; a repeat only from the batch the kill cut short.
    for what, got, expected in (("alerts", scaled_alerts, reference_alerts),
                                ("series", scaled_series, reference_series)):
        assert set(got) == set(expected), (what, set(got) ^ set(expected))
        repeated = {key.decode(): count for (key, _), count in got.items() if count > 1}
        assert all(count == 2 for count in repeated.values()), (what, repeated)
        assert set(repeated) <= victim_devices, (what, repeated, sorted(victim_devices))
