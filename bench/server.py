"""`ferry bench server`: readings per second through one `ferry worker`, from a pre-filled topic.

The command starts the local Kafka-compatible broker, fills a telemetry topic
with contract readings (simulated sensors, keyed and partitioned as the bridge
does), starts a worker and times it from the first reading it counts to the
last, polling `/accounting`. The same data also goes through the worker's pure
logic in this process, and, unless `--no-baseline`, through a worker that
takes one record per batch (a table write per record, Faust's usual pattern),
so the report shows what batching buys and what Faust and the broker cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from ferry.contract import BridgeNaming, Reading, encode_reading
from ferry.local_kafka import LocalKafka
from ferry.hwsim.shims import sensor_model
from ferry.server.config import ServerConfig
from ferry.server.logic import TELEMETRY, Record, Settings, apply_batch
from ferry.server.state import DeviceState
from ferry.server.windows import History
from ferry.server.process import WorkerProcess, bridge_records, produce, wait_for_answer

TARGET_PER_S = 5000
T0_S = 1_767_225_600  # 2026-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    readings: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def readings(devices: int, per_device: int, interval_s: int) -> list[tuple[str, bytes]]:
    """(MQTT topic, payload) of every reading, interleaved across devices as a fleet sends them."""
    out = []
    for i in range(per_device):
        t = T0_S + i * interval_s
        for d in range(devices):
            dev = f"bench-{d:04d}"
            metrics = {"temp_c": round(sensor_model.temperature_c(d, t), 2),
                       "rh_pct": round(sensor_model.humidity_pct(d, t), 2)}
            payload = encode_reading(Reading(dev, 1, i, t * 1000, True, metrics,
                                             sensor_model.battery_mv(d, t, T0_S), -60))
            out.append((f"ferry/bench/{dev}/telemetry", payload))
    return out


def logic_only(messages: list[tuple[str, bytes]], batch: int) -> Run:
    """The worker's logic in this process: parse, dedupe, windows, detectors, health, JSON state."""
    settings = Settings.from_config(ServerConfig(broker="-"))
    states: dict[str, DeviceState] = {}
    history: dict[str, History] = {}
    records = [Record(topic.split("/")[2], TELEMETRY, payload, 0, 0, 0) for topic, payload in messages]

    def state_of(device: str) -> DeviceState:
        return states.setdefault(device, settings.new_state(device))

    start = time.perf_counter()
    for i in range(0, len(records), batch):
        apply_batch(records[i:i + batch], state_of, lambda d: history.setdefault(d, History()), settings)
    return Run(f"logic only, batches of {batch}", len(records), time.perf_counter() - start)


def through_worker(kafka: LocalKafka, work_dir: Path, naming: BridgeNaming, total: int, partitions: int,
                   batch_size: int, name: str) -> Run:
    """Time one worker over the pre-filled topic, first counted reading to last."""
    run = uuid.uuid4().hex[:8]
    with WorkerProcess(work_dir, name=f"worker-{run}", broker=kafka.bootstrap_servers, app_id=f"bench-{run}",
                       telemetry_topic=naming.telemetry_topic, status_topic=naming.status_topic,
                       series_topic=f"bench-{run}.series", alerts_topic=f"bench-{run}.alerts",
                       partitions=partitions, batch_size=batch_size, broker_session_timeout_s=6,
                       log_level="warning") as worker:
        first = wait_for_answer(worker, "/accounting?scope=local", lambda a: bool(a and a["received"]), 180)
        started, counted = time.monotonic(), first["received"]
        last = wait_for_answer(worker, "/accounting?scope=local", lambda a: bool(a and a["received"] >= total),
                               900)
        elapsed = time.monotonic() - started
        if not last or last["received"] != total:
            raise RuntimeError(f"{name}: the worker counted {last and last['received']} of {total}:\n"
                               f"{worker.log_tail()}")
    return Run(name, total - counted, elapsed)


def render(runs: list[Run], devices: int, total: int, partitions: int) -> str:
    lines = [f"ferry bench server: {total:,} readings from {devices} devices in {partitions} partitions "
             f"(local broker on the same machine)", "",
             "| run | readings timed | s | readings/s | vs target 5,000/s |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in runs:
        lines.append(f"| {r.name} | {r.readings:,} | {r.seconds:.2f} | {r.per_s:,.0f} | {r.per_s / TARGET_PER_S:.2f}× |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry bench server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200, metavar="N")
    parser.add_argument("--per-device", type=int, default=150, metavar="N", help="readings per device (default 150)")
    parser.add_argument("--interval", type=int, default=10, metavar="S", help="seconds between a device's readings")
    parser.add_argument("--partitions", type=int, default=4, metavar="N")
    parser.add_argument("--batch-size", type=int, default=ServerConfig(broker="-").batch_size, metavar="N")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-record-per-batch worker")
    parser.add_argument("--work-dir", type=Path, metavar="DIR", help="keep logs here (default: a temp dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if min(args.devices, args.per_device, args.interval, args.partitions, args.batch_size) < 1:
        print("ferry bench server: every count must be positive", file=sys.stderr)
        return 2
    messages = readings(args.devices, args.per_device, args.interval)
    runs = [logic_only(messages, args.batch_size)]
    with tempfile.TemporaryDirectory(prefix="ferry-bench-server-") as temp:
        work_dir = args.work_dir or Path(temp)
        work_dir.mkdir(parents=True, exist_ok=True)
        with LocalKafka(work_dir) as kafka:
            naming = BridgeNaming("bench", telemetry_topic=f"bench-{uuid.uuid4().hex[:8]}.telemetry",
                                  status_topic=f"bench-{uuid.uuid4().hex[:8]}.status")
            admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
            topics = [NewTopic(t, args.partitions, 1) for t in (naming.telemetry_topic, naming.status_topic)]
            for future in admin.create_topics(topics).values():
                future.result(30)
            total = produce(kafka.bootstrap_servers, bridge_records(naming, messages, T0_S * 1000))
            runs.append(through_worker(kafka, work_dir, naming, total, args.partitions, args.batch_size,
                                       f"worker, batches of {args.batch_size}"))
            if not args.no_baseline:
                runs.append(through_worker(kafka, work_dir, naming, total, args.partitions, 1,
                                           "worker, one record per batch"))
    print(render(runs, args.devices, total, args.partitions), end="")
    return 0
