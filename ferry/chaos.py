"""`ferry demo --chaos`: every fault at once, on a schedule drawn from the seed (docs/demo.md, "Chaos").

`plan` is pure: (seed, duration, sites, devices, workers) -> the faults, so a seed reproduces a
run's schedule exactly (what the faults then hit depends on timing). `Chaos` carries them out on
one thread of the demo's process against the demo's parts, records what each one did (the JSON
report's `chaos.events`: connections cut, bytes a blackhole ate, the pid SIGKILLed, whether the
gateway said its disk was low) and, when the run ends, puts everything back: every gateway up
with its normal configuration, every worker up, the links back to their profiles.

The faults (each a `Fault`):

* `link_cut`: every connection of one site's devices link cut with RST (Wi-Fi roaming).
* `blackhole`: one site's devices link goes half-open for a while: it reads and never delivers
  nor closes; the boards must notice (missing PUBACK/PINGRESP) and reconnect once it lifts.
* `uplink_outage`: the gateways' (and workers') link to Kafka refuses and cuts connections.
* `gateway_kill`: SIGKILL one gateway, restart it on the same data dir after `duration_s`; the
  first one falls inside the uplink outage (its spool holds the readings Kafka has not taken).
* `worker_kill`: SIGKILL one worker of the group (never the first, which serves the dashboard)
  and restart it after `duration_s`: its partitions move to the other worker and back.
* `disk_full`: one gateway restarted with `store.min_free_disk_bytes` above any disk's free space
  for `duration_s`, then restarted with its normal configuration (see `DISK_FULL_BYTES`).
* `move`: a device reboots into the other site (`Fleet.move`), with two sites.

Device power cuts come from the fleet's own random cutter (`--power-cuts-per-min`).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Demo = Any
"""A running `ferry.demo.Demo` (not imported: the demo imports this module)."""

ROUND_S = 600.0
"""Without --duration the schedule is drawn for rounds of this length, one after the other."""
SHORT_S = 120.0
"""Runs shorter than this get the compact schedule: one of each fault, at fixed fractions of the run."""
DISK_FULL_BYTES = 1 << 60
"""`store.min_free_disk_bytes` during a disk-full window: more than any filesystem has free, so the
gateway's guard reports the disk low from its first check. A real small filesystem (a loop-mounted
or tmpfs one) needs root on this machine; the guard reads `shutil.disk_usage` either way, so the
gateway cannot tell the difference (tests/gateway/test_disk_full.py covers the guard itself)."""
DISK_LOW_WAIT_S = 5.0
SOAK_MIN_S = 300.0
"""Runs at least this long are soaks: growth past the bounds below after warm-up fails the run."""
SOAK_RSS_GROWTH = (0.25, 16 * 1024)
"""A process's RSS may grow after warm-up by at most this fraction plus this many KiB."""
SOAK_FD_GROWTH = 16
"""... and its open file descriptors by at most this many."""
SOAK_UNBOUNDED = ("kafka",)
"""Reported, not bounded: Tansu keeps every record in memory (its memory:// storage), so it grows
with the data by design."""
RESTART_ATTEMPTS = 3
"""A worker that exits while it starts again is started again, this many times in all."""
QUIET_S = 3.0
"""Reading Kafka back (`kafka_readings`): done once no record came for this long."""


class Kind(enum.Enum):
    LINK_CUT = "link_cut"
    BLACKHOLE = "blackhole"
    UPLINK_OUTAGE = "uplink_outage"
    GATEWAY_KILL = "gateway_kill"
    WORKER_KILL = "worker_kill"
    DISK_FULL = "disk_full"
    MOVE = "move"


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled fault: `at_s` after the run started, lasting `duration_s` (0: instant)."""

    at_s: float
    kind: Kind
    target: str
    """A site (links, gateways), a worker's name, or for `move` "device>site"."""
    duration_s: float = 0.0

    def describe(self) -> str:
        what = {Kind.LINK_CUT: f"devices link of {self.target} cut (RST)",
                Kind.BLACKHOLE: f"devices link of {self.target} blackholed (half-open)",
                Kind.UPLINK_OUTAGE: "uplink to Kafka down",
                Kind.GATEWAY_KILL: f"gateway {self.target} SIGKILLed, restarted after",
                Kind.WORKER_KILL: f"{self.target} SIGKILLed, restarted after",
                Kind.DISK_FULL: f"gateway {self.target} disk full (min_free_disk_bytes)",
                Kind.MOVE: f"device {self.target.split('>')[0]} reboots into the other site"}[self.kind]
        return f"{self.at_s:7.1f}s  {what}" + (f" {self.duration_s:g} s" if self.duration_s else "")


