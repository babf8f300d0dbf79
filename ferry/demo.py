"""`ferry demo`: the whole pipeline on this machine, with a simulated fleet over flaky links.

    boards ──link (--profile)──► gateway ──bridge──link (uplink)──► Kafka (Tansu) ──► worker
                                 (disk spool rides out outages)                   (HTTP API, dashboard)

Starts, in order: the local Kafka-compatible broker (advertising the uplink link's
port, so every Kafka connection goes through that link), the uplink link, the six
topics, `ferry gateway` with its Kafka bridge, `ferry worker` (HTTP API and
dashboard on 127.0.0.1) and the fleet. It prints a progress line every few
seconds; on Ctrl-C, SIGTERM or the end of `--duration` it stops the faults,
drains the fleet, waits for the worker to count every reading and prints the
final accounting: per device, generated - dropped at the device - received (each
(device, boot, seq) once) at the server, which must be 0. Exit status 0 when it
is 0 for every device, 1 otherwise, 2 on usage errors. docs/demo.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

DEFAULT_WEB_PORT = 6066
PARTITIONS = 4
APP_ID = "ferry-demo"
GATEWAY_ID = "demo-gw"
CONSOLE_USER = "demo-console"
"""The operator account of the fleet's own subscriber."""
SITE = "sim"
TOPICS = ("ferry.telemetry", "ferry.status", "ferry.reply", "ferry.deadletter", "ferry.series.1m", "ferry.series.5m",
          "ferry.alerts", "ferry.health")
"""What the gateway's bridge writes (BridgeNaming's defaults) and what the worker writes."""
SPOOL_METRIC = "ferry_bridge_unacked_records"
"""The gateway's gauge of records Kafka has not acknowledged, wherever the bridge holds them: the
spool's (in flight to Kafka included) and the QoS 0 ones held in memory."""
SPOOL_SAMPLE_S = 1.0
EXIT_OK, EXIT_UNACCOUNTED, EXIT_USAGE = 0, 1, 2


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM during start-up: stop at once (cleaning up). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """One demo run; see `build_parser` for each option's meaning."""

    devices: int = 20
    profile: str = "wifi-flaky"
    """Link profile between every device and the gateway."""
    sample_ms: int = 2000
    power_cuts_per_min: float = 2.0
    power_off_s: float = 2.0
    uplink_profile: str = "perfect"
    """Link profile between the gateway (and the worker: the broker advertises one address) and Kafka."""
    uplink_outage_every_s: float = 60.0
    """0: no scheduled outages."""
    uplink_outage_s: float = 10.0
    duration_s: float | None = None
    """None: until Ctrl-C or SIGTERM."""
    web_port: int = DEFAULT_WEB_PORT
    """0: any free port."""
    work_dir: Path | None = None
    """None: a temporary folder, removed at the end."""
    live_every_s: float = 5.0
    drain_timeout_s: float = 120.0
    """Bound of each end phase: the devices sending their backlog, then the worker counting it."""
    seed: int = 1
    json_path: Path | None = None


# ---------------------------------------------------------------------- pure parts

def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text → sample name → value (labelled samples of one name summed); empty for text
    that is not Prometheus text (the progress line then says the gateway did not tell)."""
    from ferry.server.pipeline import ExpositionError, parse_exposition

    try:
        return {name: family.total() for name, family in parse_exposition(text).items()}
    except ExpositionError:
        return {}


def spool_depth(metrics: dict[str, float]) -> float | None:
    """Records the gateway holds that Kafka has not acknowledged (its spool, in flight included, and QoS 0
    ones in memory), or None if the gateway does not say."""
    return metrics.get(SPOOL_METRIC)


@dataclass(frozen=True, slots=True)
class DeviceBalance:
    """One device's readings from the device's own count to the server's."""

    device: str
    generated: int
    """Readings the device made (its console's seq, deliveries and the loss ranges it reported)."""
    dropped_at_device: int
    """The device's own `outbox.dropped`: readings it lost itself (full outbox, power cut before flash)."""
    at_gateway: int
    """Distinct readings the gateway delivered to the fleet's subscriber (so it had PUBACKed them)."""
    received: int
    """Distinct (boot, seq) readings the worker accepted."""
    duplicates: int
    """Readings the worker received again and dropped."""
    gaps: int
    lost_at_device_server: int
    """`outbox.dropped` as the worker learnt it from the device's status messages."""

    @property
    def unaccounted(self) -> int:
        """Readings neither received by the server nor counted dropped by the device; 0 is the promise.
        Negative would mean the server counted more than the device made."""
        return self.generated - self.dropped_at_device - self.received


