"""Two workers of one app share the partitions and answer every view the same as one worker does.

Both run with an API token: a per-device view asked of the worker that does not own the device is
forwarded with the request's token (`@app.table_route`), and a fleet view asks the other worker with it.
Each advertises a URL other than its bind address (`advertised_url`, http://localhost:<port> while it
binds 127.0.0.1): the group reaches each worker there, and each knows itself by it.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from ferry.contract import BridgeNaming
from ferry.process import free_port
from ferry.server.process import WorkerProcess, bridge_records, produce, wait_for_answer

from tests.server.helpers import T0, reading, status
from tests.server.worker_support import get_status

pytestmark = pytest.mark.integration
PARTITIONS = 4
DEVICES = [f"dev-{i:02d}" for i in range(12)]
NUMBERS = ("received", "duplicates", "gaps", "lost_at_device", "invalid", "late", "devices")
TOKEN = "two-workers-test-token"


def messages() -> list[tuple[str, bytes]]:
    out = []
    for n, dev in enumerate(DEVICES):
        seqs = [s for s in range(30) if s != n % 7 + 3] + [0, 1]  # one gap and two duplicates per device
        temps = {s: 21.0 + (s % 3) * 0.1 for s in seqs}
        if n % 3 == 0:
            temps[25] = 60.0  # a spike for the detectors (their baseline needs 20 readings)
        out += [(f"ferry/site/{dev}/telemetry",
                 reading(s, dev=dev, ts_ms=T0 + s * 10_000, metrics={"temp_c": temps[s]})) for s in seqs]
        out.append((f"ferry/site/{dev}/status", status(n % 2, dev=dev)))
    return out


def numbers(answer: dict) -> dict:
    return {k: answer[k] for k in NUMBERS}


def settled(workers: list[WorkerProcess], expected_received: int) -> bool:
    """Every worker answers the fleet view with every reading counted."""
    answers = [w.get("/accounting") for w in workers]
    return all(a and a.get("received") == expected_received for a in answers)


def views(worker: WorkerProcess) -> dict:
    """Everything time cannot change: health (and its `offline` alerts) depends on when it is asked."""
    devices = worker.get("/devices")
    return {
        "accounting": numbers(worker.get("/accounting")),
        "devices": {d: numbers({**v, "devices": 1}) for d, v in devices.items()},
        "alerts": sorted((a["device"], a["kind"], a["metric"], a["ts_ms"])
                         for a in worker.get("/alerts")["alerts"] if a["metric"] is not None),
        "one": {d: {k: v for k, v in worker.get(f"/devices/{d}").items() if k not in ("health", "alerts")}
                for d in DEVICES},
        "series": {d: worker.get(f"/devices/{d}/series/temp_c") for d in DEVICES[:3]},
    }


def test_two_workers_answer_as_one(kafka, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    naming = BridgeNaming("gw-two", telemetry_topic=f"two-{run}.telemetry", status_topic=f"two-{run}.status")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    names = [naming.telemetry_topic, naming.status_topic, f"two-{run}.series", f"two-{run}.series.5m",
             f"two-{run}.alerts", f"two-{run}.health"]
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result(30)
    data = messages()
    produce(kafka.bootstrap_servers, bridge_records(naming, data, int(time.time() * 1000)))
    received = len(DEVICES) * 29
    common = {"broker": kafka.bootstrap_servers, "telemetry_topic": naming.telemetry_topic,
              "status_topic": naming.status_topic, "series_topic": f"two-{run}.series",
              "series_5m_topic": f"two-{run}.series.5m", "alerts_topic": f"two-{run}.alerts",
              "health_topic": f"two-{run}.health", "partitions": PARTITIONS, "broker_session_timeout_s": 6,
              "producer_max_batch_size": 1, "allowed_lateness_s": 0, "api_token": TOKEN}

    with WorkerProcess(tmp_path, "alone", app_id=f"one-{run}", **common) as alone:
        answer = wait_for_answer(alone, "/accounting", lambda a: bool(a) and a["received"] == received)
        assert answer and answer["received"] == received, alone.log_tail()
        reference = views(alone)
    assert reference["accounting"]["duplicates"] == 2 * len(DEVICES)
    assert reference["accounting"]["gaps"] == len(DEVICES)
    assert {device for device, *_ in reference["alerts"]} == set(DEVICES[::3])  # the spikes

    ports = [free_port(), free_port()]
    advertised = [{"web_port": port, "advertised_url": f"http://localhost:{port}"} for port in ports]
    with WorkerProcess(tmp_path, "first", app_id=f"two-{run}", **common, **advertised[0]) as first, \
            WorkerProcess(tmp_path, "second", app_id=f"two-{run}", **common, **advertised[1]) as second:
        deadline = time.monotonic() + 180
        local = []
        while time.monotonic() < deadline:
            local = [w.get("/devices?scope=local") or {} for w in (first, second)]
            if all(local) and settled([first, second], received):
                break
            for w in (first, second):
                assert w.poll() is None, w.log_tail()
            time.sleep(0.5)
        # Each worker owns some of the devices, none twice, all together.
        assert all(local), "both workers should own partitions"
        assert not set(local[0]) & set(local[1])
        assert set(local[0]) | set(local[1]) == set(DEVICES)
        assert views(first) == reference, first.log_tail()
        assert views(second) == reference, second.log_tail()
        for w in (first, second):  # the same views without the token
            assert [get_status(w.port, p) for p in ("/accounting", "/devices", f"/devices/{DEVICES[0]}")] == \
                [401] * 3