def _poisson(rng: random.Random, mean_gap_s: float, start_s: float, end_s: float) -> list[float]:
    out, t = [], start_s
    while True:
        t += rng.expovariate(1 / mean_gap_s)
        if t >= end_s:
            return out
        out.append(round(t, 1))


def plan(seed: int, duration_s: float | None, *, sites: Sequence[str], devices: int, workers: int,
         offset_s: float = 0.0) -> tuple[Fault, ...]:
    """The faults of one run (or of one `ROUND_S` round starting at `offset_s` without a duration),
    sorted by time. Always at least: one link cut, one blackhole, one uplink outage (>= 30 s in runs
    of `SHORT_S` or more), two gateway kills (the first inside the outage), one worker kill, one
    disk-full window and, with two sites, one move."""
    rng = random.Random(f"ferry-chaos-{seed}-{offset_s:g}")
    length = duration_s or ROUND_S
    sites = list(sites)
    victim = f"worker{workers}"
    other = (lambda s: sites[(sites.index(s) + 1) % len(sites)])
    faults: list[Fault] = []
    if length < SHORT_S:
        d = length
        outage_at, outage_s = 0.15 * d, max(3.0, min(10.0, 0.2 * d))
        first = sites[0]
        faults += [Fault(0.08 * d, Kind.LINK_CUT, rng.choice(sites)),
                   Fault(outage_at, Kind.UPLINK_OUTAGE, "uplink", outage_s),
                   Fault(outage_at + outage_s / 2, Kind.GATEWAY_KILL, first, 1.0),
                   Fault(0.45 * d, Kind.WORKER_KILL, victim, 2.0),
                   Fault(0.45 * d, Kind.BLACKHOLE, rng.choice(sites), 2.5),
                   Fault(0.6 * d, Kind.DISK_FULL, rng.choice(sites), max(3.0, 0.12 * d)),
                   Fault(0.82 * d, Kind.GATEWAY_KILL, other(first), 1.0)]
        if len(sites) > 1:
            dev = f"sim-{rng.randrange(devices) + 1:04d}"
            faults.append(Fault(0.7 * d, Kind.MOVE, f"{dev}>?"))
    else:
        d = length
        outage_at = rng.uniform(0.15, 0.25) * d
        outage_s = min(120.0, max(30.0, 0.06 * d))
        first = rng.choice(sites)
        faults += [Fault(round(outage_at, 1), Kind.UPLINK_OUTAGE, "uplink", outage_s),
                   Fault(round(outage_at + outage_s / 2, 1), Kind.GATEWAY_KILL, first, 3.0),
                   Fault(round(rng.uniform(0.35, 0.45) * d, 1), Kind.WORKER_KILL, victim, 8.0),
                   Fault(round(rng.uniform(0.5, 0.6) * d, 1), Kind.DISK_FULL, rng.choice(sites),
                         min(60.0, max(15.0, 0.03 * d))),
                   Fault(round(rng.uniform(0.7, 0.8) * d, 1), Kind.GATEWAY_KILL, other(first), 3.0)]
        faults += [Fault(t, Kind.LINK_CUT, rng.choice(sites)) for t in _poisson(rng, 40.0, 5.0, d - 10)] or \
            [Fault(0.1 * d, Kind.LINK_CUT, rng.choice(sites))]
        faults += [Fault(t, Kind.BLACKHOLE, rng.choice(sites), round(rng.uniform(3, 10), 1))
                   for t in _poisson(rng, 90.0, 5.0, d - 20)] or [Fault(0.3 * d, Kind.BLACKHOLE, sites[0], 5.0)]
        if len(sites) > 1:
            faults += [Fault(t, Kind.MOVE, f"sim-{rng.randrange(devices) + 1:04d}>?")
                       for t in _poisson(rng, 60.0, 10.0, d - 20)] or [Fault(0.65 * d, Kind.MOVE, "sim-0001>?")]
    return tuple(sorted((Fault(round(f.at_s + offset_s, 1), f.kind, f.target, f.duration_s) for f in faults),
                        key=lambda f: (f.at_s, f.kind.value)))


