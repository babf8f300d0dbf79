"""The brokers a benchmark runs against: Ferry, Mosquitto and the null sink, each a child process.

Each target starts on a free 127.0.0.1 port with a fresh data directory, can
be pinned to a set of CPUs (every thread), and is always stopped through
`ferry.process.ManagedProcess` (SIGTERM, then SIGKILL, whole process group).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ferry.process import ManagedProcess, free_port
from ferry.gateway.process import READY_TIMEOUT_S, GatewayProcess, accepts_connections

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
MOSQUITTO_INSTALL_HINT = "install it with `sudo apt-get install mosquitto` (Debian/Ubuntu) to compare against it"
HOST = "127.0.0.1"
QUEUE_UNBOUNDED_MESSAGES = 100_000_000
"""Ferry's session queue limit in the benchmark: as good as Mosquitto's `max_queued_messages 0`."""
UNLIMITED_CLIENTS = {"max_publish_rate": 0, "max_connections": 0, "max_connections_per_address": 0}
"""The benchmark's load comes from one address and publishes flat out: Ferry's per-client publish
rate and connection limits are off (the open-files limit still caps connections), as Mosquitto
has none by default."""


@dataclass(frozen=True, slots=True)
class Variant:
    """A broker and its settings, as one column of a results table."""

    label: str
    kind: str
    """"ferry", "mosquitto" or "sink"."""
    durability: str = "fsync"
    """Ferry only: the `[store] durability` setting."""


FERRY_FSYNC = Variant("Ferry", "ferry", "fsync")
FERRY_FSYNC_QOS1 = Variant("Ferry fsync", "ferry", "fsync")
FERRY_OS = Variant("Ferry os", "ferry", "os")
MOSQUITTO = Variant("Mosquitto", "mosquitto")
SINK = Variant("null sink", "sink")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def mosquitto_version(binary: str) -> str:
    import subprocess

    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.strip().splitlines()[0] if out.strip() else ""
    return first.removeprefix("mosquitto version ").strip() or "unknown"


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of `pid` (threads started later inherit it from their creator)."""
    if not cpus:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def nofile_limit(pid: int) -> tuple[int, int] | None:
    """The process's RLIMIT_NOFILE (soft, hard) from /proc/PID/limits."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return int(soft), int(hard)
    except (OSError, ValueError):
        pass
    return None


class Target:
    """A running broker: where it listens and which process to sample."""

    variant: Variant
    port: int
    pid: int
    notes: tuple[str, ...] = ()

    def start(self) -> "Target":
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self) -> str:
        return ""

    def __enter__(self) -> "Target":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


Override = tuple[str, str, object]
"""(section, key, value) of ferry.toml, from `ferry bench broker --ferry-set SECTION.KEY=VALUE`."""


def ferry_config_text(durability: str, overrides: tuple[Override, ...] = ()) -> str:
    """The benchmark's ferry.toml: the variant's durability, unbounded queues, then the overrides."""
    sections: dict[str, dict[str, object]] = {
        "store": {"durability": durability},
        "broker": {"max_queued_messages": QUEUE_UNBOUNDED_MESSAGES,
                   "max_queued_bytes": QUEUE_UNBOUNDED_MESSAGES * 1024, **UNLIMITED_CLIENTS},
    }
    for section, key, value in overrides:
        sections.setdefault(section, {})[key] = value
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


class FerryTarget(Target):
    def __init__(self, variant: Variant, work_dir: Path, cpus: set[int] | None,
                 overrides: tuple[Override, ...] = ()) -> None:
        self.variant = variant
        self.cpus = cpus
        self.gateway = GatewayProcess(work_dir, config_text=ferry_config_text(variant.durability, overrides))
        self.port = self.gateway.port
        self.notes = (f"durability = {variant.durability}", f"max_queued_messages = {QUEUE_UNBOUNDED_MESSAGES:,}",
                      "max_publish_rate, max_connections(_per_address) = 0 (unlimited)",
                      *(f"{section}.{key} = {_toml_value(value)}" for section, key, value in overrides))

    def start(self) -> "FerryTarget":
        self.gateway.start()
        self.pid = self.gateway.process.pid
        pin(self.pid, self.cpus)
        return self

    def stop(self) -> None:
        self.gateway.stop()

    def log_tail(self) -> str:
        return self.gateway.log_text()[-3000:]


class MosquittoTarget(Target):
    """Mosquitto with a config of our own.

    Started as root, Mosquitto switches to user `mosquitto`, which must be able
    to write its persistence and log paths: they live in a fresh directory in
    the system temp dir owned by that user (removed on stop; the log is copied
    to `work_dir` first). If that directory is not reachable for other users,
    Mosquitto is told to stay root (`user root`) and the notes say so.
    """

    def __init__(self, binary: str, work_dir: Path, cpus: set[int] | None) -> None:
        self.variant = MOSQUITTO
        self.binary = binary
        self.cpus = cpus
        self.work_dir = work_dir
        self.run_dir: Path | None = None
        self.port = free_port(HOST)
        self.process: ManagedProcess | None = None
        self.stay_root = False
        self.notes = ("persistence true, default autosave_interval 1800 s: no fsync per message",
                      "max_queued_messages 0 (unlimited)", "set_tcp_nodelay true")

    def config_text(self) -> str:
        assert self.run_dir is not None
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {self.run_dir}/",
            "max_queued_messages 0",
            f"log_dest file {self.run_dir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
        ]
        if self.stay_root:
            lines.append("user root")
        return "\n".join(lines) + "\n"

    def _prepare_run_dir(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="ferry-bench-mosquitto-"))
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return  # no such user: Mosquitto stays root by itself
        os.chown(self.run_dir, user.pw_uid, user.pw_gid)
        parents = self.run_dir.parents
        if not all(p.stat().st_mode & 0o001 for p in parents):
            self.stay_root = True
            self.notes += ("runs as root (`user root`): the temp dir is not reachable for user mosquitto",)

    def start(self) -> "MosquittoTarget":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_run_dir()
        conf = self.run_dir / "mosquitto.conf"
        conf.write_text(self.config_text())
        shutil.copy(conf, self.work_dir / "mosquitto.conf")
        self.process = ManagedProcess("mosquitto", [self.binary, "-c", str(conf)], self.work_dir / "stdout.log")
        self.process.start()
        try:
            self.process.wait_ready(lambda: accepts_connections(HOST, self.port), READY_TIMEOUT_S)
        except Exception:
            self.stop()
            raise
        self.pid = self.process.pid
        pin(self.pid, self.cpus)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self.run_dir is not None:
            log = self.run_dir / "mosquitto.log"
            if log.exists():
                shutil.copy(log, self.work_dir / "mosquitto.log")
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    def log_tail(self) -> str:
        text = ""
        for name in ("stdout.log", "mosquitto.log"):
            path = self.work_dir / name
            if path.exists():
                text += path.read_text(errors="replace")[-1500:]
        return text


class SinkTarget(Target):
    def __init__(self, work_dir: Path, cpus: set[int] | None) -> None:
        self.variant = SINK
        self.cpus = cpus
        self.work_dir = work_dir
        self.port = free_port(HOST)
        self.process: ManagedProcess | None = None

    def start(self) -> "SinkTarget":
        argv = [sys.executable, "-m", "ferry.bench.sink", "--host", HOST, "--port", str(self.port)]
        self.process = ManagedProcess("sink", argv, self.work_dir / "sink.log", cwd=_project_root())
        self.process.start()
        try:
            self.process.wait_ready(lambda: accepts_connections(HOST, self.port), READY_TIMEOUT_S)
        except Exception:
            self.process.stop()
            raise
        self.pid = self.process.pid
        pin(self.pid, self.cpus)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log_tail(self) -> str:
        return self.process.log_tail() if self.process is not None else ""


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def make_target(variant: Variant, work_dir: Path, cpus: set[int] | None, mosquitto: str | None,
                ferry_overrides: tuple[Override, ...] = ()) -> Target:
    if variant.kind == "ferry":
        return FerryTarget(variant, work_dir, cpus, ferry_overrides)
    if variant.kind == "mosquitto":
        if mosquitto is None:
            raise RuntimeError("Mosquitto is not installed")
        return MosquittoTarget(mosquitto, work_dir, cpus)
    return SinkTarget(work_dir, cpus)
