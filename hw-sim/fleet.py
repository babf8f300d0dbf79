"""`ferry sim fleet`: many virtual boards running Ferry's firmware behind one simulated link.

One supervisor process (this one) holds everything:

* N `VirtualBoard`s (one MicroPython interpreter process each, and one host thread
  per board that blocks in `select` on the board's control pipe: no polling);
* one in-process `Link` (`LinkThread`) in front of the gateway; every board's
  `/ferry_config.json` points at the link's port;
* a paho subscriber on the gateway (direct, not through the link) that counts what
  arrives: readings (`ferry/<site>/+/telemetry`), statuses (outbox `dropped`) and
  command replies;
* a console tail: boards run with `log_stats_every: 1`, so after every sample the
  firmware logs `stats seq N ...`; that is how many readings the board generated in
  its current boot, even those still in its outbox;
* optional power cuts (`power_cut()`, then `power_on()` after a delay).

Counts per device: generated (per boot: the largest of the console's seq, the last
delivered seq + 1 and the end of a loss range the firmware reported), acknowledged
(distinct readings that reached the subscriber), dropped (the device's own
`outbox.dropped` from its latest status), in outbox (generated - acknowledged -
dropped). At the end the fleet drains: it sends every device `set sample_s 86400`
(no more samples), waits until each device's readings are all delivered or counted
dropped, then powers the boards off. docs/fleet.md has the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ferry.hwsim.board import BoardConfig, VirtualBoard
from ferry.hwsim.fleet_firmware import (  # noqa: F401  (mpy_cross_path: the fleet's users find it here)
    board_settings, ca_der, compile_firmware, install_firmware, mpy_cross_path,
)
from ferry.hwsim.fleet_tally import ConsoleTail, DeviceTally, Subscriber
from ferry.hwsim.micropython import ESP32_LIKE, UNIX64, esp32_like_mpy_cross

DEFAULT_SITE = "sim"
WATCH_PASSWORD_ENV = "FERRY_WATCH_PASSWORD"
DRAIN_SAMPLE_S = 86400
DRAIN_RESEND_S = 3.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_IN_PROCESS_LINK = 300
"""`VirtualBoard` waits with `select.select` (fds < 1024); an in-process link adds two sockets per
board to this process, so above ~340 boards board threads failed (`filedescriptor out of range`).
Larger fleets run the link in a child process (`LinkProcess`), one fd per board here."""


# ---------------------------------------------------------------------- measuring

def proc_sample(pid: int) -> tuple[float, int, int, float] | None:
    """(CPU seconds, RSS bytes, PSS bytes, age s) of one process from /proc; None when it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
        age = float(open("/proc/uptime").read().split()[0]) - int(stat[19]) / CLK_TCK
        rss = pss = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
        return cpu, rss, pss, age
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------------- the fleet

@dataclass(frozen=True)
class FleetSite:
    """One site of a fleet spread over several gateways: its name (the `<site>` of the boards'
    topics), the gateway its boards reach through their own link, and where the fleet's subscriber
    for that gateway connects (None: `gateway`)."""

    name: str
    gateway: tuple[str, int]
    watch: tuple[str, int] | None = None


@dataclass
class FleetOptions:
    devices: int
    gateway: tuple[str, int]
    profile: str = "wifi-flaky"
    duration_s: float | None = None
    sample_ms: int = 10000
    power_cuts_per_min: float = 0.0
    power_off_s: float = 2.0
    work_dir: Path | None = None
    site: str = DEFAULT_SITE
    seed: int = 1
    start_stagger_s: float = 0.02
    drain_timeout_s: float = 60.0
    live_every_s: float = 5.0
    link_process: bool | None = None  # None: in process up to MAX_IN_PROCESS_LINK boards
    firmware: dict = field(default_factory=dict)  # extra /ferry_config.json keys
    tls_ca: Path | None = None
    """The gateway's CA certificate (PEM or DER): every board gets it as /ferry_ca.der and speaks MQTT
    over TLS, trusting that CA alone. `gateway` must then be a TLS listener whose certificate names
    127.0.0.1 (boards dial the link on 127.0.0.1; the link passes the TLS bytes through). None: plain MQTT."""
    passwords: Mapping[str, str] = field(default_factory=dict)
    """Device id (`Fleet.device_id(i)`) -> MQTT password, written to that board's settings; the device
    id is the user name. A device left out connects without a user name (anonymous)."""
    watch: tuple[str, int] | None = None
    """Where the fleet's own subscriber connects; None: `gateway`."""
    watch_username: str | None = None
    """The subscriber's user name (an operator: it reads ferry/<site>/# and publishes commands)."""
    watch_password: str | None = None
    watch_tls_ca: Path | None = None
    """CA certificate when `watch` is a TLS listener; None: plain MQTT."""
    sites: Sequence[FleetSite] = ()
    """Several gateways: board i starts at site i % len(sites), each site has its own link
    ("devices-<site>") and subscriber (all with `watch_username`/`watch_password`). Empty: one
    site, `site` at `gateway` (link "devices")."""
    interpreter: str = UNIX64
    """Which MicroPython runs the boards; ESP32_LIKE: the 32-bit build at a 64 KB heap, the firmware compiled by
    its own mpy-cross (docs/virtual-board.md, "Interpreters")."""
    firmware_by_device: Mapping[str, dict] = field(default_factory=dict)
    """Device id -> extra /ferry_config.json keys for that board alone (after `firmware`), e.g.
    `{"mode": "duty_cycle"}`."""