class Chaos:
    """Carries out a plan against a running `Demo` on one thread; `stop()` puts everything back."""

    def __init__(self, demo: Demo, faults: Sequence[Fault]) -> None:
        self.demo = demo
        self.faults = list(faults)
        self.events: list[dict[str, Any]] = []
        self.failed: str | None = None
        self._down: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._helpers: list[threading.Thread] = []
        self._disks_full: set[str] = set()
        self._uplink_until = 0.0
        self._outages = 0
        self._active: dict[str, float] = {}
        """What the progress line shows as under way: label -> until (monotonic)."""
        self._rounds = 1
        self._stopped = False
        self.soak: dict[str, dict[str, dict[str, int]]] = {}
        """"start" / "warm" / "end" -> process name -> {"pid", "rss_kib", "fds"}."""

    # ---- what the demo asks ---------------------------------------------------
    def down(self) -> set[str]:
        """Names (as `Demo.check_children` says them) of parts down on purpose right now."""
        with self._lock:
            return set(self._down)

    def state(self) -> str:
        now = time.monotonic()
        with self._lock:
            active = [label for label, until in self._active.items() if until > now]
        outages = self._outages
        uplink = f"DOWN {self._uplink_until - now:.0f}s left" if self._uplink_until > now else "up"
        return f"{uplink} (outages {outages})" + (f" | chaos: {', '.join(active)}" if active else "")

    def describe(self) -> str:
        return "\n".join("    " + f.describe() for f in self.faults)

    def counts(self) -> dict[str, int]:
        out = {k.value: 0 for k in Kind} | {"worker_crash": 0}
        for e in self.events:
            if not e.get("error"):
                out[e["kind"]] = out.get(e["kind"], 0) + 1
        return out

    def summary(self) -> str:
        c = self.counts()
        return (f"{c['gateway_kill']} gateway SIGKILLs, {c['worker_kill']} worker SIGKILLs, "
                f"{c['uplink_outage']} uplink outages, {c['link_cut']} link cuts, {c['blackhole']} blackholes, "
                f"{c['disk_full']} disk-full windows, {c['move']} moves between sites"
                + (f"; WORKER CRASHES (restarted as a supervisor would): {c['worker_crash']}"
                   if c["worker_crash"] else "")
                + (f"; FAILED: {self.failed}" if self.failed else ""))

    def report(self) -> dict[str, Any]:
        return {"faults": [{**asdict(f), "kind": f.kind.value} for f in self.faults], "events": self.events,
                "counts": self.counts(), "failed": self.failed, "soak": self.soak,
                "soak_failures": self.soak_failures()}

    # ---- running ----------------------------------------------------------------
    def warm_up_s(self) -> float:
        d = self.demo.o.duration_s or ROUND_S
        return min(300.0, max(60.0, 0.1 * d)) if d >= SOAK_MIN_S else 0.3 * d

    def _sample_soak(self) -> None:
        self.soak["start"] = process_table(self.demo)
        if not self._stop.wait(self.warm_up_s()):
            self.soak["warm"] = process_table(self.demo)

    def soak_failures(self) -> list[str]:
        """Processes that grew past the bounds after warm-up (only in runs of SOAK_MIN_S or more)."""
        warm, end = self.soak.get("warm"), self.soak.get("end")
        if not warm or not end or (self.demo.o.duration_s or 0) < SOAK_MIN_S:
            return []
        bad = []
        for name, e in end.items():
            w = warm.get(name)
            if w is None or name in SOAK_UNBOUNDED:
                continue
            frac, extra = SOAK_RSS_GROWTH
            if e["rss_kib"] > w["rss_kib"] * (1 + frac) + extra:
                bad.append(f"{name}: RSS {w['rss_kib']} -> {e['rss_kib']} KiB")
            if e["fds"] > w["fds"] + SOAK_FD_GROWTH:
                bad.append(f"{name}: fds {w['fds']} -> {e['fds']}")
        return bad

    def soak_table(self) -> str:
        phases = [p for p in ("start", "warm", "end") if p in self.soak]
        names = list(dict.fromkeys(n for p in phases for n in self.soak[p]))
        head = f"{'process':26}" + "".join(f" {p + ' RSS MiB':>14} {p + ' fds':>9}" for p in phases)
        lines = [head]
        for n in names:
            cells = ""
            for p in phases:
                v = self.soak[p].get(n)
                cells += f" {v['rss_kib'] / 1024:14.1f} {v['fds']:9}" if v else f" {'-':>14} {'-':>9}"
            lines.append(f"{n:26}{cells}")
        return "\n".join(lines)

    def start(self) -> None:
        threading.Thread(target=self._sample_soak, name="chaos-soak", daemon=True).start()
        # The devices link logs every connect a killed gateway refuses: the chaos lines say it once.
        logging.getLogger("ferry.hwsim.link_core").setLevel(logging.ERROR)
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = self.demo.started_at
        pending = self._actions(self.faults)
        while pending and not self._stop.is_set():
            at, _, label, action = pending.pop(0)
            if self._stop.wait(max(0.0, started + at - time.monotonic())):
                return
            try:
                action()
            except Exception as exc:  # a part that does not come back fails the run
                self.failed = f"{label} at {at:.1f}s: {exc}"
                self.events.append({"at_s": round(time.monotonic() - started, 1), "kind": label, "error": str(exc)})
                return
            if not pending and self.demo.o.duration_s is None:  # until Ctrl-C: the next round
                more = plan(self.demo.o.seed, None, sites=self.demo.site_names, devices=self.demo.o.devices,
                            workers=self.demo.o.workers, offset_s=self._rounds * ROUND_S)
                self._rounds += 1
                self.faults += more
                pending = self._actions(more)

    def _actions(self, faults: Sequence[Fault]) -> list[tuple[float, int, str, Any]]:
        """Each fault as its start (and end) actions, sorted by time."""
        out: list[tuple[float, int, str, Any]] = []
        for n, f in enumerate(faults):
            start, end = getattr(self, f"_{f.kind.value}"), getattr(self, f"_{f.kind.value}_end", None)
            out.append((f.at_s, 2 * n, f.kind.value, lambda f=f, start=start: start(f)))
            if end is not None:
                out.append((f.at_s + f.duration_s, 2 * n + 1, f.kind.value, lambda f=f, end=end: end(f)))
        return sorted(out, key=lambda a: (a[0], a[1]))

    def _event(self, f: Fault, **details: Any) -> dict[str, Any]:
        event = {"at_s": round(time.monotonic() - self.demo.started_at, 1), "planned_at_s": f.at_s,
                 "kind": f.kind.value, "target": f.target, "duration_s": f.duration_s, **details}
        self.events.append(event)
        return event

    def _say(self, text: str) -> None:
        self.demo.say(f"{self.demo.elapsed()} chaos: {text}")

    def _activate(self, label: str, f: Fault) -> None:
        with self._lock:
            self._active[label] = time.monotonic() + f.duration_s

    def _deactivate(self, label: str) -> None:
        with self._lock:
            self._active.pop(label, None)

    # ---- the faults ---------------------------------------------------------------
    def _link_cut(self, f: Fault) -> None:
        fleet = self.demo.fleet
        cut = fleet.link.reset_all(fleet.link_names[f.target])
        self._event(f, connections_cut=cut)
        self._say(f"devices link of {f.target} cut: {cut} connections")

    def _link_stats(self, site: str) -> Any:
        fleet = self.demo.fleet
        return fleet.link_stats()[fleet.link_names[site]]

    def _blackhole(self, f: Fault) -> None:
        fleet = self.demo.fleet
        self._bh_before = getattr(self, "_bh_before", {})
        self._bh_before[f] = self._link_stats(f.target).bytes_dropped
        self._bh_active = getattr(self, "_bh_active", {})
        self._bh_active[f.target] = self._bh_active.get(f.target, 0) + 1
        fleet.link.set_profile("blackhole", fleet.link_names[f.target])
        self._activate(f"blackhole {f.target}", f)
        self._say(f"devices link of {f.target} half-open (blackhole) for {f.duration_s:g} s")

    def _blackhole_end(self, f: Fault) -> None:
        fleet = self.demo.fleet
        self._bh_active[f.target] -= 1
        if not self._bh_active[f.target]:  # two that overlap: the link lifts when the later one ends
            fleet.link.set_profile(self.demo.o.profile, fleet.link_names[f.target])
        dropped = self._link_stats(f.target).bytes_dropped - self._bh_before.pop(f, 0)
        self._deactivate(f"blackhole {f.target}")
        self._event(f, bytes_dropped=dropped)
        self._say(f"blackhole of {f.target} lifted ({dropped} bytes eaten)")

    def _uplink_outage(self, f: Fault) -> None:
        uplink = self.demo.uplink
        self._uplink_cuts = uplink.stats("uplink")["uplink"].cuts
        uplink.set_profile("outage", "uplink")
        self._outages += 1
        self._uplink_until = time.monotonic() + f.duration_s
        self._say(f"uplink to Kafka down for {f.duration_s:g} s (the bridges spool)")

    def _uplink_outage_end(self, f: Fault) -> None:
        uplink = self.demo.uplink
        uplink.set_profile(self.demo.o.uplink_profile, "uplink")
        self._uplink_until = 0.0
        cuts = uplink.stats("uplink")["uplink"].cuts - self._uplink_cuts
        self._event(f, connections_cut=cuts)
        self._say(f"uplink back ({cuts} connections were cut)")

    def _gateway_kill(self, f: Fault) -> None:
        gateway = self.demo.gateways[f.target]
        name = f"gateway {f.target}"
        with self._lock:
            self._down.add(name)
        pid = gateway.process.pid
        spool = self.demo.gateway_metrics(f.target).get("ferry_bridge_unacked_records")
        gateway.kill()
        self._activate(f"{name} down", f)
        self._pending_kill = {"pid": pid, "spool_at_kill": spool, "during_uplink_outage":
                              self._uplink_until > time.monotonic()}
        self._say(f"{name} SIGKILLed (pid {pid}, {spool} records not yet in Kafka"
                  f"{', uplink down' if self._pending_kill['during_uplink_outage'] else ''})")

    def _gateway_kill_end(self, f: Fault) -> None:
        began = time.monotonic()
        self._restart_gateway(f.target, kill=False)
        self._deactivate(f"gateway {f.target} down")
        self._event(f, **self._pending_kill, restarted=True, restart_s=round(time.monotonic() - began, 2))
        self._say(f"gateway {f.target} restarted on its data dir")

    def _restart_gateway(self, site: str, kill: bool) -> None:
        gateway = self.demo.gateways[site]
        name = f"gateway {site}"
        with self._lock:
            self._down.add(name)
        if kill:
            gateway.stop()
        gateway.start()
        with self._lock:
            self._down.discard(name)

    def _worker_kill(self, f: Fault) -> None:
        worker = next(w for w in self.demo.workers if w.name == f.target)
        with self._lock:
            self._down.add(worker.name)
        pid = worker.process.pid
        worker.process.kill()
        self._activate(f"{worker.name} down", f)
        self._worker_pid = pid
        self._say(f"{worker.name} SIGKILLed (pid {pid}): its partitions move to the other worker")

    def restart_crashed(self, worker: Any) -> None:
        """A worker exited by itself: say why (its log's last error), and start it again as its
        supervisor (systemd's Restart=on-failure) would. Counted as `worker_crash`, never hidden."""
        with self._lock:
            self._down.add(worker.name)
        reason = _crash_reason(worker.process.log_tail(20000)) or "?"
        status = worker.poll()
        self.events.append({"at_s": round(time.monotonic() - self.demo.started_at, 1), "kind": "worker_crash",
                            "target": worker.name, "status": status, "reason": reason[-400:]})
        self._say(f"{worker.name} EXITED by itself (status {status}): {reason[-300:]}; restarting it")
        self._restart_worker(worker, self.events[-1])

    def _worker_kill_end(self, f: Fault) -> None:
        worker = next(w for w in self.demo.workers if w.name == f.target)
        self._restart_worker(worker, self._event(f, pid=self._worker_pid, restarted=False))

    def _restart_worker(self, worker: Any, event: dict[str, Any]) -> None:

        def restart() -> None:  # joining the group takes seconds: not on the schedule's thread
            began = time.monotonic()
            for attempt in range(1, RESTART_ATTEMPTS + 1):
                try:
                    worker.start()
                    break
                except Exception as exc:
                    reason = _crash_reason(worker.process.log_tail(20000)) or str(exc)[:400]
                    self.events.append({"at_s": round(time.monotonic() - self.demo.started_at, 1),
                                        "kind": "worker_crash", "target": worker.name, "status": worker.poll(),
                                        "reason": reason, "while": "starting"})
                    self._say(f"{worker.name} EXITED while starting (attempt {attempt}): {reason[-300:]}")
                    if attempt == RESTART_ATTEMPTS:
                        self.failed = f"{worker.name} did not restart: {reason}"
                        event["error"] = reason
                        return
            with self._lock:
                self._down.discard(worker.name)
            self._deactivate(f"{worker.name} down")
            event.update(restarted=True, restart_s=round(time.monotonic() - began, 2))
            self._say(f"{worker.name} back in the group ({time.monotonic() - began:.1f} s to start)")

        thread = threading.Thread(target=restart, name=f"chaos-{worker.name}", daemon=True)
        self._helpers.append(thread)
        thread.start()

    def _set_disk_floor(self, site: str, full: bool) -> None:
        gateway = self.demo.gateways[site]
        text = gateway.config_path.read_text().split("\n[store]\n")[0]
        if full:
            text += f"\n[store]\nmin_free_disk_bytes = {DISK_FULL_BYTES}\n"
        gateway.config_path.write_text(text)

    def _disk_full(self, f: Fault) -> None:
        self._set_disk_floor(f.target, True)
        self._disks_full.add(f.target)
        self._restart_gateway(f.target, kill=True)
        self._activate(f"disk full {f.target}", f)
        deadline = time.monotonic() + DISK_LOW_WAIT_S
        low = 0.0
        while time.monotonic() < deadline and not low:
            low = self.demo.gateway_metrics(f.target).get("ferry_store_disk_low", 0.0)
            time.sleep(0.2)
        self._disk_low_seen = bool(low)
        self._say(f"gateway {f.target} restarted with min_free_disk_bytes {DISK_FULL_BYTES}: "
                  f"disk low {'reported' if low else 'NOT reported'}; QoS 1 publishes refused for {f.duration_s:g} s")

    def _disk_full_end(self, f: Fault) -> None:
        refused = self.demo.gateway_metrics(f.target).get("ferry_publishes_refused_total")
        self._set_disk_floor(f.target, False)
        self._restart_gateway(f.target, kill=True)
        self._disks_full.discard(f.target)
        self._deactivate(f"disk full {f.target}")
        self._event(f, disk_low_reported=self._disk_low_seen, publishes_refused=refused)
        self._say(f"gateway {f.target} restarted with its normal disk floor ({refused} publishes refused)")

    def _move(self, f: Fault) -> None:
        fleet = self.demo.fleet
        dev = f.target.split(">")[0]
        sites = self.demo.site_names
        was = fleet.device_site[dev]
        to = sites[(sites.index(was) + 1) % len(sites)]
        fleet.move(dev, to)
        self._event(f, device=dev, from_site=was, to_site=to)
        self._say(f"{dev} rebooted into site {to} (was {was})")

    # ---- the end ------------------------------------------------------------------
    def stop(self, restore: bool = True) -> None:
        """No more faults; with `restore`, every part back up and every link back to its profile
        (idempotent). Raises if a part does not come back: the run then fails."""
        if not self._stop.is_set() and "start" in self.soak:
            self.soak["end"] = process_table(self.demo)  # before anything is restarted for the drain
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        for thread in self._helpers:
            thread.join(90)
        if self._stopped or not restore:
            self._stopped = True
            return
        self._stopped = True
        demo = self.demo
        for site in sorted(self._disks_full):
            self._set_disk_floor(site, False)
            self._restart_gateway(site, kill=True)
        self._disks_full.clear()
        for site, gateway in demo.gateways.items():
            if gateway.process.poll() is not None:
                self._restart_gateway(site, kill=False)
        for worker in demo.workers:
            if worker.poll() is not None:
                worker.start()
        demo.uplink.set_profile(demo.o.uplink_profile, "uplink")
        self._uplink_until = 0.0
        for name in demo.fleet.link_names.values():
            demo.fleet.link.set_profile(demo.o.profile, name)
        with self._lock:
            self._down.clear()
            self._active.clear()


