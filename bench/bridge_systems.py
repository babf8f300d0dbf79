"""The two systems `ferry bench bridge` compares, the generator runs, and process sampling.

A system is whatever stands between the devices and Kafka: Ferry's gateway
(broker and bridge in one process, `ferry gateway --kafka`), or the peer,
Mosquitto plus the paho → confluent-kafka forwarder (`bench/forwarder.py`).
Both answer the same questions: where devices connect, which processes to
sample, how many records Kafka has acknowledged so far, and how long a
restart after SIGKILL takes. Every process goes through
`ferry.process.ManagedProcess` and is stopped on the way out.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ferry.bench.bridge_model import ForwarderStatus, LoadProgress, LoadResult, LoadSpec, read_json, write_json_atomic
from ferry.bench.loadgen import proc_rss_kb
from ferry.bench.targets import HOST, MosquittoTarget, mosquitto_version
from ferry.gateway.bridge.config import BridgeConfig
from ferry.gateway.process import GatewayProcess, accepts_connections
from ferry.process import ManagedProcess, ProcessFailed, free_port, wait_until

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
INFLIGHT = BridgeConfig().inflight
"""Records handed to the Kafka producer and not yet acknowledged: Ferry's `bridge.inflight`
default, and Mosquitto's `max_inflight_messages` towards the forwarder (its default is 20)."""
START_TIMEOUT_S = 30.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_WAIT_S = 90.0
"""A generator told to stop waits up to 60 s for the PUBACKs it is owed, then writes its result."""


def restart_timeout_s(spooled: int) -> float:
    """How long a restart with `spooled` messages may take before the run is called failed."""
    return START_TIMEOUT_S + spooled / 10_000


# --------------------------------------------------------------------------- sampling

def rss_bytes(pids: dict[str, int]) -> int:
    """VmRSS of the processes together, in bytes (0 for one that is gone)."""
    total = 0
    for pid in pids.values():
        try:
            total += max(0, proc_rss_kb(pid)) * 1024
        except OSError:
            pass
    return total


@dataclass(frozen=True, slots=True)
class ProcessTimes:
    """CPU seconds (user + system) of every thread of one process at one moment."""

    pid: int
    threads: dict[int, tuple[str, float]]
    """Thread id → (thread name, seconds); empty once the process is gone."""


def process_times(pid: int) -> ProcessTimes:
    """From /proc/PID/task/TID/stat."""
    threads = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode(errors="replace")
        fields = stat.rpartition(b")")[2].split()
        threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    return ProcessTimes(pid, threads)


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds of the bench's processes, and of the whole machine, at one moment."""

    processes: dict[str, ProcessTimes]
    machine_busy_s: float
    """Every CPU's non-idle time (/proc/stat): what other programs used shows as the difference."""


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / _CLK_TCK


def cpu_times(pids: dict[str, int]) -> CpuSnapshot:
    return CpuSnapshot({name: process_times(pid) for name, pid in pids.items()}, machine_busy_s())


@dataclass(frozen=True, slots=True)
class CpuShare:
    """A process's CPU time over a window, in % of one core."""

    process: str
    percent: float
    """All its threads."""
    main_name: str
    """Its main thread's name."""
    main_named_percent: float
    """Its threads named like the main thread. In CPython (3.11 names no threads) these are the
    Python threads, which take turns holding one GIL: near 100 % the interpreter is the limit,
    however idle the other core is. Threads of C libraries (librdkafka's `rdk:*`) are named apart."""
    busiest_thread: str
    busiest_thread_percent: float


OTHERS = "other programs"
"""The share of the machine's busy time none of the bench's processes used (a shared machine)."""


