"""`ferry bench server`: readings per second through one `ferry worker`, and its memory per device.

The command starts the local Kafka-compatible broker, fills a telemetry topic
with contract readings (simulated sensors, keyed and partitioned as the bridge
does; with `--deep-sleep-every K` each device starts a new boot every K
readings, as a device waking from deep sleep does), starts a worker and times
it from the first reading it counts to the last, polling `/accounting`. The
same data also goes through the worker's pure logic in this process, and,
with `--baseline`, through a worker that takes one record per batch (a table
write per record, Faust's usual pattern; about 7 minutes at the default size),
so the report shows what batching buys and what Faust and the broker cost.

Memory per device: the worker's resident set (VmRSS) settled after it counted
every reading (`SETTLE_S` later), less that of a worker of the same settings on
empty topics, divided by the number of devices. Beside it, the peak: the
worker's high-water mark (VmHWM) over the run, which adds what its batches
hold while they are applied and written (~35 MB at 2,000 devices a batch,
swinging with each batch).

`--fleet` runs the fleets issue 14's targets name, one after the other on one
broker: 1,000 devices x 60 readings and 10,000 x 30, each always on and in deep
sleep (a new boot every 4 readings), and ends with a summary table of the four.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from ferry.contract import BridgeNaming, Reading, encode_reading
from ferry.local_kafka import LocalKafka
from ferry.process import sigterm_as_interrupt
from ferry.hwsim.shims import sensor_model
from ferry.server.config import ServerConfig
from ferry.server.logic import TELEMETRY, Record, Settings, apply_batch
from ferry.server.state import DeviceState, encode_state
from ferry.server.windows import History
from ferry.server.process import WorkerProcess, bridge_records, produce, wait_for_answer

TARGET_PER_S = 8000
TARGET_BYTES_PER_DEVICE = 16 * 1024


@dataclass(frozen=True, slots=True)
class Fleet:
    """One benchmark's devices: how many, how many readings each, and a new boot every `boot_every`
    readings (0: always on)."""

    devices: int
    per_device: int
    boot_every: int = 0

    @property
    def readings(self) -> int:
        return self.devices * self.per_device

    def describe(self) -> str:
        sleep = f", a new boot every {self.boot_every} readings" if self.boot_every else ""
        return f"{self.readings:,} readings from {self.devices:,} devices{sleep}"


FLEETS = (Fleet(1000, 60), Fleet(1000, 60, 4), Fleet(10_000, 30), Fleet(10_000, 30, 4))
"""`--fleet`: the sizes issue 14's targets name, always on and in deep sleep."""


OFFLINE_AFTER_INTERVALS = 60
"""The benchmark's workers call a device offline after 60 of its intervals without a reading (10
minutes at 10 s; the default is 3). The readings are all in Kafka before a worker starts, the last
taken as the benchmark began (`start_s`), so by the time a worker has caught up (30-40 s at 10,000
devices) every device had been silent for longer than 3 intervals by the wall clock: the first
health check after the catch-up called all 10,000 offline at once and wrote their states, a burst
the settled memory then caught in some runs and not in others (12.0 and 18.9 KB per device in two
fleet runs of the same code). A live fleet is not silent; this is the benchmark's, not the
worker's."""