class Fleet:
    """N boards, one link, one subscriber; `start()`, `run()`/`drain()`, `stop()`."""

    def __init__(self, options: FleetOptions, out=sys.stdout) -> None:
        self.o = options
        self.out = out
        self.boards: list[VirtualBoard] = []
        self.tallies: dict[str, DeviceTally] = {}
        self.tails: list[ConsoleTail] = []
        self.link = None
        self.subscriber: Subscriber | None = None
        """The first site's subscriber (the only one with a single site)."""
        self.subscribers: dict[str, Subscriber] = {}
        self.sites: list[FleetSite] = []
        self.link_names: dict[str, str] = {}
        """Site -> the name of its devices link."""
        self.device_site: dict[str, str] = {}
        """Device -> the site its settings name now."""
        self.site_path: dict[str, str] = {}
        """Device -> every site it was at, in order: "north" or "north>south"."""
        self.moves = 0
        self._off: set[int] = set()
        """Indexes of boards a power cut left off (waiting for their restore)."""
        self._stop = threading.Event()
        self._cutter: threading.Thread | None = None
        self._restarts: list[threading.Timer] = []
        self._board_lock = threading.Lock()
        self.power_cuts = 0
        self._own_tmp: tempfile.TemporaryDirectory | None = None
        self.started_at = 0.0
        self._cpu_prev: dict[int, float] = {}
        self.measurement: dict = {}

    @staticmethod
    def device_id(i: int) -> str:
        return f"sim-{i + 1:04d}"

    # ---- start/stop ---------------------------------------------------------
    def start(self) -> "Fleet":
        from ferry.hwsim.link import LinkConfig, LinkThread, resolve_profile

        o = self.o
        if o.work_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="ferry-fleet-")
            o.work_dir = Path(self._own_tmp.name)
        o.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            build = compile_firmware(o.work_dir / "build",
                                     esp32_like_mpy_cross() if o.interpreter == ESP32_LIKE else None)
            self.sites = list(o.sites) or [FleetSite(o.site, o.gateway, o.watch)]
            configs = []
            for n, site in enumerate(self.sites):
                name = "devices" if len(self.sites) == 1 else f"devices-{site.name}"
                self.link_names[site.name] = name
                configs.append(LinkConfig(upstream_host=site.gateway[0], upstream_port=site.gateway[1], name=name,
                                          profile=resolve_profile(o.profile), seed=o.seed + n))
            use_process = o.link_process if o.link_process is not None else o.devices > MAX_IN_PROCESS_LINK
            if use_process:
                from ferry.hwsim.link import LinkProcess
                self.link = LinkProcess(configs, o.work_dir).start()
            else:
                self.link = LinkThread(configs).start()
            for i in range(o.devices):
                dev = self.device_id(i)
                self.tallies[dev] = DeviceTally(dev)
            lock = threading.Lock()
            for site in self.sites:
                watch = site.watch or site.gateway
                self.subscribers[site.name] = Subscriber(
                    watch[0], watch[1], site.name, self.tallies, username=o.watch_username, password=o.watch_password,
                    tls_ca=o.watch_tls_ca, client_id=f"ferry-fleet-{os.getpid()}-{site.name}", lock=lock)
            self.subscriber = self.subscribers[self.sites[0].name]
            ca = ca_der(o.tls_ca) if o.tls_ca is not None else None
            for i in range(o.devices):
                dev = self.device_id(i)
                site = self.sites[i % len(self.sites)].name
                self.device_site[dev] = self.site_path[dev] = site
                board_dir = o.work_dir / dev
                shutil.rmtree(board_dir, ignore_errors=True)  # a fresh board every run
                board = VirtualBoard(board_dir, BoardConfig(uid=bytes([0x24, 0x0A, 0xC4, 0, (i + 1) >> 8, (i + 1) & 255]),
                                                           sensor_seed=o.seed * 100000 + i + 1,
                                                           interpreter=o.interpreter))
                settings = board_settings(site, dev, board.config.wifi_ssid,
                                          ("127.0.0.1", self.link.port(self.link_names[site])),
                                          tls=ca is not None, password=o.passwords.get(dev),
                                          sample_ms=o.sample_ms, log_stats_every=1)
                settings.update(o.firmware)
                settings.update(o.firmware_by_device.get(dev, {}))
                install_firmware(board.flash_dir, build, settings, ca)
                self.boards.append(board)
                self.tails.append(ConsoleTail(board.console_path, self.tallies[dev]))
            self.started_at = time.monotonic()
            for board in self.boards:
                if self._stop.is_set():
                    break
                board.power_on()
                if o.start_stagger_s:
                    self._stop.wait(o.start_stagger_s)
            if o.power_cuts_per_min > 0:
                self._cutter = threading.Thread(target=self._cut_loop, name="fleet-power-cuts", daemon=True)
                self._cutter.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop power cuts, every board, the subscriber and the link (idempotent)."""
        self._stop.set()
        if self._cutter is not None:
            self._cutter.join(30)
            self._cutter = None
        for t in self._restarts:
            t.cancel()
        with self._board_lock:
            boards = list(self.boards)
        threads = [threading.Thread(target=b.stop, daemon=True) for b in boards]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.read_consoles()
        if self.subscribers:
            time.sleep(0.2)
            for subscriber in self.subscribers.values():
                subscriber.close()
            self.subscribers = {}
            self.subscriber = None
        if self.link is not None:
            self.link.stop()
            self.link = None

    def close(self) -> None:
        self.stop()
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- power cuts -----------------------------------------------------------
    def _cut_loop(self) -> None:
        rng = random.Random(self.o.seed)
        rate_s = self.o.power_cuts_per_min / 60
        while not self._stop.wait(rng.expovariate(rate_s)):
            with self._board_lock:
                candidates = [i for i, b in enumerate(self.boards) if b.running]
                if not candidates:
                    continue
                index = rng.choice(candidates)
                self.boards[index].power_cut()
                self._off.add(index)
                self.power_cuts += 1
                timer = threading.Timer(self.o.power_off_s, self._restore, args=(index,))
                timer.daemon = True
                self._restarts.append(timer)
                timer.start()

    def _restore(self, index: int) -> None:
        # Only a board a cut left off: a duty-cycle board asleep is not running either, and a second
        # power_on would give it a second supervisor.
        with self._board_lock:
            if not self._stop.is_set() and index in self._off:
                self._off.discard(index)
                self.boards[index].power_on()

    def stop_power_cuts(self) -> None:
        """No more cuts; boards that are off are powered on again at once."""
        if self._cutter is None:
            return
        self._stop.set()
        self._cutter.join(30)
        self._cutter = None
        for t in self._restarts:
            t.cancel()
        with self._board_lock:
            for index in sorted(self._off):
                self.boards[index].power_on()
            self._off.clear()
        self._stop.clear()

    # ---- sites ----------------------------------------------------------------
    def move(self, dev: str, site: str) -> None:
        """`dev` reboots into `site`: power cut, its /ferry_config.json names the other site and that
        site's link, power on. Readings staged in RAM are lost as in any power cut (the device counts
        them); its flash outbox goes along and is sent to the new gateway."""
        index = int(dev.rsplit("-", 1)[1]) - 1
        port = self.link.port(self.link_names[site])
        with self._board_lock:
            board = self.boards[index]
            board.power_cut()
            self._off.discard(index)
            path = board.flash_dir / "ferry_config.json"
            settings = json.loads(path.read_text())
            settings["site"] = site
            settings["broker_tls_port" if settings.get("tls") else "broker_port"] = port
            path.write_text(json.dumps(settings))
            self.device_site[dev] = site
            self.site_path[dev] += f">{site}"
            self.moves += 1
            if not self._stop.is_set():
                board.power_on()

    def link_stats(self) -> dict[str, object]:
        """Link name -> LinkStats of every devices link."""
        out = {}
        for name in self.link_names.values():
            s = self.link.stats(name)
            out[name] = s[name] if isinstance(s, dict) else s
        return out

    # ---- counting -------------------------------------------------------------
    def read_consoles(self) -> None:
        for tail in self.tails:
            tail.read()

    def rows(self) -> list[dict]:
        self.read_consoles()
        lock = self.subscriber.lock if self.subscriber else threading.Lock()
        with lock:
            return [{**t.row(), "site": self.site_path.get(t.dev, "")} for t in self.tallies.values()]

    def totals(self) -> dict:
        rows = self.rows()
        keys = ("generated", "acknowledged", "in_outbox", "dropped", "duplicates")
        total = {k: sum(r[k] for r in rows) for k in keys}
        total["devices"] = len(rows)
        total["running"] = sum(1 for b in self.boards if b.running)
        total["power_cuts"] = self.power_cuts
        return total

    def unaccounted(self) -> dict[str, dict[int, list[int]]]:
        """Devices whose missing readings are more than their own dropped count says."""
        self.read_consoles()
        bad = {}
        with self.subscriber.lock if self.subscriber else threading.Lock():
            for dev, t in self.tallies.items():
                missing = t.missing()
                if sum(len(v) for v in missing.values()) > t.dropped:
                    bad[dev] = missing
        return bad

    def measure(self) -> dict:
        """CPU (% of one core since the last call) and RSS/PSS of the board interpreters and this process."""
        pids = []
        for b in self.boards:
            run = b._run  # read-only peek: the interpreter's pid
            if run is not None and run.process.poll() is None:
                pids.append(run.process.pid)
        now = time.monotonic()
        cpu_total = 0.0
        rss = pss = 0
        life_cpu = life_age = 0.0
        current: dict[int, float] = {}
        n = 0
        for pid in pids:
            s = proc_sample(pid)
            if s is None:
                continue
            n += 1
            current[pid] = s[0]
            cpu_total += s[0] - self._cpu_prev.get(pid, s[0])
            rss += s[1]
            pss += s[2]
            life_cpu += s[0]
            life_age += s[3]
        me = proc_sample(os.getpid())
        prev_t = self._cpu_prev.get(-1, self.started_at)
        prev_me = self._cpu_prev.get(-2, me[0] if me else 0)
        interval = max(1e-6, now - prev_t)
        self._cpu_prev = current
        self._cpu_prev[-1] = now
        self._cpu_prev[-2] = me[0] if me else 0
        m = {"boards_measured": n, "interval_s": round(interval, 1),
             "cpu_pct_per_board": round(100 * cpu_total / interval / n, 3) if n else 0.0,
             "cpu_pct_per_board_lifetime": round(100 * life_cpu / life_age, 3) if life_age else 0.0,
             "rss_mib_per_board": round(rss / n / 2**20, 2) if n else 0.0,
             "pss_mib_per_board": round(pss / n / 2**20, 2) if n else 0.0,
             "supervisor_cpu_pct": round(100 * ((me[0] if me else 0) - prev_me) / interval, 1),
             "supervisor_rss_mib": round((me[1] if me else 0) / 2**20, 1)}
        try:
            load = open("/proc/loadavg").read().split()[0]
            m["loadavg"] = float(load)
        except OSError:
            pass
        self.measurement = m
        return m

    # ---- running --------------------------------------------------------------
    def live_line(self) -> str:
        t = self.totals()
        m = self.measure()
        link = ""
        if self.link is not None:
            stats = list(self.link_stats().values())
            link = (f" link conns {sum(s.connections_open for s in stats)} "
                    f"resets {sum(s.resets_injected for s in stats)} stalls {sum(s.stalls for s in stats)}")
        return (f"[{time.monotonic() - self.started_at:6.1f}s] running {t['running']}/{t['devices']} "
                f"generated {t['generated']} acked {t['acknowledged']} outbox {t['in_outbox']} "
                f"dropped {t['dropped']} dups {t['duplicates']} cuts {t['power_cuts']} | "
                f"cpu/board {m['cpu_pct_per_board']}% rss/board {m['rss_mib_per_board']} MiB "
                f"supervisor {m['supervisor_cpu_pct']}%{link}")

    def run_for(self, duration_s: float | None, stop_event: threading.Event | None = None) -> None:
        """Print a live line every few seconds until duration_s passes or stop_event is set."""
        stop_event = stop_event or threading.Event()
        end = None if duration_s is None else time.monotonic() + duration_s
        while True:
            wait = self.o.live_every_s
            if end is not None:
                wait = min(wait, end - time.monotonic())
            if wait <= 0 or stop_event.wait(wait):
                return
            print(self.live_line(), file=self.out, flush=True)

    def drain(self, timeout_s: float | None = None, stop_event: threading.Event | None = None) -> bool:
        """Stop sampling on every device (command `set sample_s 86400`) and wait until every
        reading is delivered or counted dropped; True when that happened within the timeout."""
        self.stop_power_cuts()
        timeout_s = self.o.drain_timeout_s if timeout_s is None else timeout_s
        stop_event = stop_event or threading.Event()
        cid = f"drain-{os.getpid()}-{int(time.time())}"
        command = {"v": 1, "id": cid, "op": "set", "args": {"sample_s": DRAIN_SAMPLE_S}}
        deadline = time.monotonic() + timeout_s
        next_live = time.monotonic() + self.o.live_every_s
        next_send = 0.0
        while True:
            if time.monotonic() >= next_send:
                # Again until each device answers: one that has never connected has no session
                # (and no subscription) on the gateway yet, so the broker had nowhere to keep it.
                next_send = time.monotonic() + DRAIN_RESEND_S
                with self.subscriber.lock:
                    unanswered = [d for d, t in self.tallies.items() if cid not in t.replies]
                for dev in unanswered:
                    site = self.device_site[dev]
                    self.subscribers[site].command(dev, command, site)
            if self._drained(cid):
                return True
            if time.monotonic() >= deadline or stop_event.wait(0.5):
                return False
            if time.monotonic() >= next_live:
                next_live += self.o.live_every_s
                print("drain " + self.live_line(), file=self.out, flush=True)

    def _drained(self, cid: str) -> bool:
        self.read_consoles()
        with self.subscriber.lock:
            for dev, t in self.tallies.items():
                if cid not in t.replies:
                    return False
                if t.boots_seen and t.status_boot < t.boots_seen[-1]:
                    return False  # the current boot's birth (its dropped count) has not arrived
                if sum(len(v) for v in t.missing().values()) > t.dropped:
                    return False
        return True

    def table(self) -> str:
        rows = self.rows()
        head = f"{'device':10} {'boots':>5} {'generated':>9} {'acked':>9} {'outbox':>7} {'dropped':>7} {'dups':>5}"
        lines = [head]
        for r in rows:
            lines.append(f"{r['device']:10} {r['boots']:5} {r['generated']:9} {r['acknowledged']:9} "
                         f"{r['in_outbox']:7} {r['dropped']:7} {r['duplicates']:5}")
        t = self.totals()
        lines.append(f"{'TOTAL':10} {'':5} {t['generated']:9} {t['acknowledged']:9} {t['in_outbox']:7} "
                     f"{t['dropped']:7} {t['duplicates']:5}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    from ferry.addresses import host_port
    from ferry.hwsim.link_profile import PROFILES

    p = argparse.ArgumentParser(prog="ferry sim fleet",
                                description="Run N virtual boards with Ferry's firmware behind one simulated link.")
    p.add_argument("--devices", type=int, required=True, help="number of boards (sim-0001 ...)")
    p.add_argument("--gateway", type=host_port, required=True, metavar="HOST:PORT", help="the ferry gateway")
    p.add_argument("--profile", default="wifi-flaky", choices=list(PROFILES), help="link profile (default wifi-flaky)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="run S seconds, then drain and stop")
    p.add_argument("--sample-ms", type=int, default=10000, help="sample interval (firmware default 10000)")
    p.add_argument("--power-cuts", type=float, default=0.0, metavar="RATE",
                   help="random power cuts per minute across the fleet (default 0)")
    p.add_argument("--power-off", type=float, default=2.0, metavar="S", help="seconds a cut board stays off")
    p.add_argument("--work-dir", type=Path, default=None, help="board folders (default: a temporary folder)")
    p.add_argument("--site", default=DEFAULT_SITE)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drain-timeout", type=float, default=60.0, metavar="S",
                   help="at the end, wait at most S seconds for every reading (0: no drain)")
    p.add_argument("--live-every", type=float, default=5.0, metavar="S")
    p.add_argument("--link", choices=["auto", "thread", "process"], default="auto",
                   help=f"the link in this process (thread) or a child process; auto: thread up to "
                        f"{MAX_IN_PROCESS_LINK} boards")
    p.add_argument("--json", type=Path, default=None, help="also write the final counts as JSON here")
    p.add_argument("--tls-ca", type=Path, default=None, metavar="FILE",
                   help="the gateway's CA certificate: boards connect over TLS (--gateway is then a TLS listener "
                        "whose certificate names 127.0.0.1)")
    p.add_argument("--passwords", type=Path, default=None, metavar="FILE",
                   help="a JSON object {device id: MQTT password} for the boards (sim-0001 ...); the gateway's "
                        "password file must hold the same (ferry passwd)")
    p.add_argument("--watch", type=host_port, default=None, metavar="HOST:PORT",
                   help="where the fleet's subscriber connects (default: --gateway)")
    p.add_argument("--watch-user", default=None, metavar="USER",
                   help=f"the subscriber's user name (an operator); its password from ${WATCH_PASSWORD_ENV}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.devices < 1 or args.devices > 9999:
        print("ferry sim fleet: --devices must be 1..9999", file=sys.stderr)
        return 2
    options = FleetOptions(devices=args.devices, gateway=args.gateway, profile=args.profile,
                           duration_s=args.duration, sample_ms=args.sample_ms, power_cuts_per_min=args.power_cuts,
                           power_off_s=args.power_off, work_dir=args.work_dir, site=args.site, seed=args.seed,
                           drain_timeout_s=args.drain_timeout, live_every_s=args.live_every,
                           link_process={"auto": None, "thread": False, "process": True}[args.link],
                           tls_ca=args.tls_ca, watch=args.watch, watch_username=args.watch_user,
                           watch_password=os.environ.get(WATCH_PASSWORD_ENV) if args.watch_user else None)
    if args.passwords is not None:
        try:
            passwords = json.loads(args.passwords.read_text())
        except (OSError, ValueError) as e:
            print(f"ferry sim fleet: --passwords {args.passwords}: {e}", file=sys.stderr)
            return 2
        if not isinstance(passwords, dict) or not all(isinstance(v, str) for v in passwords.values()):
            print(f"ferry sim fleet: --passwords {args.passwords}: expected a JSON object of strings", file=sys.stderr)
            return 2
        options.passwords = passwords
    stop_event = threading.Event()
    interrupted = []

    def on_signal(signum, frame) -> None:
        interrupted.append(signum)
        if len(interrupted) > 1:
            raise KeyboardInterrupt
        stop_event.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    fleet = Fleet(options)
    drained = None
    try:
        print(f"ferry sim fleet: starting {args.devices} boards, profile {args.profile}, "
              f"sample {args.sample_ms} ms, gateway {args.gateway[0]}:{args.gateway[1]}", flush=True)
        fleet.start()
        print(f"ferry sim fleet: {args.devices} boards powered on, link port {fleet.link.port()}, "
              f"work dir {options.work_dir}", flush=True)
        fleet.run_for(args.duration, stop_event)
        measurement = dict(fleet.measurement) if fleet.measurement else fleet.measure()
        if not stop_event.is_set() and args.drain_timeout > 0:
            print("ferry sim fleet: draining (sampling stopped)", flush=True)
            drained = fleet.drain(args.drain_timeout, stop_event)
        fleet.stop()
        print(fleet.table(), flush=True)
        totals = fleet.totals()
        bad = fleet.unaccounted() if drained else {}  # without a drain, missing = still in outboxes
        state = ("drained" if drained else "NOT drained within --drain-timeout" if drained is False
                 else f"stopped without drain, {totals['in_outbox']} readings still in outboxes")
        print(f"ferry sim fleet: {state}; power cuts {totals['power_cuts']}; "
              f"devices with unaccounted readings {len(bad)}; "
              f"last measurement {json.dumps(measurement)}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"totals": totals, "rows": fleet.rows(), "drained": drained,
                                             "measurement": measurement,
                                             "unaccounted": {d: {str(b): s for b, s in m.items()}
                                                             for d, m in bad.items()}}, indent=1))
        return 0 if (drained is not False and not bad) else 1
    finally:
        fleet.close()
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