def proc_usage(pid: int) -> dict[str, int] | None:
    """{"pid", "rss_kib" (VmRSS), "fds" (entries of /proc/PID/fd)} of a live process, else None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return {"pid": pid, "rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def process_table(demo: Demo) -> dict[str, dict[str, int]]:
    """RSS and open fds of every process of the run: each part by name, this process (the fleet's
    supervisor and links), and the largest board interpreter (boards come and go with power cuts
    and deep sleep; `pid` is then the number of boards measured)."""
    parts = [("kafka", demo.kafka.process), ("uplink link", demo.uplink.process)]
    parts += [(f"gateway {site}", g.process) for site, g in demo.gateways.items()]
    parts += [(w.name, w.process) for w in demo.workers]
    out = {}
    for name, proc in parts:
        if proc is not None and proc.poll() is None:
            usage = proc_usage(proc.pid)
            if usage:
                out[name] = usage
    me = proc_usage(os.getpid())
    if me:
        out["demo (fleet, links)"] = me
    boards = []
    for board in demo.fleet.boards if demo.fleet else ():
        run = board._run  # read-only peek at the interpreter, as Fleet.measure does
        if run is not None and run.process.poll() is None:
            usage = proc_usage(run.process.pid)
            if usage:
                boards.append(usage)
    if boards:
        out["board (largest)"] = {"pid": len(boards), "rss_kib": max(b["rss_kib"] for b in boards),
                                  "fds": max(b["fds"] for b in boards)}
    return out


def _crash_reason(log_tail: str) -> str:
    """The line of a worker's log that says why it stopped: Faust's "Crashed reason=...", else the last error."""
    errors = [line for line in log_tail.splitlines() if "[ERROR]" in line or "[CRITICAL]" in line]
    crashed = [line for line in errors if "Crashed reason=" in line]
    return (crashed or errors or [""])[-1][-400:]


# ---- where did a reading go? ------------------------------------------------------------

def kafka_readings(bootstrap_servers: str, devices: Sequence[str], topic: str = "ferry.telemetry",
                   timeout_s: float = 20.0) -> dict[str, dict[int, set[int]]]:
    """Device -> boot -> the seqs of its readings in Kafka's telemetry topic (read from the start,
    every partition, with a throw-away group): tells a reading the bridge never wrote from one the
    worker never counted."""
    import json as _json
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    wanted = set(devices)
    found: dict[str, dict[int, set[int]]] = {d: {} for d in devices}
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"ferry-demo-audit-{uuid.uuid4()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        # Until the topic is quiet: Tansu's high watermark is the newest batch's base offset + 1, not the end.
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < QUIET_S:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            quiet_since = time.monotonic()
            key = (msg.key() or b"").decode(errors="replace")
            if key in wanted:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    reading = _json.loads(msg.value())
                    found[key].setdefault(int(reading["boot"]), set()).add(int(reading["seq"]))
    finally:
        consumer.close()
    return found


def ranges(seqs: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> "1-3,7"."""
    out, run = [], []
    for s in sorted(seqs):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def where_lost(demo: Demo, devices: Sequence[str]) -> dict[str, Any]:
    """For each device with unaccounted readings: the seqs the fleet's subscriber saw on a gateway,
    those in Kafka, and the worker's own gaps (`/devices/<id>`), per boot."""
    fleet = demo.fleet
    fleet.read_consoles()
    with fleet.subscriber.lock:
        seen = {d: {b: set(s) for b, s in fleet.tallies[d].seqs.items()} for d in devices}
    try:
        in_kafka = kafka_readings(demo.kafka.bootstrap_servers, devices)
    except Exception as exc:  # the audit must not hide the accounting
        in_kafka = {}
        demo.say(f"  (could not read Kafka back: {exc})")
    out: dict[str, Any] = {}
    for dev in devices:
        boots = {}
        for boot, gateway_seqs in sorted(seen[dev].items()):
            kafka = in_kafka.get(dev, {}).get(boot, set())
            boots[str(boot)] = {"at_gateway": len(gateway_seqs), "in_kafka": len(kafka),
                                "at_gateway_not_in_kafka": ranges(sorted(gateway_seqs - kafka))}
        out[dev] = {"boots": boots, "worker": demo.worker.get(f"/devices/{dev}")}
    return out


def say_where_lost(demo: Demo, devices: Sequence[str]) -> dict[str, Any]:
    """`where_lost`, printed one line per device and boot."""
    lost = where_lost(demo, devices)
    for dev, info in lost.items():
        demo.say(f"  {dev}: per boot, at gateway / in Kafka / at gateway but not in Kafka: "
                 + "; ".join(f"boot {b}: {v['at_gateway']}/{v['in_kafka']}/[{v['at_gateway_not_in_kafka']}]"
                             for b, v in info["boots"].items()))
        demo.say(f"  {dev}: the worker says {json.dumps(info['worker'])[:600]}")
    return lost