def balances(fleet_rows: Sequence[dict], server_devices: dict | None) -> list[DeviceBalance]:
    """Join the fleet's per-device rows (`Fleet.rows()`) with the worker's `/devices` answer."""
    server_devices = server_devices or {}
    out = []
    for row in fleet_rows:
        s = server_devices.get(row["device"], {})
        out.append(DeviceBalance(row["device"], row["generated"], row["dropped"], row["acknowledged"],
                                 int(s.get("received", 0)), int(s.get("duplicates", 0)), int(s.get("gaps", 0)),
                                 int(s.get("lost_at_device", 0))))
    return out


def total(rows: Sequence[DeviceBalance]) -> DeviceBalance:
    return DeviceBalance("TOTAL", *(sum(getattr(r, f) for r in rows) for f in
                                    ("generated", "dropped_at_device", "at_gateway", "received", "duplicates",
                                     "gaps", "lost_at_device_server")))


def accounting_table(rows: Sequence[DeviceBalance]) -> str:
    head = (f"{'device':10} {'generated':>9} {'dropped@dev':>11} {'at gateway':>10} {'received':>9} "
            f"{'dups removed':>12} {'gaps':>5} {'unaccounted':>11}")
    lines = [head, "-" * len(head)]
    for r in [*rows, total(rows)]:
        if r.device == "TOTAL":
            lines.append("-" * len(head))
        lines.append(f"{r.device:10} {r.generated:9} {r.dropped_at_device:11} {r.at_gateway:10} {r.received:9} "
                     f"{r.duplicates:12} {r.gaps:5} {r.unaccounted:11}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one progress line shows, gathered from the three places that know."""

    elapsed_s: float
    phase: str
    fleet: dict
    spool: float | None
    server: dict | None
    uplink: str


def progress_line(s: Snapshot) -> str:
    f = s.fleet
    spool = "?" if s.spool is None else f"{s.spool:.0f}"
    if s.server is None:
        server = "server (not answering)"
    else:
        server = (f"server received {s.server.get('received', 0)} dups {s.server.get('duplicates', 0)} "
                  f"gaps {s.server.get('gaps', 0)} lost@dev {s.server.get('lost_at_device', 0)} "
                  f"alerts {s.server.get('alerts', 0)}")
    return (f"[{s.elapsed_s:6.1f}s {s.phase}] devices generated {f['generated']} acked {f['acknowledged']} "
            f"outbox {f['in_outbox']} dropped {f['dropped']} | gateway spool {spool} | {server} | "
            f"cuts {f['power_cuts']} uplink {s.uplink}")


# ---------------------------------------------------------------------- helpers

def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the worker's web server binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_text(url: str, timeout_s: float = 3.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None


def create_topics(bootstrap_servers: str, partitions: int = PARTITIONS) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    for future in admin.create_topics([NewTopic(t, partitions, 1) for t in TOPICS]).values():
        future.result(30)


@dataclass(frozen=True)
class Credentials:
    """The secured demo's accounts and certificates: a private CA, the gateway's TLS certificate,
    a password file with one random password per simulated board and one operator (the fleet's
    own subscriber)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    password_file: Path
    device_passwords: dict[str, str]
    console_password: str


def make_credentials(folder: Path, device_ids: Sequence[str]) -> Credentials:
    """Provision the demo fleet as an operator would (docs/security.md): certificates, then a random
    password per device in the gateway's password file."""
    import secrets

    from ferry.certs import CertificateAuthority
    from ferry.gateway.auth.passwords import PasswordFile

    ca = CertificateAuthority(folder / "tls")
    server = ca.server(("127.0.0.1", "localhost"))
    passwords = PasswordFile.load(folder / "passwd", missing_ok=True)
    device_passwords = {device: secrets.token_urlsafe(18) for device in device_ids}
    console_password = secrets.token_urlsafe(18)
    for user, password in [*device_passwords.items(), (CONSOLE_USER, console_password)]:
        passwords.set(user, password)
    passwords.save(folder / "passwd")
    return Credentials(ca.pair.cert, server.cert, server.key, folder / "passwd", device_passwords, console_password)


def gateway_config(kafka_bootstrap: str, credentials: Credentials, tls_port: int) -> str:
    """Anonymous clients refused, the default ACL, the boards on a TLS listener; the plain listener
    (on 127.0.0.1) serves the fleet's operator subscriber."""
    return (f'[bridge]\nkafka = "{kafka_bootstrap}"\ngateway_id = "{GATEWAY_ID}"\n'
            f'[auth]\npassword_file = "{credentials.password_file}"\noperators = ["{CONSOLE_USER}"]\n'
            f'[[listener]]\nlisten = "127.0.0.1:{tls_port}"\ntls_cert = "{credentials.server_cert}"\n'
            f'tls_key = "{credentials.server_key}"\n')


@dataclass
class Signals:
    """SIGINT/SIGTERM. During start-up the first one raises `Interrupted` (nothing to account yet);
    after it, the first sets `stop` (drain and account) and the second `abort` (stop at once).
    Nothing is raised after start-up, so clean-up always runs to the end."""

    stop: threading.Event = field(default_factory=threading.Event)
    abort: threading.Event = field(default_factory=threading.Event)
    starting: bool = True
    count: int = 0

    def handler(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.starting:
            self.starting = False
            self.stop.set()
            self.abort.set()
            raise Interrupted(f"{signal.Signals(signum).name} during start-up")
        (self.stop if self.count == 1 else self.abort).set()

    @contextlib.contextmanager
    def installed(self) -> Iterator["Signals"]:
        old = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# ---------------------------------------------------------------------- the run

class Demo:
    """Every part of the pipeline, started in order and stopped in reverse by one ExitStack."""

    def __init__(self, options: DemoOptions, signals: Signals, out: TextIO = sys.stdout) -> None:
        self.o = options
        self.signals = signals
        self.out = out
        self.started_at = time.monotonic()
        self.phase = "start"
        self.kafka = self.uplink = self.gateway = self.worker = self.fleet = None
        self.web_port = 0
        self.outages = 0
        self.outage_until = 0.0
        self.next_outage_at: float | None = None
        self.max_spool: float | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ---- start --------------------------------------------------------------
    def start(self, stack: contextlib.ExitStack, work: Path) -> None:
        from ferry.local_kafka import LocalKafka
        from ferry.process import free_port
        from ferry.gateway.process import GatewayProcess
        from ferry.hwsim.fleet import Fleet, FleetOptions
        from ferry.hwsim.link import LinkConfig, LinkProcess, resolve_profile
        from ferry.server.process import WorkerProcess

        o = self.o
        uplink_port = free_port()
        self.kafka = LocalKafka(work / "kafka", advertised_port=uplink_port)
        stack.callback(self.kafka.stop)
        self.kafka.start()
        self.say(f"  kafka    Tansu on 127.0.0.1:{self.kafka.port} (memory only), advertised through the uplink")
        self.uplink = LinkProcess([LinkConfig("127.0.0.1", self.kafka.port, name="uplink", listen_port=uplink_port,
                                              profile=resolve_profile(o.uplink_profile), seed=o.seed)], work / "uplink")
        stack.callback(self.uplink.stop)
        self.uplink.start()
        self.say(f"  uplink   link 127.0.0.1:{uplink_port} -> kafka, profile {o.uplink_profile}")
        create_topics(self.kafka.bootstrap_servers)
        self.say(f"  topics   {', '.join(TOPICS)} ({PARTITIONS} partitions)")
        metrics_port = free_port()
        tls_port = free_port()
        credentials = make_credentials(work / "security", [Fleet.device_id(i) for i in range(o.devices)])
        self.say(f"  security a CA, the gateway's certificate, {o.devices} device passwords and an operator "
                 f"in {credentials.password_file}")
        self.gateway = GatewayProcess(work / "gateway", metrics_port=metrics_port, allow_anonymous=False,
                                      config_text=gateway_config(f"127.0.0.1:{uplink_port}", credentials, tls_port))
        stack.callback(self.gateway.stop)
        self.gateway.start()
        self.say(f"  gateway  MQTT over TLS 127.0.0.1:{tls_port} (boards, passwords, default ACL), plain "
                 f"127.0.0.1:{self.gateway.port} (operator), metrics http://127.0.0.1:{metrics_port}/metrics, "
                 f"bridge -> 127.0.0.1:{uplink_port}")
        self.worker = WorkerProcess(work / "worker", "worker", broker=self.kafka.bootstrap_servers, app_id=APP_ID,
                                    partitions=PARTITIONS, web_host="127.0.0.1", web_port=self.web_port,
                                    broker_session_timeout_s=6,  # the dashboard's pipeline panel scrapes the gateway
                                    gateways=f"http://127.0.0.1:{self.gateway.metrics_port}/metrics")
        stack.callback(self.worker.stop)
        self.say("  worker   starting (Faust joins its consumer group)")
        self.worker.start()
        self.fleet = Fleet(FleetOptions(devices=o.devices, gateway=(self.gateway.host, tls_port),
                                        tls_ca=credentials.ca_cert, passwords=credentials.device_passwords,
                                        watch=(self.gateway.host, self.gateway.port), watch_username=CONSOLE_USER,
                                        watch_password=credentials.console_password,
                                        profile=o.profile, sample_ms=o.sample_ms,
                                        power_cuts_per_min=o.power_cuts_per_min, power_off_s=o.power_off_s,
                                        work_dir=work / "fleet", site=SITE, seed=o.seed,
                                        drain_timeout_s=o.drain_timeout_s, live_every_s=o.live_every_s),
                           out=self.out)
        stack.callback(self.fleet.close)
        self.fleet.start()
        self.say(f"  fleet    {o.devices} boards sim-0001.. on real MicroPython over TLS, link profile {o.profile}, "
                 f"sample {o.sample_ms} ms, power cuts {o.power_cuts_per_min}/min")
        self.started_at = time.monotonic()
        if o.uplink_outage_every_s > 0:
            self.next_outage_at = self.started_at + o.uplink_outage_every_s

    # ---- observing ----------------------------------------------------------
    def gateway_metrics(self) -> dict[str, float]:
        text = http_text(f"http://127.0.0.1:{self.gateway.metrics_port}/metrics")
        return parse_prometheus(text) if text else {}

    def uplink_state(self) -> str:
        left = self.outage_until - time.monotonic()
        state = f"DOWN {left:.0f}s left" if left > 0 else "up"
        return f"{state} (outages {self.outages})" if self.o.uplink_outage_every_s > 0 else state

    def sample_spool(self) -> float | None:
        """The bridge's spool depth now; keeps the largest seen (sampled every second while running)."""
        spool = spool_depth(self.gateway_metrics())
        if spool is not None:
            self.max_spool = max(self.max_spool or 0.0, spool)
        return spool

    def snapshot(self) -> Snapshot:
        spool = self.sample_spool()
        server = self.worker.get("/accounting")
        return Snapshot(time.monotonic() - self.started_at, self.phase, self.fleet.totals(), spool,
                        server if isinstance(server, dict) else None, self.uplink_state())

    def check_children(self) -> None:
        for name, proc in (("kafka", self.kafka.process), ("uplink link", self.uplink.process),
                           ("gateway", self.gateway.process), ("worker", self.worker.process)):
            status = proc.poll()
            if status is not None:
                raise RuntimeError(f"{name} exited with {status}; its log ({proc.log_path}):\n{proc.log_tail()}")

    # ---- faults -------------------------------------------------------------
    def tick_outages(self) -> None:
        now = time.monotonic()
        if self.next_outage_at is None or now < self.next_outage_at:
            return
        self.uplink.schedule([(0, "outage"), (self.o.uplink_outage_s, self.o.uplink_profile)], "uplink")
        self.outages += 1
        self.outage_until = now + self.o.uplink_outage_s
        self.next_outage_at += self.o.uplink_outage_every_s
        self.say(f"[{now - self.started_at:6.1f}s] uplink outage {self.outages}: gateway <-> kafka down for "
                 f"{self.o.uplink_outage_s:g} s (the bridge spools)")

    def stop_outages(self) -> None:
        self.next_outage_at = None
        self.uplink.schedule([], "uplink")
        self.uplink.set_profile(self.o.uplink_profile, "uplink")
        self.outage_until = 0.0

    # ---- phases ---------------------------------------------------------------
    def elapsed(self) -> str:
        return f"[{time.monotonic() - self.started_at:6.1f}s]"

    def run(self) -> None:
        """Progress lines until --duration passes or the first signal."""
        self.phase = "run"
        end = None if self.o.duration_s is None else self.started_at + self.o.duration_s
        next_line = time.monotonic() + self.o.live_every_s
        next_sample = time.monotonic() + SPOOL_SAMPLE_S
        while end is None or time.monotonic() < end:
            wait = 0.25 if end is None else min(0.25, max(0.0, end - time.monotonic()))
            if self.signals.stop.wait(wait):
                self.say(f"\n{self.elapsed()} ferry demo: stopping (Ctrl-C again to stop at once)")
                return
            self.tick_outages()
            self.check_children()
            now = time.monotonic()
            if now >= next_line:
                next_line += self.o.live_every_s
                self.say(progress_line(self.snapshot()))
            elif now >= next_sample:
                next_sample = now + SPOOL_SAMPLE_S
                self.sample_spool()

    def drain(self) -> bool:
        """Faults off; devices stop sampling and send their backlog; then wait for the worker to count it."""
        self.phase = "drain"
        self.stop_outages()
        self.say(f"{self.elapsed()} power cuts and uplink outages stopped; devices stop sampling and send "
                 f"their backlog")
        if not self.fleet.drain(self.o.drain_timeout_s, self.signals.abort):
            self.say("stopped at once" if self.signals.abort.is_set() else
                     "the devices did NOT send everything within --drain-timeout")
            return False
        self.phase = "count"
        self.say(f"{self.elapsed()} devices drained; waiting for the worker to count every reading")
        deadline = time.monotonic() + self.o.drain_timeout_s
        next_line = time.monotonic() + self.o.live_every_s
        while time.monotonic() < deadline:
            self.check_children()
            rows = balances(self.fleet.rows(), self.worker.get("/devices"))
            if all(r.unaccounted == 0 for r in rows):
                self.say(progress_line(self.snapshot()))
                return True
            if time.monotonic() >= next_line:
                next_line += self.o.live_every_s
                self.say(progress_line(self.snapshot()))
            if self.signals.abort.wait(0.5):
                self.say("stopped at once")
                return False
        self.say("the worker did NOT count every reading within --drain-timeout")
        return False

    def final(self, drained: bool | None) -> int:
        rows = balances(self.fleet.rows(), self.worker.get("/devices")) if self.fleet else []
        server = self.worker.get("/accounting") if self.worker else None
        pipeline = self.worker.get("/pipeline") if self.worker else None
        t = total(rows)
        bad = [r.device for r in rows if r.unaccounted != 0]
        self.say("")
        aborted = self.signals.abort.is_set()
        title = "accounting so far (stopped at once)" if aborted else "final accounting"
        self.say(f"{title}: every reading is (device, boot, seq); "
                 f"unaccounted = generated - dropped@dev - received")
        self.say(accounting_table(rows))
        self.say("")
        power_cuts = self.fleet.power_cuts if self.fleet else 0
        self.say(f"  generated by the devices      {t.generated}")
        self.say(f"  dropped by the devices        {t.dropped_at_device}   (their own count; the server learnt "
                 f"{t.lost_at_device_server} from their status messages)")
        self.say(f"  received once by the server   {t.received}")
        self.say(f"  duplicates removed (server)   {t.duplicates}")
        self.say(f"  unaccounted                   {t.unaccounted}" + (f"   devices: {', '.join(bad)}" if bad else ""))
        self.say(f"  faults survived               {power_cuts} power cuts, {self.outages} uplink outages, "
                 f"largest spool depth seen {'?' if self.max_spool is None else f'{self.max_spool:.0f}'}")
        ok = bool(rows) and not bad
        if ok:
            verdict = "0 lost, 0 duplicated: every reading the devices did not drop themselves was counted once"
        elif aborted:
            verdict = (f"stopped at once: {t.unaccounted} readings not accounted for yet (not proven either way; "
                       f"a single Ctrl-C lets the drain finish)")
        else:
            verdict = f"NOT every reading is accounted for: {t.unaccounted} unaccounted"
        self.say(f"ferry demo: {verdict}")
        if self.o.json_path is not None:
            uplink_stats = None
            with contextlib.suppress(Exception):
                uplink_stats = asdict(self.uplink.stats("uplink")["uplink"])
            self.o.json_path.write_text(json.dumps({
                "ok": ok, "drained": drained, "web_port": self.web_port,
                "total": {**asdict(t), "unaccounted": t.unaccounted},
                "devices": [{**asdict(r), "unaccounted": r.unaccounted} for r in rows],
                "server_accounting": server, "power_cuts": power_cuts, "uplink_outages": self.outages,
                "max_spool_depth": self.max_spool, "uplink": uplink_stats, "pipeline": pipeline}, indent=1))
        return EXIT_OK if ok else EXIT_UNACCOUNTED


def choose_web_port(requested: int, out: TextIO) -> int:
    from ferry.process import free_port

    if requested and port_is_free(requested):
        return requested
    port = free_port()
    if requested:
        print(f"ferry demo: port {requested} is busy (another worker or demo?); the dashboard uses {port} instead",
              file=out, flush=True)
    return port


def stray_children() -> list[tuple[int, str]]:
    """(pid, command line) of this process's live children. Every part is stopped by its own
    handle; a child shows up here only if a signal hit `subprocess.Popen` between its fork and
    the handle learning the pid."""
    me, found = str(os.getpid()), []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.append((int(entry), cmdline.strip()))
    return found


def kill_strays(out: TextIO, grace_s: float = 5.0) -> None:
    """SIGTERM each stray's process group (every part runs in its own session, so its group is its
    pid), SIGKILL what is left after `grace_s`, and reap them."""
    strays = stray_children()
    for pid, cmdline in strays:
        print(f"ferry demo: stopping leftover process {pid} ({cmdline[:80]})", file=out, flush=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid, _ in strays:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    signals = Signals()
    demo = Demo(options, signals, out)
    with signals.installed():
        try:
            with contextlib.ExitStack() as stack:  # stops every part, in reverse order
                try:
                    return run_parts(demo, stack)
                finally:
                    signals.starting = False
                    demo.say("ferry demo: stopping every process")
        finally:
            kill_strays(out)


def run_parts(demo: Demo, stack: contextlib.ExitStack) -> int:
    options, out = demo.o, demo.out
    try:
        if options.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ferry-demo-")))
        else:
            work = options.work_dir
            work.mkdir(parents=True, exist_ok=True)
        demo.web_port = choose_web_port(options.web_port, out)
        demo.say(f"ferry demo: starting in {work}")
        demo.start(stack, work)
        demo.signals.starting = False
        url = f"http://127.0.0.1:{demo.web_port}/"
        bar = "=" * (len(url) + 16)
        demo.say(f"\n{bar}\n  dashboard:  {url}\n{bar}\n")
        demo.say("progress: devices generated / acked by the gateway / in outboxes / dropped at devices | "
                 "bridge spool depth | worker received / duplicates removed / gaps / lost at device / alerts")
        demo.run()
        drained = demo.drain()
        return demo.final(drained)
    except Interrupted as exc:
        demo.say(f"\nferry demo: {exc}: stopping at once")
        return EXIT_UNACCOUNTED
    except Exception as exc:  # a part failed: say which, stop everything, exit 1
        demo.say(f"ferry demo: failed: {exc}")
        return EXIT_UNACCOUNTED


# ---------------------------------------------------------------------- command line

def _positive(kind: type) -> Callable[[str], object]:
    def parse(text: str) -> object:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    from ferry.hwsim.link_profile import PROFILES

    p = argparse.ArgumentParser(prog="ferry demo",
                                description="Run the whole pipeline locally: Kafka-compatible broker, gateway "
                                            "with its Kafka bridge, Faust worker and dashboard, and a simulated "
                                            "fleet over flaky links; end with the loss accounting.")
    d = DemoOptions()
    p.add_argument("--devices", type=int, default=d.devices, help=f"simulated boards (default {d.devices})")
    p.add_argument("--profile", default=d.profile, choices=list(PROFILES),
                   help=f"link profile devices <-> gateway (default {d.profile})")
    p.add_argument("--sample-ms", type=int, default=d.sample_ms, help=f"sample interval (default {d.sample_ms})")
    p.add_argument("--power-cuts-per-min", type=_positive(float), default=d.power_cuts_per_min, metavar="RATE",
                   help=f"random power cuts per minute across the fleet (default {d.power_cuts_per_min:g})")
    p.add_argument("--power-off", type=_positive(float), default=d.power_off_s, metavar="S",
                   help=f"seconds a cut board stays off (default {d.power_off_s:g})")
    p.add_argument("--uplink-profile", default=d.uplink_profile, choices=list(PROFILES),
                   help=f"link profile gateway <-> Kafka between outages (default {d.uplink_profile})")
    p.add_argument("--uplink-outage-every", type=_positive(float), default=d.uplink_outage_every_s, metavar="S",
                   help=f"an uplink outage every S seconds (default {d.uplink_outage_every_s:g}; 0: none)")
    p.add_argument("--uplink-outage-s", type=_positive(float), default=d.uplink_outage_s, metavar="S",
                   help=f"how long each uplink outage lasts (default {d.uplink_outage_s:g})")
    p.add_argument("--duration", type=_positive(float), default=None, metavar="S",
                   help="run S seconds, then drain and account (default: until Ctrl-C/SIGTERM)")
    p.add_argument("--web-port", type=int, default=d.web_port,
                   help=f"dashboard and API port on 127.0.0.1 (default {d.web_port}; 0: any free port)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep logs and data here (default: a temporary folder, removed)")
    p.add_argument("--live-every", type=_positive(float), default=d.live_every_s, metavar="S",
                   help=f"progress line period (default {d.live_every_s:g})")
    p.add_argument("--drain-timeout", type=_positive(float), default=d.drain_timeout_s, metavar="S",
                   help=f"at the end, wait at most S s for the devices, then S s for the worker "
                        f"(default {d.drain_timeout_s:g})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the links, sensors and power cuts")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the final accounting here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    problems = []
    if not 1 <= args.devices <= 9999:
        problems.append("--devices must be 1..9999")
    if args.sample_ms < 100:
        problems.append("--sample-ms must be at least 100")
    if not 0 <= args.web_port <= 65535:
        problems.append("--web-port must be 0..65535")
    if args.uplink_outage_every and not 0 < args.uplink_outage_s < args.uplink_outage_every:
        problems.append("--uplink-outage-s must be above 0 and below --uplink-outage-every")
    if args.live_every <= 0:
        problems.append("--live-every must be above 0")
    if problems:
        for problem in problems:
            print(f"ferry demo: {problem}", file=sys.stderr)
        return EXIT_USAGE
    options = DemoOptions(devices=args.devices, profile=args.profile, sample_ms=args.sample_ms,
                          power_cuts_per_min=args.power_cuts_per_min, power_off_s=args.power_off,
                          uplink_profile=args.uplink_profile, uplink_outage_every_s=args.uplink_outage_every,
                          uplink_outage_s=args.uplink_outage_s, duration_s=args.duration, web_port=args.web_port,
                          work_dir=args.work_dir, live_every_s=args.live_every, drain_timeout_s=args.drain_timeout,
                          seed=args.seed, json_path=args.json)
    return run_demo(options)


if __name__ == "__main__":
    sys.exit(main())
