"""A virtual ESP32: the real MicroPython interpreter running device code on a flash folder.

The board side is a set of shim modules (`hw-sim/shims/`: machine, network,
time, ntptime, esp32) that shadow or supply the ESP32's modules on the unix
port. This host side starts the interpreter the way an ESP32 boots (boot.py,
then main.py, from the board's own flash folder mounted at `/`) and plays the
hardware the shims cannot: the watchdog that resets a board that stops feeding
it, the deep-sleep timer that wakes it with RTC memory kept, resets, and power
cuts that lose RTC memory and the clock.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ferry.process import wait_until
from ferry.hwsim.micropython import ESP32_LIKE, ESP32_LIKE_HEAP_BYTES, INTERPRETERS, UNIX64, interpreter

log = logging.getLogger(__name__)

SHIMS_DIR = Path(__file__).resolve().parent / "shims"
EPOCH_2000_UNIX_S = 946_684_800
UNIX_HEAP_FOR_64K_ESP32 = 128 * 1024
"""The default heap on the 64-bit PyPI interpreter. Not an ESP32's 64 KB: its bytecode does not shrink by
half on 32 bits; the ESP32-like interpreter at `-X heapsize=64K` is one (docs/virtual-board.md)."""
CHIPS = ("esp32", "esp32s3", "esp32c3")
"""Chip profiles: which GPIOs exist and which have an ADC (the `machine` shim's tables)."""
FROZEN_MOUNT = "/.frozen-image"
"""Where the board sees `BoardConfig.frozen_dir` (read-only), on `sys.path` between `.frozen` and `/lib`."""


class ResetCause(enum.IntEnum):
    """`machine.reset_cause()` values of ESP32 MicroPython."""

    PWRON = 1
    HARD = 2
    WDT = 3
    DEEPSLEEP = 4
    SOFT = 5


@dataclass(frozen=True, slots=True)
class BoardConfig:
    """One virtual board's hardware."""

    uid: bytes = b"\x24\x0a\xc4\x00\x00\x01"
    """What `machine.unique_id()` returns (an ESP32's base MAC)."""
    sensor_seed: int = 1
    """Seed of the simulated sensor signals and their injected anomalies."""
    heap_bytes: int | None = None
    """Interpreter heap (`-X heapsize`). None: 64 KB on `esp32-like` (an ESP32's heap), 128 KB on `unix64`
    (UNIX_HEAP_FOR_64K_ESP32: room for 64-bit objects, not a measure of an ESP32's budget)."""
    interpreter: str = UNIX64
    """One of `INTERPRETERS` (ferry.hwsim.micropython): `unix64`, the 64-bit PyPI unix port (TLS; the
    default), or `esp32-like`, the 32-bit build with an ESP32's object sizes, 31-bit small ints and
    stock firmware's frozen modules (umqtt.simple 1.7.0, asyncio), for heap measurements."""
    shims_in_heap: bool = False
    """`esp32-like` only. False: `heap_bytes` is the firmware's heap as on an ESP32, where machine,
    network and time are C modules in ROM: the interpreter gets SHIM_ALLOWANCE_BYTES more, and what
    the shims leave of it beyond a bare interpreter's free heap at `heap_bytes` is held by one ballast
    buffer. True: the shims' bytecode (13-17 KB) is charged to `heap_bytes`, a plain `-X heapsize`."""
    wifi_ssid: str = "ferry-sim"
    """The access point the board can associate with."""
    rssi_dbm: int = -60
    """Signal strength reported while associated."""
    chip: str = "esp32"
    """One of `CHIPS`: `machine.Pin` and `machine.ADC` raise `ValueError("invalid pin")` as that
    chip's MicroPython does for a GPIO it lacks (e.g. no ADC on pin 35 of an ESP32-S3 or -C3)."""
    frozen_dir: Path | None = None
    """Modules the firmware image freezes, as a stock ESP32 image freezes umqtt.simple: found
    after `.frozen` and before `/lib`, so they shadow the same names in `/lib`. None: only the
    interpreter's own frozen modules."""

    def __post_init__(self) -> None:
        if self.chip not in CHIPS:
            raise ValueError(f"chip: one of {' '.join(CHIPS)}, got {self.chip!r}")
        if self.interpreter not in INTERPRETERS:
            raise ValueError(f"interpreter: one of {' '.join(INTERPRETERS)}, got {self.interpreter!r}")
        if self.heap_bytes is None:
            heap = ESP32_LIKE_HEAP_BYTES if self.interpreter == ESP32_LIKE else UNIX_HEAP_FOR_64K_ESP32
            object.__setattr__(self, "heap_bytes", heap)


@dataclass(slots=True)
class BoardEvent:
    """Something that happened to the board, for tests and the fleet's counters."""

    at_s: float
    kind: str
    detail: str = ""


@dataclass(slots=True)
class _Run:
    process: subprocess.Popen
    control: int
    watchdog_ms: int | None = None
    last_feed: float = 0.0
    request: bytes = b""
    killed_for: ResetCause | None = None


SETUP = """
import sys
sys.path[:0] = [{shims!r}]
import _board, machine, time, network, ntptime, esp32, sensor_model
import vfs, os
vfs.mount(vfs.VfsPosix({flash!r}), "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
"""
"""The board's setup: shims first, then its flash folder at `/` and an ESP32's `sys.path`."""

FROZEN_SETUP = """
vfs.mount(vfs.VfsPosix({frozen!r}), {mount!r}, readonly=True)
sys.path.insert(2, {mount!r})
"""
"""With `BoardConfig.frozen_dir`: the image's frozen modules, after `.frozen`, before `/lib`. A real
image runs them from flash as bytecode; here they load into the heap like any module."""

BOOT_FILES = """
for _name in ("boot.py", "main.py"):
    try:
        _source = open(_name).read()
    except OSError:
        continue
    exec(compile(_source, _name, "exec"), {"__name__": "__main__"})
"""


SHIM_ALLOWANCE_BYTES = 32 * 1024
"""More heap than `heap_bytes` for an `esp32-like` board whose shims stay out of its budget."""

ROM_SHIMS = """
import gc
gc.collect()
_rom = gc.mem_free() - {free}  # what an ESP32 keeps in ROM (machine, network, time) is not the firmware's
if _rom < 0:
    raise MemoryError("hw-sim: the shims take more than SHIM_ALLOWANCE_BYTES ({allowance})")
_rom = bytearray(_rom)
"""
"""After the shims are imported: hold what is free beyond a bare interpreter's free heap at `heap_bytes`."""

_bare_free: dict[tuple[str, int], int] = {}


def bare_free_bytes(name: str, heap_bytes: int) -> int:
    """gc.mem_free() after gc.collect() of a bare interpreter `name` at `-X heapsize=heap_bytes` (cached)."""
    key = (name, heap_bytes)
    if key not in _bare_free:
        out = subprocess.run([interpreter(name), "-X", f"heapsize={heap_bytes}", "-c",
                              "import gc\ngc.collect()\nprint(gc.mem_free())"],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=True)
        _bare_free[key] = int(out.stdout.split()[-1])
    return _bare_free[key]


def process_heap_bytes(config: BoardConfig) -> int:
    """The interpreter's `-X heapsize` for this board."""
    if config.interpreter == ESP32_LIKE and not config.shims_in_heap:
        return config.heap_bytes + SHIM_ALLOWANCE_BYTES
    return config.heap_bytes


def board_setup(config: BoardConfig, flash_dir: Path) -> str:
    """MicroPython source that makes the interpreter this board (shims, flash, frozen modules)."""
    code = SETUP.format(shims=str(SHIMS_DIR), flash=str(flash_dir))
    if config.interpreter == ESP32_LIKE and not config.shims_in_heap:
        mount = code.index("import vfs, os")
        ballast = ROM_SHIMS.format(free=bare_free_bytes(config.interpreter, config.heap_bytes),
                                   allowance=SHIM_ALLOWANCE_BYTES)
        code = code[:mount] + ballast.lstrip("\n") + code[mount:]
    if config.frozen_dir is not None:
        code += FROZEN_SETUP.format(frozen=str(Path(config.frozen_dir).resolve()), mount=FROZEN_MOUNT)
    return code


class VirtualBoard:
    """One board: a flash folder, RTC and clock state, and the interpreter process running it."""

    def __init__(self, board_dir: Path, config: BoardConfig = BoardConfig()) -> None:
        self.config = config
        self.dir = board_dir
        self.flash_dir = board_dir / "flash"
        self.state_dir = board_dir / "state"
        self.console_path = board_dir / "console.log"
        self.events: list[BoardEvent] = []
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        (self.flash_dir / "lib").mkdir(exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_state("uid", config.uid)
        self._write_state("sensor_seed", str(config.sensor_seed).encode())
        self._write_state("chip", config.chip.encode())
        self.set_wifi(True)
        self._uarts: dict[int, tuple[int, int]] = {}  # UART id -> (pty master, slave) descriptors
        self.set_sensor_faults()

    # ------------------------------------------------------------------ host controls

    def _write_state(self, name: str, data: bytes) -> None:
        tmp = self.state_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.state_dir / name)

    def set_wifi(self, up: bool, rssi_dbm: int | None = None) -> None:
        """Bring the simulated access point up or down (read by `network.WLAN` on every call)."""
        rssi = self.config.rssi_dbm if rssi_dbm is None else rssi_dbm
        path = self.state_dir / "wlan"
        text = f"up {rssi} {self.config.wifi_ssid}" if up else "down"
        # Written in place: the board keeps this file open from before its flash was mounted.
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.write(text.encode().ljust(64))

    def attach_uart(self, uart_id: int) -> str:
        """Wire `machine.UART(uart_id)` to a new pty; returns the pty's device path for a sensor model
        (pyserial, e.g. pms5003_model). The board reads and writes the master side, inherited at each
        boot; takes effect at the next boot. Raw mode: the bytes pass unchanged."""
        import fcntl
        import tty

        master, slave = os.openpty()
        tty.setraw(slave)
        fcntl.fcntl(master, fcntl.F_SETFL, fcntl.fcntl(master, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._uarts[uart_id] = (master, slave)
        self._write_state("uarts", " ".join(f"{u}:{m}" for u, (m, _) in self._uarts.items()).encode())
        return os.ttyname(slave)

    def set_sensor_faults(self, *names: str) -> None:
        """Unplug sensors at once (`sht31`, `bme280`, `ds18b20`: no answer on their bus) or break one
        (`ds18b20_crc`: a wrong scratchpad CRC), or silence the NTP server (`ntp`); no names: all
        plugged in and well (shims/_board.fault)."""
        path = self.state_dir / "sensor_faults"
        with open(path, "r+b" if path.exists() else "wb") as f:  # in place: the board keeps it open
            f.write(" ".join(names).encode().ljust(64))

    def power_on(self) -> None:
        """Cold boot: RTC memory empty, clock at 2000-01-01, then boot.py and main.py run."""
        self._write_state("rtc.bin", b"")
        self._write_state("clock", b"%24.6f" % (EPOCH_2000_UNIX_S - time.time()))
        self._write_state("boot_wall_s", b"%.3f" % time.time())
        self._stopping.clear()
        self._thread = threading.Thread(target=self._supervise, args=(ResetCause.PWRON,),
                                        name=f"board-{self.dir.name}", daemon=True)
        self._thread.start()

    def power_cut(self) -> None:
        """SIGKILL the interpreter at whatever it is doing; RTC memory and clock are lost."""
        self._stop(kill=True)
        self._event("power_cut")

    def stop(self) -> None:
        """Stop the board for good (end of a test), like unplugging it."""
        self._stop(kill=True)
        for fds in self._uarts.values():
            for fd in fds:
                os.close(fd)
        self._uarts.clear()

    def _stop(self, kill: bool) -> None:
        self._stopping.set()
        with self._lock:
            run = self._run
        if run is not None and run.process.poll() is None and kill:
            os.killpg(run.process.pid, signal.SIGKILL)
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    @property
    def running(self) -> bool:
        with self._lock:
            return self._run is not None and self._run.process.poll() is None

    @property
    def pid(self) -> int | None:
        """The running interpreter's process id (None while the board is off)."""
        with self._lock:
            return self._run.process.pid if self._run is not None and self._run.process.poll() is None else None

    def boots(self) -> list[str]:
        """Reset causes of every boot so far, in order."""
        return [e.detail for e in self.events if e.kind == "boot"]

    def console(self) -> str:
        return self.console_path.read_text(errors="replace") if self.console_path.exists() else ""

    def wait_for(self, predicate, timeout_s: float = 30.0, poll_s: float = 0.05) -> bool:
        return wait_until(predicate, timeout_s, poll_s)

    # ------------------------------------------------------------------ supervisor

    def _event(self, kind: str, detail: str = "") -> None:
        self.events.append(BoardEvent(time.time(), kind, detail))
        log.debug("board %s: %s %s", self.dir.name, kind, detail)

    def _spawn(self, cause: ResetCause) -> _Run:
        self._write_state("reset_cause", str(int(cause)).encode())
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, FERRY_BOARD_STATE=str(self.state_dir), FERRY_BOARD_CTL=str(write_fd))
        code = board_setup(self.config, self.flash_dir) + BOOT_FILES
        with open(self.console_path, "ab") as console:
            process = subprocess.Popen(
                [interpreter(self.config.interpreter), "-X", f"heapsize={process_heap_bytes(self.config)}", "-c", code],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=env,
                pass_fds=(write_fd, *(m for m, _ in self._uarts.values())), start_new_session=True)
        os.close(write_fd)
        self._event("boot", cause.name.lower())
        return _Run(process, read_fd)

    def _supervise(self, cause: ResetCause) -> None:
        previous: _Run | None = None
        while not self._stopping.is_set():
            run = self._spawn(cause)
            if cause is ResetCause.SOFT and previous is not None:
                # A soft reset restarts MicroPython, not the chip: its watchdog keeps counting.
                run.watchdog_ms, run.last_feed = previous.watchdog_ms, previous.last_feed
            previous = run
            with self._lock:
                self._run = run
            try:
                self._pump(run)
            finally:
                os.close(run.control)
            run.process.wait()
            if self._stopping.is_set():
                break
            next_cause = self._after_exit(run)
            if next_cause is None:
                self._event("halted", f"exit status {run.process.returncode}")
                break
            cause = next_cause
        with self._lock:
            self._run = None

    def _pump(self, run: _Run) -> None:
        """Read the board's control messages until it exits; fire the watchdog when it starves."""
        buffer = b""
        poller = select.poll()  # not select.select: a fleet's descriptors go past 1024
        poller.register(run.control, select.POLLIN)
        while True:
            timeout_ms = None
            if run.watchdog_ms is not None:
                timeout_ms = max(0.0, (run.last_feed + run.watchdog_ms / 1000 - time.monotonic()) * 1000)
            if not poller.poll(timeout_ms):
                self._event("watchdog", f"not fed for {run.watchdog_ms} ms")
                run.killed_for = ResetCause.WDT
                os.killpg(run.process.pid, signal.SIGKILL)
                return
            data = os.read(run.control, 4096)
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._on_control(run, line)

    def _on_control(self, run: _Run, line: bytes) -> None:
        kind, arg = line[:1], line[1:]
        if kind == b"F":
            run.last_feed = time.monotonic()
        elif kind == b"W":
            run.watchdog_ms = int(arg)
            run.last_feed = time.monotonic()
        elif kind in (b"S", b"R", b"s") and not run.request:
            # A chip resets at once: nothing after machine.reset() may run, not even a bare except.
            run.request = line
            try:
                os.killpg(run.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _after_exit(self, run: _Run) -> ResetCause | None:
        if run.killed_for is not None:
            return run.killed_for
        request = run.request
        if request.startswith(b"S"):
            sleep_s = int(request[1:]) / 1000
            self._event("deepsleep", f"{sleep_s:.3f} s")
            if self._stopping.wait(sleep_s):
                return None
            return ResetCause.DEEPSLEEP
        if request == b"R":
            return ResetCause.HARD
        if request == b"s":
            return ResetCause.SOFT
        return None
