"""Over-the-air updates across a simulated fleet (issue #16, docs/ota.md): a release of the fleet's own
firmware is pushed by `ferry.ota.push` (the operator's side, its own MQTT client on the gateway) to every
board of a running `Fleet`, whose boards reach the gateway through their simulated links; power cuts can be
aimed at each board's download (while it is in update mode) and at its first start of the new version; every
birth is kept, so what each board ran at each start can be checked. Used by the OTA fleet tests and
`ferry bench ota`.

The fleet's own power-cut schedule must be off (`power_cuts_per_min` 0): this module cuts and restores the
boards itself, under the fleet's board lock.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ferry import ota as fota
from ferry.firmware import SOURCE_DIR
from ferry.hwsim.fleet import Fleet

UPDATE_MODE = re.compile(rb"^ferry -?\d+ ota: update mode, ")
UPDATE_END = re.compile(rb"^ferry -?\d+ ota: update mode ends: (\w+) .*\(heap low (-?\d+), download's peaks (-?\d+)\)")


def firmware_release(build: Path, work: Path, version: str, compiler: Path, mpy: int,
                     app_source: str | None = None) -> fota.Release:
    """The compiled firmware in `build` (what the boards run) as a release: app.mpy compiled from
    device/app.py with FW_VERSION = version (or from `app_source`: a release that fails), every other
    module as built; the boot files (main.py, boot_select) left out, as `ferry ota push` does."""
    work.mkdir(parents=True, exist_ok=True)
    source = (SOURCE_DIR / "app.py").read_text()
    if app_source is None:
        if 'FW_VERSION = "0.1.0"' not in source:
            raise ValueError("device/app.py: FW_VERSION is not 0.1.0 any more")
        app_source = source.replace('FW_VERSION = "0.1.0"', f'FW_VERSION = "{version}"')
    (work / "app.py").write_text(app_source)
    subprocess.run([str(compiler), "-s", "app.py", "-o", str(work / "app.mpy"), str(work / "app.py")], check=True,
                   timeout=60)
    files = [fota.ReleaseFile(p.name, (work / "app.mpy" if p.name == "app.mpy" else p).read_bytes())
             for p in sorted(build.glob("*.mpy")) if p.name != "boot_select.mpy"]
    return fota.make_release(version, files, mpy)


@dataclass(frozen=True)
class Birth:
    """One "online" status: what a board ran at one start."""

    boot: int
    fw: str
    slot: str
    state: str
    ver: str
    last: str


class BirthLog:
    """A paho subscriber on the gateway: every birth of every device, in arrival order."""

    def __init__(self, host: str, port: int, site: str, client_id: str) -> None:
        import paho.mqtt.client as mqtt

        self.lock = threading.Lock()
        self.births: dict[str, list[Birth]] = {}
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=True)
        self.client.on_connect = lambda c, *a: c.subscribe(f"ferry/{site}/+/status", 1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, 30)
        self.client.loop_start()
        if not self.ready.wait(15):
            self.close()
            raise ConnectionError(f"no SUBACK from the gateway at {host}:{port}")

    def _on_message(self, client, userdata, msg) -> None:
        try:
            obj = json.loads(msg.payload)
            if obj.get("state") != "online":
                return
            ota = obj.get("ota") or {}
            birth = Birth(int(obj["boot"]), obj["fw"], ota.get("slot", ""), ota.get("state", ""), ota.get("ver", ""),
                          ota.get("last", ""))
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            self.births.setdefault(msg.topic.split("/")[2], []).append(birth)

    def of(self, dev: str) -> list[Birth]:
        with self.lock:
            return list(self.births.get(dev, []))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class CutPlan:
    """Power cuts during an update, per board."""

    download: int = 0
    """Cuts while the board is in update mode, each a random 0..download_window_s after it (re)entered it."""
    download_window_s: float = 3.0
    first_start: bool = False
    """One more cut 0..first_start_window_s after the board's first birth on the new version (its trial)."""
    first_start_window_s: float = 1.5
    off_s: tuple[float, float] = (0.3, 1.0)
    seed: int = 1


