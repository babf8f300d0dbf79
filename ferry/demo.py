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
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from ferry.demo_parts import (
    CONSOLE_USER, GATEWAY_ID, PARTITIONS, TOPICS, create_topics, duty_cycle_period_ms, gateway_config, make_credentials,
    worker_batching, worker_patience,
)
from ferry.demo_report import (  # noqa: F401  (re-exported: the demo's public pure parts)
    SPOOL_METRIC, DeviceBalance, Interrupted, Signals, Snapshot, accounting_table, balances, kill_strays,
    buckets_since, latency_line, progress_line, spool_depth, stray_children, total,
)

DEFAULT_WEB_PORT = 6066
APP_ID = "ferry-demo"
SITE = "sim"
TWO_SITES = ("north", "south")
"""`--sites 2`: one gateway per site, `demo-north` and `demo-south`."""
SPOOL_SAMPLE_S = 1.0
EXIT_OK, EXIT_UNACCOUNTED, EXIT_USAGE = 0, 1, 2


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
    sites: int = 1
    """1: one gateway (site `sim`); 2: gateways `north` and `south` into the same Kafka."""
    workers: int = 1
    """Faust workers in the one group (the first serves the dashboard)."""
    duty_cycle: int = 0
    """Boards in duty-cycle deep sleep (the last ones of the fleet); the others are always on."""
    chaos: bool = False
    """The fault schedule of ferry/chaos.py instead of the periodic uplink outages."""
    move_every_s: float = 0.0
    """With two sites and no --chaos: a device reboots into the other site every this many seconds."""
    outbox_flush_ms: int | None = None
    """Every board's `outbox_flush_interval_ms` (a reading waits at most this long for its flash write,
    and is sent only once written); None: the firmware's default."""


# ---------------------------------------------------------------------- helpers

