"""Run `ferry worker` as a child process, and produce what the bridge would: for tests, benchmarks, the demo.

A real process, so tests see exactly what users run. Settings go in as
`FERRY_SERVER_<FIELD>` variables, as an operator would set them.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from confluent_kafka import Producer

from ferry.contract import KAFKA_PARTITIONER, BridgeNaming, KafkaRecord, kafka_record
from ferry.process import ManagedProcess, free_port
from ferry.server.auth import auth_headers
from ferry.server.config import ENV_PREFIX, read_token_file

READY_TIMEOUT_S = 60.0


def get_json(port: int, path: str, host: str = "127.0.0.1", token: str = "") -> object | None:
    """The JSON answer of the worker's HTTP API (asked with the API token `token`, if any), or None
    (not up, an error status, not JSON)."""
    request = urllib.request.Request(f"http://{host}:{port}{path}", headers=auth_headers(token))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class WorkerProcess:
    """One `ferry worker` with its own web port and data dir; `settings` are `ServerConfig` fields.

    With an `api_token` (given, or in the environment it inherits), `get` sends it.
    """

    def __init__(self, work_dir: Path, name: str = "worker", **settings: object) -> None:
        self.work_dir = work_dir
        self.name = name
        self.port = int(settings.pop("web_port", 0)) or free_port()
        settings.setdefault("data_dir", str(work_dir / f"{name}-data"))
        self.env = {**os.environ, **{ENV_PREFIX + k.upper(): str(v) for k, v in settings.items()},
                    f"{ENV_PREFIX}WEB_PORT": str(self.port)}
        self.process = ManagedProcess(name, [sys.executable, "-m", "ferry.server.main"], work_dir / f"{name}.log",
                                      env=self.env, cwd=work_dir)
        token_file = self.env.get(f"{ENV_PREFIX}API_TOKEN_FILE")
        self.api_token = read_token_file(f"{ENV_PREFIX}API_TOKEN_FILE", token_file) if token_file \
            else self.env.get(f"{ENV_PREFIX}API_TOKEN", "")

    def start(self) -> "WorkerProcess":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        try:
            self.process.wait_ready(lambda: self.get("/accounting?scope=local") is not None, READY_TIMEOUT_S)
        except BaseException:  # an interrupt too: nothing else would stop it
            self.process.stop()
            raise
        return self

    def get(self, path: str) -> object | None:
        return get_json(self.port, path, token=self.api_token)

    def poll(self) -> int | None:
        return self.process.poll()

    def log_tail(self) -> str:
        return self.process.log_tail()

    def stop(self) -> int | None:
        return self.process.stop()

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.process.stop()


def wait_for_answer(worker: WorkerProcess, path: str, done: Callable[[object], bool], timeout_s: float = 120.0) -> object:
    """Poll `path` until `done(answer)`; returns the last answer (the caller asserts on it)."""
    deadline = time.monotonic() + timeout_s
    answer = worker.get(path)
    while not done(answer) and time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"{worker.name} exited:\n{worker.log_tail()}")
        time.sleep(0.2)
        answer = worker.get(path)
    return answer


def bridge_records(naming: BridgeNaming, messages: Iterable[tuple[str, bytes]], received_ms: int) -> list[KafkaRecord]:
    """What the bridge makes of these (MQTT topic, payload) messages."""
    return [kafka_record(naming, topic, payload, received_ms) for topic, payload in messages]


def produce(bootstrap_servers: str, records: Iterable[KafkaRecord]) -> int:
    """Produce records as the bridge does (keyed by device id, murmur2); returns how many."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "acks": "all", "enable.idempotence": True,
                         "partitioner": KAFKA_PARTITIONER, "linger.ms": 20, "queue.buffering.max.messages": 1000000,
                         "log.connection.close": False})
    count = 0
    for record in records:
        while True:
            try:
                producer.produce(record.topic, record.value, record.key, headers=list(record.headers),
                                 timestamp=record.timestamp_ms)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    if producer.flush(60) != 0:
        raise RuntimeError("records still unacknowledged after 60 s")
    return count