class UpdateCutter:
    """Cuts the boards' power as a CutPlan says, reading their consoles and the births; restores each after
    off_s. `stop()` ends the cuts and powers on every board it left off."""

    def __init__(self, fleet: Fleet, births: BirthLog, plan: CutPlan, version: str) -> None:
        self.fleet = fleet
        self.births = births
        self.plan = plan
        self.version = version
        self.rng = random.Random(plan.seed)
        self.cuts: list[tuple[str, str]] = []
        """(device, "download" or "first_start") of every cut, in order."""
        self._left = {Fleet.device_id(i): plan.download for i in range(len(fleet.boards))}
        self._first_done: set[str] = set()
        self._offsets = [0] * len(fleet.boards)
        self._pending: dict[int, tuple[float, str]] = {}  # board index -> (when, why)
        self._off: dict[int, float] = {}  # board index -> when to power it on again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ota-cuts", daemon=True)
        self._thread.start()

    def _entered_update_mode(self, index: int) -> bool:
        path = self.fleet.boards[index].console_path
        try:
            with open(path, "rb") as f:
                f.seek(self._offsets[index])
                data = f.read()
        except FileNotFoundError:
            return False
        cut = data.rfind(b"\n") + 1
        self._offsets[index] += cut
        return any(UPDATE_MODE.match(line) for line in data[:cut].split(b"\n"))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            for index in range(len(self.fleet.boards)):
                dev = Fleet.device_id(index)
                if self._entered_update_mode(index) and self._left[dev] > 0 and index not in self._pending:
                    self._pending[index] = (now + self.rng.uniform(0, self.plan.download_window_s), "download")
                if (self.plan.first_start and dev not in self._first_done and index not in self._pending
                        and any(b.fw == self.version for b in self.births.of(dev))):
                    self._first_done.add(dev)
                    self._pending[index] = (now + self.rng.uniform(0, self.plan.first_start_window_s), "first_start")
            for index, (when, why) in list(self._pending.items()):
                if now >= when and index not in self._off:
                    del self._pending[index]
                    self._cut(index, why, now)
            for index, when in list(self._off.items()):
                if now >= when:
                    del self._off[index]
                    with self.fleet._board_lock:
                        self.fleet.boards[index].power_on()

    def _cut(self, index: int, why: str, now: float) -> None:
        dev = Fleet.device_id(index)
        with self.fleet._board_lock:
            board = self.fleet.boards[index]
            if not board.running:
                return
            board.power_cut()
        if why == "download":
            self._left[dev] -= 1
        self.cuts.append((dev, why))
        self._off[index] = now + self.rng.uniform(*self.plan.off_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with self.fleet._board_lock:
            for index in sorted(self._off):
                self.fleet.boards[index].power_on()
        self._off.clear()


@dataclass
class UpdateResult:
    release: fota.Release
    pushes: dict[str, fota.DevicePush]
    push_s: float
    """From the first offer until every push ended (installed, current, failed or timed out)."""
    settled_s: float
    """From the first offer until every board's latest birth showed the expected end."""
    cuts: list[tuple[str, str]] = field(default_factory=list)
    heap: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Device -> (update mode's lowest free heap between chunks, at the download's peaks), last update mode."""

    @property
    def bytes_sent(self) -> int:
        return sum(p.bytes_sent for p in self.pushes.values())

    @property
    def chunks_sent(self) -> int:
        return sum(p.chunks_sent for p in self.pushes.values())


def update_heap(fleet: Fleet) -> dict[str, tuple[int, int]]:
    """Device -> (lowest free heap between chunks, at the download's peaks) from each board's last update mode."""
    out = {}
    for i, board in enumerate(fleet.boards):
        try:
            lines = board.console_path.read_bytes().split(b"\n")
        except FileNotFoundError:
            continue
        for line in lines:
            m = UPDATE_END.match(line)
            if m:
                out[Fleet.device_id(i)] = (int(m.group(2)), int(m.group(3)))
    return out


def confirmed(fw: str, last: str = "confirmed"):
    """An end of an update: the latest birth runs `fw`, confirmed, and its `last` event starts with `last`
    ("confirmed" for an update that passed, "rolled_back" for one that did not)."""
    def done(births: list[Birth]) -> bool:
        return bool(births) and births[-1].fw == fw and births[-1].state == "confirmed" and \
            births[-1].last.startswith(last)
    return done


def push_update(fleet: Fleet, release: fota.Release, births: BirthLog, cuts: CutPlan | None = None,
                done=None, rate_per_s: float = fota.DEFAULT_RATE, chunk_bytes: int = 576,
                timeout_s: float = 300.0) -> UpdateResult:
    """Push `release` to every board of `fleet` (through the gateway the fleet's first site names), with power
    cuts as `cuts` says; then wait until `done(births of the device)` holds for every board (default:
    confirmed(release.version)); the cuts stop then."""
    devices = [Fleet.device_id(i) for i in range(len(fleet.boards))]
    site = fleet.sites[0]
    host, port = site.watch or site.gateway
    cutter = UpdateCutter(fleet, births, cuts, release.version) if cuts is not None else None
    client = fota.MqttClient(host, port, f"ferry-ota-bench-{id(fleet)}", fleet.o.watch_username,
                             fleet.o.watch_password)
    t0 = time.monotonic()
    try:
        pushes = fota.push(client, site.name, devices, release, chunk_bytes=chunk_bytes, rate_per_s=rate_per_s,
                           timeout_s=timeout_s)
        push_s = time.monotonic() - t0
        done = done or confirmed(release.version)
        end = t0 + timeout_s
        while not all(done(births.of(dev)) for dev in devices) and time.monotonic() < end:
            time.sleep(0.2)
        settled_s = time.monotonic() - t0
    finally:
        client.close()
        if cutter is not None:
            cutter.stop()
    return UpdateResult(release, pushes, push_s, settled_s, cutter.cuts if cutter else [], update_heap(fleet))


def mixed_births(births: BirthLog, devices: Sequence[str], factory_fw: str) -> dict[str, list[Birth]]:
    """Device -> births that ran no one version whole: the factory files must say `factory_fw`, an update's
    folder the version the update state names for it (the app's own FW_VERSION against boot_select's)."""
    bad = {}
    for dev in devices:
        wrong = [b for b in births.of(dev)
                 if not ((b.slot == "" and b.fw == factory_fw) or (b.slot in ("a", "b") and b.fw == b.ver))]
        if wrong:
            bad[dev] = wrong
    return bad


def slot_mismatches(fleet: Fleet, release: fota.Release, slot: str = "a") -> dict[str, list[str]]:
    """Device -> files of its `slot` folder that differ from the release (missing, extra or another sha256)."""
    import hashlib

    want = {f.name: f.sha256 for f in release.files}
    bad = {}
    for i, board in enumerate(fleet.boards):
        folder = board.flash_dir / "ota" / slot
        have = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.*py")} \
            if folder.is_dir() else {}
        wrong = sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))
        if wrong:
            bad[Fleet.device_id(i)] = wrong
    return bad