def cpu_shares(before: CpuSnapshot, after: CpuSnapshot, window_s: float) -> tuple[CpuShare, ...]:
    """Each process's share over the window, then `OTHERS`."""
    shares = []
    for process, times in after.processes.items():
        earlier = before.processes[process].threads if process in before.processes else {}
        used = {tid: seconds - earlier.get(tid, (name, 0.0))[1] for tid, (name, seconds) in times.threads.items()}
        if not used or window_s <= 0:
            shares.append(CpuShare(process, 0.0, "-", 0.0, "-", 0.0))
            continue
        main_name = times.threads.get(times.pid, ("-", 0.0))[0]
        busiest = max(used, key=used.get)
        main_named = sum(seconds for tid, seconds in used.items() if times.threads[tid][0] == main_name)
        shares.append(CpuShare(process, 100.0 * sum(used.values()) / window_s, main_name,
                               100.0 * main_named / window_s, times.threads[busiest][0],
                               100.0 * used[busiest] / window_s))
    if window_s > 0:
        others = 100.0 * (after.machine_busy_s - before.machine_busy_s) / window_s - sum(s.percent for s in shares)
        shares.append(CpuShare(OTHERS, max(0.0, others), "-", 0.0, "-", 0.0))
    return tuple(shares)


# --------------------------------------------------------------------------- the generator