def start_s(per_device: int, interval_s: int) -> int:
    """When the first readings were taken: so that the last ones are taken as the benchmark starts.
    Recent data, as a live fleet's: with readings received long ago the health check would call
    every device offline (and back online at its next reading) throughout the run."""
    return int(time.time()) - per_device * interval_s


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    readings: int
    seconds: float

    rss_bytes: int = 0
    """The worker's resident set `SETTLE_S` after it counted every reading (0: not measured)."""
    peak_rss_bytes: int = 0
    """The worker's resident set at its highest over the run (VmHWM)."""

    @property
    def per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def readings(devices: int, per_device: int, interval_s: int, boot_every: int,
             first_s: int) -> list[tuple[str, bytes]]:
    """(MQTT topic, payload) of every reading from `first_s` on, interleaved across devices as a fleet
    sends them; with `boot_every`, each device's boot goes up every that many readings (deep sleep)
    and seq starts again."""
    out = []
    for i in range(per_device):
        t = first_s + i * interval_s
        boot, seq = (1 + i // boot_every, i % boot_every) if boot_every else (1, i)
        for d in range(devices):
            dev = f"bench-{d:05d}"
            metrics = {"temp_c": round(sensor_model.temperature_c(d, t), 2),
                       "rh_pct": round(sensor_model.humidity_pct(d, t), 2)}
            payload = encode_reading(Reading(dev, boot, seq, t * 1000, True, metrics,
                                             sensor_model.battery_mv(d, t, first_s), -60))
            out.append((f"ferry/bench/{dev}/telemetry", payload))
    return out


def received_as_sent(naming: BridgeNaming, messages: list[tuple[str, bytes]], devices: int,
                     interval_s: int, first_s: int) -> list:
    """The bridge's records of `readings`, each received half a second after it was taken (so no
    reading looks ahead of its receive time by more than the allowed clock skew)."""
    records = []
    for i in range(0, len(messages), devices):
        received_ms = (first_s + (i // devices) * interval_s) * 1000 + 500
        records += bridge_records(naming, messages[i:i + devices], received_ms)
    return records


SETTLE_S = 3.0
"""How long after the last reading was counted the worker's resident set is read: sampled every 0.25 s,
it swung by ~35 MB with each batch (10,000 devices, 2,000 a batch) and settled within a second of the
last; read at once, the benchmark's figure was wherever the last poll fell (14.3-18.3 KB per device in
three runs of the same code)."""


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident set size (Linux /proc), in bytes; `field` VmHWM: its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def logic_only(messages: list[tuple[str, bytes]], batch: int) -> Run:
    """The worker's logic in this process: parse, dedupe, windows, detectors, health, each changed state encoded (`encode_state`)."""
    settings = Settings.from_config(ServerConfig(broker="-"))
    states: dict[str, DeviceState] = {}
    history: dict[str, History] = {}
    records = [Record(topic.split("/")[2], TELEMETRY, payload, 0, 0, 0) for topic, payload in messages]

    def state_of(device: str) -> DeviceState:
        return states.setdefault(device, settings.new_state(device))

    start = time.perf_counter()
    for i in range(0, len(records), batch):
        result = apply_batch(records[i:i + batch], state_of, lambda d: history.setdefault(d, History()), settings)
        for _, state in result.states.values():  # as the worker writes them
            encode_state(state)
    return Run(f"logic only, batches of {batch}", len(records), time.perf_counter() - start)


def worker_settings(kafka: LocalKafka, naming: BridgeNaming, partitions: int, batch_size: int,
                    store: str) -> dict:
    run = uuid.uuid4().hex[:8]
    return {"broker": kafka.bootstrap_servers, "app_id": f"bench-{run}", "telemetry_topic": naming.telemetry_topic,
            "status_topic": naming.status_topic, "series_topic": f"bench-{run}.series",
            "series_5m_topic": f"bench-{run}.series.5m", "alerts_topic": f"bench-{run}.alerts",
            "health_topic": f"bench-{run}.health", "partitions": partitions, "batch_size": batch_size,
            "broker_session_timeout_s": 6, "log_level": "warning", "store": store,
            "offline_after_intervals": OFFLINE_AFTER_INTERVALS}


def through_worker(kafka: LocalKafka, work_dir: Path, naming: BridgeNaming, total: int, partitions: int,
                   batch_size: int, name: str, devices: int, store: str = "memory://") -> Run:
    """Time one worker over the pre-filled topic, first counted reading to last; its RSS settled after
    that (`SETTLE_S`), and its peak."""
    settings = worker_settings(kafka, naming, partitions, batch_size, store)
    every_s = poll_interval_s(devices)
    with WorkerProcess(work_dir, name=f"worker-{settings['app_id']}", **settings) as worker:
        first = poll_accounting(worker, lambda a: bool(a["received"]), every_s, 180)
        started, counted = time.monotonic(), first["received"]
        last = poll_accounting(worker, lambda a: a["received"] >= total, every_s, 1800)
        elapsed = time.monotonic() - started
        if not last or last["received"] != total:
            raise RuntimeError(f"{name}: the worker counted {last and last['received']} of {total}:\n"
                               f"{worker.log_tail()}")
        time.sleep(SETTLE_S)
        rss, peak = rss_bytes(worker.process.pid), rss_bytes(worker.process.pid, "VmHWM")
    return Run(name, total - counted, elapsed, rss, peak)


def poll_interval_s(devices: int) -> float:
    """How often the benchmark asks the worker's `/accounting`: every 0.2 s, but no more than once per
    2 ms of summing devices. Each answer sums every device (at 10,000 devices ~0.1 s of the worker's
    event loop on this machine): asked 5 times a second it took a third of the worker's time, the
    benchmark measuring itself. At 10,000 devices that is every 2 s, ~2 % of a run of ~100 s."""
    return max(0.2, devices / 5000)


def poll_accounting(worker: WorkerProcess, done: Callable[[dict], bool], every_s: float, timeout_s: float) -> dict:
    """`/accounting?scope=local` every `every_s` until `done(answer)`; the last answer (None: never answered)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = worker.get("/accounting?scope=local")
        if answer and done(answer) or time.monotonic() > deadline:
            return answer
        if worker.poll() is not None:
            raise RuntimeError(f"{worker.name} exited:\n{worker.log_tail()}")
        time.sleep(every_s)


def idle_worker_rss(kafka: LocalKafka, work_dir: Path, partitions: int, batch_size: int, store: str) -> int:
    """The resident set of a worker on empty topics, once it answers (what a device is measured against)."""
    naming = create_topics(kafka, partitions)
    settings = worker_settings(kafka, naming, partitions, batch_size, store)
    with WorkerProcess(work_dir, name=f"idle-{settings['app_id']}", **settings) as worker:
        wait_for_answer(worker, "/accounting?scope=local", lambda a: a is not None, 180)
        time.sleep(2.0)  # past its first health check and commit
        return rss_bytes(worker.process.pid)


def create_topics(kafka: LocalKafka, partitions: int) -> BridgeNaming:
    run = uuid.uuid4().hex[:8]
    naming = BridgeNaming("bench", telemetry_topic=f"bench-{run}.telemetry", status_topic=f"bench-{run}.status")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    topics = [NewTopic(t, partitions, 1) for t in (naming.telemetry_topic, naming.status_topic)]
    for future in admin.create_topics(topics).values():
        future.result(30)
    return naming


def render(runs: list[Run], fleet: Fleet, total: int, partitions: int, idle_rss: int, store: str) -> str:
    sleep = f", a new boot every {fleet.boot_every} readings" if fleet.boot_every else ""
    lines = [f"ferry bench server: {total:,} readings from {fleet.devices:,} devices{sleep} in {partitions} partitions, "
             f"store {store} (local broker on the same machine)", "",
             f"| run | readings timed | s | readings/s | vs target {TARGET_PER_S:,}/s |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in runs:
        lines.append(f"| {r.name} | {r.readings:,} | {r.seconds:.2f} | {r.per_s:,.0f} | {r.per_s / TARGET_PER_S:.2f}× |")
    measured = [r for r in runs if r.rss_bytes]
    if measured and idle_rss:
        lines += ["", f"| run | worker RSS, settled | idle worker RSS | per device | vs target "
                      f"{TARGET_BYTES_PER_DEVICE // 1024} KB | worker peak RSS | peak per device |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in measured:
            per_device = per_device_bytes(r, idle_rss, fleet)
            lines.append(f"| {r.name} | {r.rss_bytes / 2**20:,.1f} MiB | {idle_rss / 2**20:,.1f} MiB | "
                         f"{per_device / 1024:,.1f} KB | {per_device / TARGET_BYTES_PER_DEVICE:.2f}× | "
                         f"{r.peak_rss_bytes / 2**20:,.1f} MiB | "
                         f"{per_device_bytes(r, idle_rss, fleet, peak=True) / 1024:,.1f} KB |")
    return "\n".join(lines) + "\n"


def per_device_bytes(run: Run, idle_rss: int, fleet: Fleet, peak: bool = False) -> float:
    return ((run.peak_rss_bytes if peak else run.rss_bytes) - idle_rss) / fleet.devices


def render_summary(results: list[tuple[Fleet, list[Run]]], idle_rss: int) -> str:
    """One row per fleet: the worker's readings/s and memory per device, and the logic alone's readings/s."""
    lines = ["ferry bench server --fleet: the batched worker per fleet", "",
             f"| fleet | worker readings/s | vs {TARGET_PER_S:,}/s | memory per device (settled) | "
             f"vs {TARGET_BYTES_PER_DEVICE // 1024} KB | peak per device | logic alone readings/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for fleet, runs in results:
        logic = next(r for r in runs if r.name.startswith("logic only"))
        worker = next(r for r in runs if r.rss_bytes)
        per_device = per_device_bytes(worker, idle_rss, fleet)
        lines.append(f"| {fleet.describe()} | {worker.per_s:,.0f} | {worker.per_s / TARGET_PER_S:.2f}× | "
                     f"{per_device / 1024:,.1f} KB | {per_device / TARGET_BYTES_PER_DEVICE:.2f}× | "
                     f"{per_device_bytes(worker, idle_rss, fleet, peak=True) / 1024:,.1f} KB | {logic.per_s:,.0f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry bench server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200, metavar="N")
    parser.add_argument("--per-device", type=int, default=150, metavar="N", help="readings per device (default 150)")
    parser.add_argument("--interval", type=int, default=10, metavar="S", help="seconds between a device's readings")
    parser.add_argument("--deep-sleep-every", type=int, default=0, metavar="K",
                        help="a new boot every K readings of a device (default: one boot)")
    parser.add_argument("--fleet", action="store_true",
                        help="instead of --devices/--per-device/--deep-sleep-every: 1,000 devices x 60 readings and "
                             "10,000 x 30, each always on and with a new boot every 4 readings (~4 minutes here)")
    parser.add_argument("--store", default="memory://", help="the worker's table store (default memory://)")
    parser.add_argument("--partitions", type=int, default=4, metavar="N")
    parser.add_argument("--batch-size", type=int, default=ServerConfig(broker="-").batch_size, metavar="N")
    parser.add_argument("--baseline", action="store_true",
                        help="also run a worker taking one record per batch (slow: every record waits for "
                             "Kafka's acknowledgements)")
    parser.add_argument("--work-dir", type=Path, metavar="DIR", help="keep logs here (default: a temp dir)")
    return parser


def run_workers(args: argparse.Namespace, fleets: Sequence[Fleet]) -> tuple[list[tuple[Fleet, list[Run], int]], int]:
    """Each fleet through the logic alone and through workers, on one local broker of their own:
    ([(fleet, runs, readings produced)], idle worker RSS)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-server-") as temp:
        work_dir = args.work_dir or Path(temp)
        work_dir.mkdir(parents=True, exist_ok=True)
        with LocalKafka(work_dir) as kafka:
            idle = idle_worker_rss(kafka, work_dir, args.partitions, args.batch_size, args.store)
            for fleet in fleets:
                first_s = start_s(fleet.per_device, args.interval)
                messages = readings(fleet.devices, fleet.per_device, args.interval, fleet.boot_every, first_s)
                runs = [logic_only(messages, args.batch_size)]
                naming = create_topics(kafka, args.partitions)
                total = produce(kafka.bootstrap_servers,
                                received_as_sent(naming, messages, fleet.devices, args.interval, first_s))
                del messages
                runs.append(through_worker(kafka, work_dir, naming, total, args.partitions, args.batch_size,
                                           f"worker, batches of {args.batch_size}", fleet.devices, args.store))
                if args.baseline:
                    runs.append(through_worker(kafka, work_dir, naming, total, args.partitions, 1,
                                               "worker, one record per batch", fleet.devices, args.store))
                results.append((fleet, runs, total))
    return results, idle


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if min(args.devices, args.per_device, args.interval, args.partitions, args.batch_size) < 1 \
            or args.deep_sleep_every < 0:
        print("ferry bench server: every count must be positive", file=sys.stderr)
        return 2
    fleets = FLEETS if args.fleet else (Fleet(args.devices, args.per_device, args.deep_sleep_every),)
    try:
        with sigterm_as_interrupt():
            results, idle = run_workers(args, fleets)
    except KeyboardInterrupt:
        print("ferry bench server: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    for fleet, runs, total in results:
        print(render(runs, fleet, total, args.partitions, idle, args.store))
    if args.fleet:
        print(render_summary([(fleet, runs) for fleet, runs, _ in results], idle), end="")
    return 0
