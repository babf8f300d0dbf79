"""Running a real `ferry worker` against the local broker, for the server's integration tests.

The same steps as tests/server/test_worker_integration.py: topics of the test's own, records made
with `kafka_record` as the bridge makes them, a worker process on a free port, polling its API.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from ferry.contract import BridgeNaming
from ferry.server.process import WorkerProcess, bridge_records, get_json
from ferry.server.process import produce as produce_records

__all__ = ["DEADLINE_S", "PARTITIONS", "Topics", "create_topics", "get_json", "get_status", "produce", "wait_for",
           "worker_process"]
PARTITIONS = 2
DEADLINE_S = 120.0


def get_status(port: int, path: str) -> int:
    """The HTTP status of GET `path` (0 when the worker does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def wait_for(probe: Callable[[], object], done: Callable[[object], bool], worker: WorkerProcess,
             deadline_s: float = DEADLINE_S) -> object:
    """Poll until `done(value)`; returns the last value (the caller asserts on it). A deadline, not a timing check."""
    deadline = time.monotonic() + deadline_s
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        assert worker.poll() is None, f"worker exited:\n{worker.log_tail()}"
        time.sleep(0.2)
        value = probe()
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    """One test's own topics: what the bridge writes (`naming`) and what the worker writes."""

    naming: BridgeNaming
    series: str
    series_5m: str
    alerts: str
    health: str


def create_topics(kafka, prefix: str = "it", partitions: int = PARTITIONS) -> Topics:
    """Fresh telemetry and status topics, and the four the worker writes, for one test."""
    run = f"{prefix}-{uuid.uuid4().hex[:8]}"
    topics = Topics(BridgeNaming("gw-test", telemetry_topic=f"{run}.telemetry", status_topic=f"{run}.status"),
                    series=f"{run}.series.1m", series_5m=f"{run}.series.5m", alerts=f"{run}.alerts",
                    health=f"{run}.health")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    names = [topics.naming.telemetry_topic, topics.naming.status_topic, topics.series, topics.series_5m,
             topics.alerts, topics.health]
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result(30)
    return topics


def produce(kafka, naming: BridgeNaming, messages: list[tuple[str, bytes]], received_ms: int | None = None) -> None:
    """Produce what the bridge would make of these (MQTT topic, payload) messages, received now
    (or at `received_ms`)."""
    received_ms = int(time.time() * 1000) if received_ms is None else received_ms
    produce_records(kafka.bootstrap_servers, bridge_records(naming, messages, received_ms))


def worker_process(kafka, topics: Topics, tmp_path: Path, port: int | None = None,
                   **settings: str) -> tuple[WorkerProcess, int]:
    """A `ferry worker` (not started) on these topics and a free web port; (process, port).

    `settings` are further `ServerConfig` fields.
    """
    fields = {"app_id": f"ferry-it-{uuid.uuid4().hex[:8]}", "telemetry_topic": topics.naming.telemetry_topic,
              "status_topic": topics.naming.status_topic, "series_topic": topics.series,
              "series_5m_topic": topics.series_5m, "alerts_topic": topics.alerts, "health_topic": topics.health,
              "partitions": PARTITIONS, "broker_session_timeout_s": 6,
              "producer_max_batch_size": 1, **settings}
    worker = WorkerProcess(tmp_path, broker=kafka.bootstrap_servers, web_port=port or 0, **fields)
    return worker, worker.port