class Generator:
    """One run of `python -m ferry.bench.bridge_load` with its spec, progress and result files."""

    def __init__(self, spec: LoadSpec, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.spec_path = work_dir / f"load-{spec.tag}.spec.json"
        self.result_path = work_dir / f"load-{spec.tag}.result.json"
        self.progress_path = work_dir / f"load-{spec.tag}.progress.json"
        self.spec = LoadSpec(**{**_fields(spec), "progress_path": str(self.progress_path)})
        self.process = ManagedProcess(f"load {spec.tag}", [sys.executable, "-m", "ferry.bench.bridge_load",
                                                           str(self.spec_path), str(self.result_path)],
                                      work_dir / f"load-{spec.tag}.log", cwd=_PROJECT_ROOT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> "Generator":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.result_path, self.progress_path):
            path.unlink(missing_ok=True)
        write_json_atomic(self.spec, self.spec_path)
        self.process.start()
        if not wait_until(lambda: self.finished() or self.progress().publishing, START_TIMEOUT_S):
            self.process.stop()
            raise ProcessFailed(f"the load generator did not start publishing:\n{self.process.log_tail()}")
        return self

    def progress(self) -> LoadProgress:
        try:
            return read_json(LoadProgress, self.progress_path)
        except FileNotFoundError:
            return LoadProgress(0.0, 0, 0, False)

    def finished(self) -> bool:
        """True once it exited cleanly (a fixed count sent and acknowledged); raises if it failed."""
        status = self.process.poll()
        if status not in (None, 0):
            raise ProcessFailed(f"the load generator exited with {status}:\n{self.process.log_tail()}")
        return status == 0

    def __enter__(self) -> "Generator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.process.stop()

    def stop(self) -> LoadResult:
        """SIGTERM (it stops publishing and collects the PUBACKs it is owed), then its result."""
        self.process.stop(grace_s=STOP_WAIT_S)
        if not self.result_path.exists():
            raise ProcessFailed(f"the load generator wrote no result:\n{self.process.log_tail()}")
        return read_json(LoadResult, self.result_path)


def _fields(spec: LoadSpec) -> dict:
    return {name: getattr(spec, name) for name in spec.__slots__}


def generator_ceiling(work_dir: Path, publishers: int, window: int, seconds: float) -> tuple[float, float]:
    """(PUBACKed msg/s, generator CPU %) against the null broker (`bench/sink.py`): the most the
    generator can offer on this machine, so a system far below it was not held back by it."""
    port = free_port(HOST)
    sink = ManagedProcess("sink", [sys.executable, "-m", "ferry.bench.sink", "--host", HOST, "--port", str(port)],
                          work_dir / "sink.log", cwd=_PROJECT_ROOT)
    with sink:
        sink.start()
        sink.wait_ready(lambda: accepts_connections(HOST, port), START_TIMEOUT_S)
        with Generator(LoadSpec(HOST, port, "ceil", publishers, window=window), work_dir) as generator:
            time.sleep(seconds / 4)  # connected and warm
            before, start = cpu_times({"generator": generator.pid}), time.monotonic()
            time.sleep(seconds)
            after, end = cpu_times({"generator": generator.pid}), time.monotonic()
            result = generator.stop()
    rate = (result.acked_at(end) - result.acked_at(start)) / (end - start)
    return rate, cpu_shares(before, after, end - start)[0].percent


# --------------------------------------------------------------------------- systems

class System(Protocol):
    """What the bench needs from a system under test."""

    label: str
    description: str
    notes: tuple[str, ...]
    """Its settings, as printed under the table."""
    port: int
    """Where devices connect (MQTT)."""

    def pids(self) -> dict[str, int]:
        """Its processes by name, for RSS and CPU."""

    def start(self) -> float:
        """Start it; seconds until devices can connect."""

    def kill(self) -> None:
        """SIGKILL every process of it at once (a power cut)."""

    def restart_after_kill(self, timeout_s: float) -> float:
        """Start it again on the same data; seconds until devices can connect."""

    def stop(self) -> None: ...

    def kafka_acked(self) -> int:
        """Records Kafka acknowledged since its current start."""

    def spooled(self) -> int | None:
        """Messages waiting for Kafka, where the system shows it."""

    def log_tail(self) -> str: ...


class FerrySystem:
    """`ferry gateway` with its Kafka bridge, durability fsync, metrics on a port of its own."""

    label = "Ferry"
    description = "ferry gateway (broker + bridge, store.durability = fsync)"

    def __init__(self, work_dir: Path, kafka: str, spool_capacity: int, profile_dir: Path | None = None) -> None:
        config = (
            '[store]\ndurability = "fsync"\n\n'
            f'[bridge]\nkafka = "{kafka}"\ngateway_id = "bench-ferry"\n'
            f"spool_max_messages = {spool_capacity}\nspool_max_bytes = {spool_capacity * 1024}\n"
            f"inflight = {INFLIGHT}\n\n"
            # The load generator's devices publish flat out from one address; Mosquitto limits neither.
            "[broker]\nmax_publish_rate = 0\nmax_connections_per_address = 0\n"
        )
        self.gateway = GatewayProcess(work_dir / "ferry", config_text=config, metrics_port=free_port())
        self.port = self.gateway.port
        self.notes = ("store.durability = fsync (PUBACK after fdatasync)",
                      f"bridge.spool_max_messages = {spool_capacity:,} (above what the run spools)",
                      f"bridge.inflight = {INFLIGHT}")
        self.process: ManagedProcess | None = None
        self.starts = 0
        self.profile_dir = profile_dir

    def pids(self) -> dict[str, int]:
        return {"gateway": self.process.pid}

    def start(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Start the gateway; seconds until it accepts MQTT connections (then its metrics answer too)."""
        self.starts += 1
        argv = self.gateway.argv()
        if self.profile_dir is not None:  # python -m cProfile -o FILE -m ferry gateway ...
            argv = [argv[0], "-m", "cProfile", "-o", str(self.profile_dir / f"gateway-{self.starts}.prof"), *argv[1:]]
        self.process = ManagedProcess(f"gateway#{self.starts}", argv, self.gateway.log_path)
        started = time.monotonic()
        self.process.start()
        try:
            self.process.wait_ready(lambda: accepts_connections(HOST, self.port), timeout_s)
            ready_s = time.monotonic() - started
            self.process.wait_ready(lambda: accepts_connections(HOST, self.gateway.metrics_port), START_TIMEOUT_S)
        except ProcessFailed:
            self.process.stop()
            raise
        return ready_s

    def restart_after_kill(self, timeout_s: float) -> float:
        return self.start(timeout_s)

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def metrics(self) -> dict[str, float]:
        url = f"http://{HOST}:{self.gateway.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def kafka_acked(self) -> int:
        """Records Kafka acknowledged since this gateway process started."""
        return int(self.metrics()["ferry_bridge_acked_total"])

    def spooled(self) -> int | None:
        return int(self.metrics()["ferry_bridge_spool_messages"])

    def log_tail(self) -> str:
        return self.gateway.log_text()[-3000:]


class PeerMosquitto(MosquittoTarget):
    """The benchmark's Mosquitto (`bench/targets.py`) with a forwarder-sized in-flight window, restartable."""

    def config_text(self) -> str:
        return super().config_text() + f"max_inflight_messages {INFLIGHT}\n"

    def kill(self) -> None:
        self.process.kill()

    def restart(self, timeout_s: float) -> float:
        """Start again on the same port, config and persistence directory; seconds until it accepts."""
        argv = self.process.argv
        self.process = ManagedProcess("mosquitto", argv, self.work_dir / "stdout.log")
        started = time.monotonic()
        self.process.start()
        self.process.wait_ready(lambda: accepts_connections(HOST, self.port), timeout_s)
        self.pid = self.process.pid
        return time.monotonic() - started


class PeerSystem:
    """Mosquitto (persistence true, as users run it) plus the paho → confluent-kafka forwarder."""

    label = "Mosquitto + forwarder"

    def __init__(self, work_dir: Path, kafka: str, mosquitto_binary: str) -> None:
        self.work_dir = work_dir / "peer"
        self.kafka = kafka
        self.mosquitto = PeerMosquitto(mosquitto_binary, self.work_dir / "mosquitto", None)
        self.port = self.mosquitto.port
        self.status_path = self.work_dir / "forwarder.status.json"
        self.forwarder: ManagedProcess | None = None
        self.forwarder_starts = 0
        self.notes = (*self.mosquitto.notes, f"max_inflight_messages {INFLIGHT} (its default is 20)",
                      "forwarder: paho-mqtt 2 (clean session 0, QoS 1, manual_ack) → confluent-kafka "
                      "(the bridge's producer settings and records)")

    @property
    def description(self) -> str:
        return f"Mosquitto {mosquitto_version(self.mosquitto.binary)} + paho → confluent-kafka forwarder"

    def pids(self) -> dict[str, int]:
        return {"mosquitto": self.mosquitto.pid, "forwarder": self.forwarder.pid}

    def start(self) -> float:
        started = time.monotonic()
        self.mosquitto.start()
        ready_s = time.monotonic() - started
        self._start_forwarder()
        return ready_s

    def _start_forwarder(self) -> None:
        self.status_path.unlink(missing_ok=True)
        self.forwarder_starts += 1
        argv = [sys.executable, "-m", "ferry.bench.forwarder", "--mqtt", f"{HOST}:{self.port}",
                "--kafka", self.kafka, "--status", str(self.status_path)]
        self.forwarder = ManagedProcess(f"forwarder#{self.forwarder_starts}", argv, self.work_dir / "forwarder.log",
                                        cwd=_PROJECT_ROOT)
        self.forwarder.start()
        self.forwarder.wait_ready(lambda: self._status().connected, START_TIMEOUT_S)

    def _status(self) -> ForwarderStatus:
        try:
            return read_json(ForwarderStatus, self.status_path)
        except FileNotFoundError:
            return ForwarderStatus(0.0, 0, 0, 0, False)

    def restart_after_kill(self, timeout_s: float) -> float:
        """Start Mosquitto and then the forwarder again; seconds until Mosquitto accepts connections."""
        ready_s = self.mosquitto.restart(timeout_s)
        self._start_forwarder()
        return ready_s

    def kill(self) -> None:
        """A power cut: both processes at once."""
        self.forwarder.kill()
        self.mosquitto.kill()

    def stop(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
        self.mosquitto.stop()

    def kafka_acked(self) -> int:
        """Records Kafka acknowledged since this forwarder process started."""
        if self.forwarder.poll() is not None:
            raise ProcessFailed(f"the forwarder exited with {self.forwarder.poll()}:\n{self.forwarder.log_tail()}")
        return self._status().acked

    def spooled(self) -> int | None:
        """Not observable from outside: Mosquitto does not tell how much one session has queued."""
        return None

    def log_tail(self) -> str:
        text = self.mosquitto.log_tail()
        if self.forwarder is not None:
            text += "\n--- forwarder ---\n" + self.forwarder.log_tail(1500)
        return text