def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text → sample name → value (labelled samples of one name summed); empty for text
    that is not Prometheus text (the progress line then says the gateway did not tell)."""
    from ferry.server.pipeline import ExpositionError, parse_exposition

    try:
        return {name: family.total() for name, family in parse_exposition(text).items()}
    except ExpositionError:
        return {}


def latency_buckets(text: str | None) -> list[tuple[float, float]] | None:
    """A worker's `ferry_worker_reading_latency_seconds_bucket` samples as (upper bound s, count)."""
    from ferry.server.latency import LATENCY_METRIC
    from ferry.server.pipeline import ExpositionError, parse_exposition

    try:
        family = parse_exposition(text or "").get(f"{LATENCY_METRIC}_bucket")
    except ExpositionError:
        return None
    return [(float(dict(labels).get("le", "nan")), value) for labels, value in family.samples] if family else None



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
        self.gateways: dict = {}
        """Site -> GatewayProcess (`gateway` is the first)."""
        self.workers: list = []
        """WorkerProcess of the group (`worker`, the first, serves the dashboard and is never killed)."""
        self.site_names: tuple[str, ...] = (SITE,) if options.sites == 1 else TWO_SITES
        self.chaos = None
        """The running ferry.chaos.Chaos with --chaos."""
        self.web_port = 0
        self.outages = 0
        self.outage_until = 0.0
        self.next_outage_at: float | None = None
        self.max_spool: float | None = None
        self.next_move_at: float | None = None
        self.warm_up: tuple[float, list] | None = None
        """(seconds since start, each worker's latency buckets) when every board had a reading
        acknowledged: the latency after it leaves out the boards' start-up."""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ---- start --------------------------------------------------------------
    def start(self, stack: contextlib.ExitStack, work: Path) -> None:
        from ferry.local_kafka import LocalKafka
        from ferry.process import free_port
        from ferry.gateway.process import GatewayProcess
        from ferry.hwsim.fleet import Fleet, FleetOptions, FleetSite
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
        credentials = make_credentials(work / "security", [Fleet.device_id(i) for i in range(o.devices)])
        self.say(f"  security a CA, the gateway's certificate, {o.devices} device passwords and an operator "
                 f"in {credentials.password_file}")
        tls_ports = {}
        for site in self.site_names:
            metrics_port = free_port()
            tls_ports[site] = tls_port = free_port()
            gateway_id = GATEWAY_ID if o.sites == 1 else f"demo-{site}"
            folder = work / ("gateway" if o.sites == 1 else f"gateway-{site}")
            gateway = GatewayProcess(folder, metrics_port=metrics_port, allow_anonymous=False,
                                     config_text=gateway_config(f"127.0.0.1:{uplink_port}", credentials, tls_port,
                                                                gateway_id))
            self.gateways[site] = gateway
            stack.callback(gateway.stop)
            gateway.start()
            self.say(f"  gateway  {gateway_id} (site {site}): MQTT over TLS 127.0.0.1:{tls_port} (boards, passwords, "
                     f"default ACL), plain 127.0.0.1:{gateway.port} (operator), metrics "
                     f"http://127.0.0.1:{metrics_port}/metrics, bridge -> 127.0.0.1:{uplink_port}")
        self.gateway = self.gateways[self.site_names[0]]
        scrape = ",".join(f"http://127.0.0.1:{g.metrics_port}/metrics" for g in self.gateways.values())
        for k in range(o.workers):
            worker = WorkerProcess(work / "worker", "worker" if k == 0 else f"worker{k + 1}",
                                   broker=self.kafka.bootstrap_servers, app_id=APP_ID, partitions=PARTITIONS,
                                   web_host="127.0.0.1", web_port=self.web_port if k == 0 else free_port(),
                                   broker_session_timeout_s=6,  # the dashboard's pipeline panel scrapes the gateways
                                   gateways=scrape, **worker_batching(o.workers), **worker_patience(o.chaos))
            self.workers.append(worker)
            stack.callback(worker.stop)
            self.say(f"  worker   starting {worker.name} (Faust joins its consumer group)")
            worker.start()
        self.worker = self.workers[0]
        sites = [FleetSite(site, (self.gateways[site].host, tls_ports[site]),
                           (self.gateways[site].host, self.gateways[site].port)) for site in self.site_names]
        duty = {Fleet.device_id(i): {"mode": "duty_cycle", "sample_ms": duty_cycle_period_ms(o.sample_ms)}
                for i in range(o.devices - o.duty_cycle, o.devices)}
        self.fleet = Fleet(FleetOptions(devices=o.devices, gateway=sites[0].gateway, sites=sites if o.sites > 1 else (),
                                        tls_ca=credentials.ca_cert, passwords=credentials.device_passwords,
                                        watch=sites[0].watch, watch_username=CONSOLE_USER,
                                        watch_password=credentials.console_password,
                                        profile=o.profile, sample_ms=o.sample_ms, firmware_by_device=duty,
                                        firmware={} if o.outbox_flush_ms is None else
                                        {"outbox_flush_interval_ms": o.outbox_flush_ms},
                                        power_cuts_per_min=o.power_cuts_per_min, power_off_s=o.power_off_s,
                                        work_dir=work / "fleet", site=SITE, seed=o.seed,
                                        drain_timeout_s=o.drain_timeout_s, live_every_s=o.live_every_s),
                           out=self.out)
        stack.callback(self.fleet.close)
        self.fleet.start()
        self.say(f"  fleet    {o.devices} boards sim-0001.. on real MicroPython over TLS ({o.duty_cycle} in duty-cycle "
                 f"deep sleep), sites {', '.join(self.site_names)}, link profile {o.profile}, "
                 f"sample {o.sample_ms} ms, power cuts {o.power_cuts_per_min}/min")
        self.started_at = time.monotonic()
        if o.chaos:
            from ferry.chaos import Chaos, plan

            self.chaos = Chaos(self, plan(o.seed, o.duration_s, sites=self.site_names, devices=o.devices,
                                          workers=o.workers))
            stack.callback(self.chaos.stop, restore=False)
            self.chaos.start()
            self.say(f"  chaos    {len(self.chaos.faults)} faults scheduled (seed {o.seed}):\n" + self.chaos.describe())
        elif o.uplink_outage_every_s > 0:
            self.next_outage_at = self.started_at + o.uplink_outage_every_s
        if o.sites > 1 and not o.chaos and o.move_every_s > 0:
            self.next_move_at = self.started_at + o.move_every_s

    # ---- observing ----------------------------------------------------------
    def gateway_metrics(self, site: str | None = None) -> dict[str, float]:
        """One gateway's metrics (None: every gateway's, summed; a gateway that does not answer adds nothing)."""
        out: dict[str, float] = {}
        for name, gateway in self.gateways.items():
            if site is None or site == name:
                text = http_text(f"http://127.0.0.1:{gateway.metrics_port}/metrics", 1.0)
                for key, value in (parse_prometheus(text) if text else {}).items():
                    out[key] = out.get(key, 0.0) + value
        return out

    def uplink_state(self) -> str:
        if self.chaos is not None:
            return self.chaos.state()
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
        parts = [("kafka", self.kafka.process), ("uplink link", self.uplink.process)]
        parts += [(f"gateway {site}", g.process) for site, g in self.gateways.items()]
        parts += [(w.name, w.process) for w in self.workers]
        down = self.chaos.down() if self.chaos is not None else set()
        if self.chaos is not None and self.chaos.failed:
            raise RuntimeError(f"chaos: {self.chaos.failed}")
        for name, proc in parts:
            if name in down:  # killed on purpose, or being restarted
                continue
            status = proc.poll()
            worker = next((w for w in self.workers if w.name == name), None)
            if status is not None and worker is not None and self.chaos is not None:
                self.chaos.restart_crashed(worker)  # counted and reported, as its supervisor would
                continue
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

    def tick_moves(self) -> None:
        """Two sites: the next device (round robin) reboots into the other site."""
        now = time.monotonic()
        if self.next_move_at is None or now < self.next_move_at:
            return
        self.next_move_at += self.o.move_every_s
        dev = self.fleet.device_id(self.fleet.moves % self.o.devices)
        was = self.fleet.device_site[dev]
        to = self.site_names[(self.site_names.index(was) + 1) % len(self.site_names)]
        self.fleet.move(dev, to)
        self.say(f"{self.elapsed()} {dev} rebooted into site {to} (was {was})")

    def stop_outages(self) -> None:
        self.next_move_at = None
        if self.chaos is not None:
            self.say(f"{self.elapsed()} chaos stops: every part back up, links back to their profiles")
            self.chaos.stop()
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
            self.tick_moves()
            self.check_children()
            now = time.monotonic()
            if now >= next_line:
                next_line += self.o.live_every_s
                self.say(progress_line(self.snapshot()))
                self.mark_warm_up()
            elif now >= next_sample:
                next_sample = now + SPOOL_SAMPLE_S
                self.sample_spool()

    def worker_latencies(self) -> list:
        return [latency_buckets(http_text(f"http://127.0.0.1:{w.port}/metrics")) for w in self.workers]

    def mark_warm_up(self) -> None:
        """The first moment every board has had a reading acknowledged: the workers' histograms then."""
        if self.warm_up is None and self.fleet is not None:
            rows = self.fleet.rows()
            if rows and all(r["acknowledged"] > 0 for r in rows):
                self.warm_up = (time.monotonic() - self.started_at, self.worker_latencies())
                self.say(f"{self.elapsed()} every board online: the end-to-end latency counts from here")

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
            if rows and all(r.unaccounted == 0 for r in rows):
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
        rows = balances(self.fleet.rows(), self.worker.get("/devices"), sites=len(self.site_names) > 1) \
            if self.fleet else []
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
        outages = self.outages + (self.chaos.counts()["uplink_outage"] if self.chaos is not None else 0)
        self.say(f"  generated by the devices      {t.generated}")
        self.say(f"  dropped by the devices        {t.dropped_at_device}   (their own count; the server learnt "
                 f"{t.lost_at_device_server} from their status messages)")
        self.say(f"  received once by the server   {t.received}")
        self.say(f"  duplicates removed (server)   {t.duplicates}")
        self.say(f"  unaccounted                   {t.unaccounted}" + (f"   devices: {', '.join(bad)}" if bad else ""))
        self.say(f"  faults survived               {power_cuts} power cuts, {outages} uplink outages, "
                 f"largest spool depth seen {'?' if self.max_spool is None else f'{self.max_spool:.0f}'}")
        from ferry.server.latency import latency_summary

        ends = self.worker_latencies()
        latency = latency_summary(ends)
        warm = None
        if self.warm_up is not None:
            warm = latency_summary(buckets_since(mark, end) for mark, end in zip(self.warm_up[1], ends))
        for summary in (latency, warm):
            if summary is not None:
                summary["profile"] = self.o.profile
        if warm is not None:
            warm["after_s"] = round(self.warm_up[0], 1)
            self.say(f"  end-to-end latency            {latency_line(warm)}, after every board was online "
                     f"({warm['after_s']:g} s)")
        self.say(f"  end-to-end latency (all)      {latency_line(latency)}")
        soak = []
        if self.chaos is not None:
            self.say(f"  chaos                         {self.chaos.summary()}")
            self.say("\nprocesses (RSS, open fds) at start, after warm-up, at the end:\n" + self.chaos.soak_table())
            soak = self.chaos.soak_failures()
            self.say("  soak: " + ("; ".join(soak) + " (grew past the bounds after warm-up)" if soak else "within bounds"))
        losses_agree = t.lost_at_device_server == t.dropped_at_device  # the server's count of the devices' own
        ok = bool(rows) and not bad and not soak and losses_agree
        lost = None
        if bad and self.kafka is not None and not aborted:
            from ferry.chaos import say_where_lost

            lost = say_where_lost(self, bad)
        if ok:
            verdict = "0 lost, 0 duplicated: every reading the devices did not drop themselves was counted once"
        elif aborted:
            verdict = (f"stopped at once: {t.unaccounted} readings not accounted for yet (not proven either way; "
                       f"a single Ctrl-C lets the drain finish)")
        elif not bad and not losses_agree:
            verdict = (f"every reading was counted once, but the server learnt {t.lost_at_device_server} dropped at "
                       f"the devices where they dropped {t.dropped_at_device}")
        elif not bad:
            verdict = "every reading was counted once, but a process grew past the soak bounds"
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
                "server_accounting": server, "power_cuts": power_cuts, "uplink_outages": outages,
                "max_spool_depth": self.max_spool, "uplink": uplink_stats, "pipeline": pipeline,
                "sites": list(self.site_names), "moves": self.fleet.moves if self.fleet else 0,
                "chaos": self.chaos.report() if self.chaos is not None else None, "where_lost": lost,
                "latency": latency, "latency_after_warm_up": warm}, indent=1))
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
    p.add_argument("--chaos", action="store_true",
                   help="every fault at once on a seeded schedule (docs/demo.md, 'Chaos'): gateway and worker "
                        "SIGKILLs, a long uplink outage, link cuts and blackholes, a full disk, duty-cycle boards; "
                        "replaces --uplink-outage-every")
    p.add_argument("--sites", type=int, choices=(1, 2), default=d.sites,
                   help="1: one gateway (site sim); 2: gateways north and south into the same Kafka (default 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="Faust workers in the group (default 1; 2 with --chaos)")
    p.add_argument("--move-every", type=_positive(float), default=None, metavar="S",
                   help="with --sites 2 (no --chaos): a device reboots into the other site every S s (default 20; "
                        "0: never)")
    p.add_argument("--duty-cycle", type=int, default=None, metavar="N",
                   help="boards in duty-cycle deep sleep (default 0; a quarter of --devices with --chaos)")
    p.add_argument("--outbox-flush-ms", type=int, default=None, metavar="MS",
                   help="every board's outbox_flush_interval_ms: a reading is sent once on flash, and waits at "
                        "most MS for that (default: the firmware's 5000; 0: each reading written at once)")
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
    workers = args.workers if args.workers is not None else 2 if args.chaos else 1
    duty_cycle = args.duty_cycle if args.duty_cycle is not None else args.devices // 4 if args.chaos else 0
    if not 1 <= workers <= 4:
        problems.append("--workers must be 1..4")
    if args.chaos and workers < 2:
        problems.append("--chaos kills a worker: it needs --workers 2 or more")
    if not 0 <= duty_cycle <= args.devices:
        problems.append("--duty-cycle must be 0..--devices")
    if args.outbox_flush_ms is not None and not 0 <= args.outbox_flush_ms <= 3_600_000:
        problems.append("--outbox-flush-ms must be 0..3600000 (the firmware's range)")
    if problems:
        for problem in problems:
            print(f"ferry demo: {problem}", file=sys.stderr)
        return EXIT_USAGE
    options = DemoOptions(devices=args.devices, profile=args.profile, sample_ms=args.sample_ms,
                          power_cuts_per_min=args.power_cuts_per_min, power_off_s=args.power_off,
                          uplink_profile=args.uplink_profile, uplink_outage_every_s=args.uplink_outage_every,
                          uplink_outage_s=args.uplink_outage_s, duration_s=args.duration, web_port=args.web_port,
                          work_dir=args.work_dir, live_every_s=args.live_every, drain_timeout_s=args.drain_timeout,
                          seed=args.seed, json_path=args.json, sites=args.sites, workers=workers,
                          duty_cycle=duty_cycle, chaos=args.chaos, outbox_flush_ms=args.outbox_flush_ms,
                          move_every_s=20.0 if args.move_every is None else args.move_every)
    return run_demo(options)


if __name__ == "__main__":
    sys.exit(main())
