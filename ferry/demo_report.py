"""The parts of `ferry demo` that need none of Ferry's parts (docs/demo.md): its report (the balance
per device, the accounting table, the progress line, latency percentiles; pure, unit-tested in
tests/ferry/test_demo.py) and its process hygiene (signals, children left running)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

SPOOL_METRIC = "ferry_bridge_unacked_records"
"""The gateway's gauge of records Kafka has not acknowledged, wherever the bridge holds them: the
spool's (in flight to Kafka included) and the QoS 0 ones held in memory."""


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
    site: str = ""
    """The sites the device was at, in order ("north>south" after a move); empty with one site."""

    @property
    def unaccounted(self) -> int:
        """Readings neither received by the server nor counted dropped by the device; 0 is the promise.
        Negative would mean the server counted more than the device made."""
        return self.generated - self.dropped_at_device - self.received


def balances(fleet_rows: Sequence[dict], server_devices: dict | None, sites: bool = False) -> list[DeviceBalance]:
    """Join the fleet's per-device rows (`Fleet.rows()`) with the worker's `/devices` answer (keyed by
    device alone: a device id is global, whichever site it reports from); `sites`: keep each row's site."""
    server_devices = server_devices or {}
    out = []
    for row in fleet_rows:
        s = server_devices.get(row["device"], {})
        out.append(DeviceBalance(row["device"], row["generated"], row["dropped"], row["acknowledged"],
                                 int(s.get("received", 0)), int(s.get("duplicates", 0)), int(s.get("gaps", 0)),
                                 int(s.get("lost_at_device", 0)), row.get("site", "") if sites else ""))
    return out


_SUMMED = ("generated", "dropped_at_device", "at_gateway", "received", "duplicates", "gaps", "lost_at_device_server")


def total(rows: Sequence[DeviceBalance]) -> DeviceBalance:
    return DeviceBalance("TOTAL", *(sum(getattr(r, f) for r in rows) for f in _SUMMED))


def accounting_table(rows: Sequence[DeviceBalance]) -> str:
    """One line per device and a TOTAL; with sites, a site column and a TOTAL per site."""
    width = max((len(r.site) for r in rows), default=0)
    site = (lambda r: f" {r.site:{max(width, 4)}}") if width else (lambda r: "")
    head = (f"{'device':10}{site(DeviceBalance('', 0, 0, 0, 0, 0, 0, 0, 'site'))} {'generated':>9} "
            f"{'dropped@dev':>11} {'at gateway':>10} {'received':>9} {'dups removed':>12} {'gaps':>5} "
            f"{'unaccounted':>11}")
    per_site: list[DeviceBalance] = []
    if width:
        for name in sorted({r.site.rsplit(">", 1)[-1] for r in rows}):
            t = total([r for r in rows if r.site.rsplit(">", 1)[-1] == name])
            per_site.append(DeviceBalance("TOTAL@", *(getattr(t, f) for f in _SUMMED), name))
    lines = [head, "-" * len(head)]
    for block in (rows, per_site, [total(rows)]):
        if block and block[0].device.startswith("TOTAL"):
            lines.append("-" * len(head))
        lines += [f"{r.device:10}{site(r)} {r.generated:9} {r.dropped_at_device:11} {r.at_gateway:10} "
                  f"{r.received:9} {r.duplicates:12} {r.gaps:5} {r.unaccounted:11}" for r in block]
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


def buckets_since(mark: Sequence[tuple[float, float]] | None, end: Sequence[tuple[float, float]] | None
                  ) -> list[tuple[float, float]] | None:
    """A worker's cumulative latency buckets counted between two scrapes: `end` minus `mark`, bound by
    bound; `end` alone when the worker restarted in between (a count went down: it started from zero)
    or `mark` is missing; None when `end` is."""
    if end is None:
        return None
    before = dict(mark or ())
    if any(count < before.get(bound, 0.0) for bound, count in end):
        return list(end)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in end]


def latency_line(summary: dict | None) -> str:
    if summary is None:
        return "not measured (the workers export no ferry_worker_reading_latency_seconds)"
    if not summary["readings"]:
        return "no clock-synced reading counted"
    links = f", {summary['profile']} links" if summary.get("profile") else ""
    return (f"p50 {summary['p50_s']:.2f} s, p95 {summary['p95_s']:.2f} s, p99 {summary['p99_s']:.2f} s "
            f"over {summary['readings']} clock-synced readings (sample time -> counted by a worker{links})")


# ---------------------------------------------------------------------- signals and leftovers

class Interrupted(BaseException):
    """Ctrl-C or SIGTERM during start-up: stop at once (cleaning up). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


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
