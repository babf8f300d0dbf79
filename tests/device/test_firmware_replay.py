"""Issues #4 and #13's acceptance test: a 1,000-reading backlog replayed through the whole stack inside
a 64 KB ESP32 heap, on the 32-bit ESP32-like interpreter (`-X heapsize=64K` is 64 KB there: 32-bit
objects, 16-byte GC blocks, stock firmware's frozen umqtt.simple 1.7.0 and asyncio), with the lowest
free heap reported from `gc.mem_free()` and the smallest heap it still runs in (run with -s for the
numbers; docs/device.md quotes them). The TLS replay runs on the 64-bit PyPI interpreter: the
ESP32-like build has no TLS (and mbedTLS allocates outside the MicroPython heap on both).

1. Offline: the board's own firmware (`app.App`: sensor, encoder, outbox) takes 1,000
   readings while no gateway listens (the configured port is closed), faster than
   `sample_ms` allows so the test does not wait 100 s; then the power is cut.
2. Power on with the real `main.py` and the gateway up: boot 2 recovers the outbox, says
   `online` with `queued` 1,000 and replays boot 1's readings in order while it keeps
   sampling. The firmware logs `heap_check()` (gc.collect() then gc.mem_free()) after
   its imports, after opening the outbox, after the session, after the first connect,
   every 100 PUBACKs (`heap: free F low L ...`) and on every stats line.

The board's flash folder is ~150 characters long on purpose: VfsPosix keeps that path on
the board heap, and long paths used to make the firmware fail at boot with MemoryError.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from ferry.hwsim.board import UNIX_HEAP_FOR_64K_ESP32
from ferry.hwsim.micropython import ESP32_LIKE, ESP32_LIKE_HEAP_BYTES, UNIX64
from tests.device.fw_support import (
    Collector, Delivery, TlsGateway, console_lines, device_id, install_firmware, make_board, start_tls_gateway,
)

pytestmark = pytest.mark.integration

BACKLOG = 1000
FLASH_PATH_CHARS = 150
HEAP_FLOOR = 8 * 1024
"""Least free heap after a collection during the replay at a real 64 KB (ESP32-like interpreter): the
margin for sensor drivers, a command's JSON and fragmentation."""
HEAP_LINE = re.compile(r"heap: free after imports (\d+), outbox (\d+), session (\d+)")
FREE_NUMBERS = re.compile(r"(?:heap: free|low|heap_low) (\d+)")
WATCH_LINE = re.compile(r"heap: free (\d+) low (\d+) \(after gc; seq \d+, acked \d+, pending (\d+)\)")

OFFLINE_MAIN = r"""
# Phase 1 (the test's, not a board's main.py): the firmware's own sampling path, no gateway.
import app
from hw import Hardware
from settings import Settings
cfg = Settings.load()
hw = Hardware(cfg.i2c_scl_pin, cfg.i2c_sda_pin)
a = app.App(hw, cfg)
hw.sample = lambda values: True  # the SHT31 shim waits 16 ms per measurement: skip the wait
a.metrics.values[0] = 2150
a.metrics.values[1] = 4500
while a.seq < %d:
    if not a.sample():
        raise SystemExit("sample failed")
    a.ob.poll()
a.ob.flush()
print("BACKLOG", a.seq, a.ob.pending(), a.ob.lost_total(), a.heap_low)
"""


def long_root(tmp_path: Path) -> Path:
    """A folder whose boards' flash paths (`<root>/replay/flash`) are FLASH_PATH_CHARS long."""
    pad = FLASH_PATH_CHARS - len(str(tmp_path / "x" / "replay" / "flash"))
    assert pad > 0, tmp_path
    return tmp_path / ("p" * (pad + 1))


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[TlsGateway]:
    """A gateway with a TLS listener and a password file."""
    with start_tls_gateway(tmp_path / "tls-gateway") as tg:
        yield tg




@dataclass(frozen=True)
class Replay:
    """What one offline-then-replay run measured (gc.mem_free() after gc, bytes)."""

    fresh: tuple[int, int, int]
    """Boot 1: free after the imports, after opening the outbox, after making the session."""
    after_cut: tuple[int, int, int]
    """Boot 2 (after a power cut with the backlog queued): the same three."""
    connected: int
    low: int
    """The lowest free heap any line of boot 2 reported (heap_low included)."""
    during: list[int]
    replay_s: float
    offline_s: float
    boot2_readings: int


def replay(root: Path, firmware: Path, gateway: GatewayProcess, interpreter: str, heap_bytes: int,
           tls_gateway: TlsGateway | None = None, **board: object) -> Replay:
    """Phase 1 offline, a power cut, phase 2 replaying the backlog; asserts every reading arrived once, in order."""
    tls = tls_gateway is not None
    board = make_board(long_root(root), "replay", heap_bytes=heap_bytes, interpreter=interpreter, **board)
    assert len(str(board.flash_dir)) == FLASH_PATH_CHARS
    dev = device_id(board)
    # TLS: the CA on flash, the provisioned password, the TLS listener; else plain MQTT, anonymous.
    online: dict = {"broker_port": gateway.port}
    offline: dict = {"broker_port": 1}
    ca = None
    if tls_gateway is not None:
        ca = tls_gateway.ca_der
        online = {"broker_tls_port": tls_gateway.tls_port, "mqtt_password": tls_gateway.provision(dev)}
        offline = {"broker_tls_port": 1, "mqtt_password": online["mqtt_password"]}
    # Phase 1: offline. Port 1 is closed; outbox_capacity is the default, 1,000.
    install_firmware(board, firmware, ca=ca, sample_ms=100, log_stats_every=10, **offline)
    main_py = (board.flash_dir / "main.py").read_text()
    (board.flash_dir / "main.py").write_text(OFFLINE_MAIN % BACKLOG)
    t0 = time.monotonic()
    board.power_on()
    try:
        assert board.wait_for(lambda: "BACKLOG" in board.console() or "Error" in board.console(), 120), \
            board.console()[-3000:]
    finally:
        board.power_cut()
    offline_s = time.monotonic() - t0
    phase1 = board.console()
    assert "BACKLOG" in phase1, phase1[-3000:]
    taken, pending, lost, _ = map(int, phase1.split("BACKLOG")[1].split()[:4])
    assert (taken, pending, lost) == (BACKLOG, BACKLOG, 0), phase1[-2000:]
    fresh = tuple(map(int, HEAP_LINE.search(phase1).groups()))

    # Phase 2: the real firmware, gateway up.
    install_firmware(board, firmware, ca=ca, sample_ms=100, log_stats_every=10, **online)
    assert (board.flash_dir / "main.py").read_text() == main_py
    collector = Collector(gateway.port) if tls_gateway is None else tls_gateway.collector()
    mark = len(phase1)
    try:
        t1 = time.monotonic()
        board.power_on()
        done = collector.wait_for(lambda: Delivery.of(collector.readings(dev)).count(1) >= BACKLOG
                                  or "Error" in board.console()[mark:], 60)
        replay_s = time.monotonic() - t1
        # A few more boot-2 stats lines after the replay, so heap_low has seen its end.
        n_stats = len(console_lines(board, "stats"))
        board.wait_for(lambda: len(console_lines(board, "stats")) >= n_stats + 2, 10)
        got = Delivery.of(collector.readings(dev))
        births = [s for s in collector.statuses(dev) if s.state.value == "online"]
    finally:
        board.stop()
        collector.close()
    console = board.console()[mark:]
    assert "Error" not in console, console[-3000:]
    assert done, f"boot 1: {got.count(1)} of {BACKLOG} delivered\n" + console[-3000:]
    assert all(m.endswith(", tls") == tls for m in console_lines(board, "mqtt: connected")), console[-3000:]

    # Every reading of the backlog exactly once, in order; boot 2's too.
    assert got.gaps(1) == [] and got.count(1) == BACKLOG and max(got.seqs[1]) == BACKLOG - 1
    assert got.first_arrival_order_ok(1) and got.first_arrival_order_ok(2)
    assert got.gaps(2) == []
    assert got.duplicates() == 0, got.duplicates()  # no link faults here: nothing to resend
    first_birth = next(s for s in births if s.boot == 2)
    assert first_birth.outbox_queued >= BACKLOG and first_birth.outbox_dropped == 0

    after_cut = tuple(map(int, HEAP_LINE.search(console).groups()))
    connected = int(re.search(r"heap: free (\d+) after the first connect", console).group(1))
    low = min(int(m) for m in FREE_NUMBERS.findall(console))
    during = [tuple(map(int, m)) for m in WATCH_LINE.findall(console)]
    assert len(during) >= BACKLOG // 100 - 1 and during[0][2] >= BACKLOG // 2, during  # checked mid-replay
    return Replay(fresh, after_cut, connected, low, [d[0] for d in during], replay_s, offline_s, got.count(2))


def describe(r: Replay, interpreter: str, heap_bytes: int, tls: bool = False) -> str:
    return (f"{interpreter} -X heapsize={heap_bytes // 1024}K{', over TLS' if tls else ''}, flash path "
            f"{FLASH_PATH_CHARS} chars; gc.mem_free() after gc: fresh boot: imports {r.fresh[0]}, outbox "
            f"{r.fresh[1]}, session {r.fresh[2]}; after a power cut with {BACKLOG} queued: imports "
            f"{r.after_cut[0]}, outbox {r.after_cut[1]}, session {r.after_cut[2]}, first connect {r.connected}; "
            f"lowest during the replay {r.low} (peak heap use {heap_bytes - r.low} of {heap_bytes}; free after "
            f"gc every 100 PUBACKs: {r.during}); {BACKLOG} readings replayed in {r.replay_s:.2f} s including "
            f"the boot ({r.boot2_readings} boot-2 readings by the end); offline phase {r.offline_s:.1f} s")


def test_backlog_of_1000_replays_in_order_within_a_64k_esp32_heap(
        tmp_path: Path, firmware_esp32_like: Path, gateway: GatewayProcess, heap_report: Callable[[str], None]) -> None:
    r = replay(tmp_path, firmware_esp32_like, gateway, ESP32_LIKE, ESP32_LIKE_HEAP_BYTES)
    heap_report(describe(r, ESP32_LIKE, ESP32_LIKE_HEAP_BYTES))
    assert r.low >= HEAP_FLOOR, r.low


def test_backlog_of_1000_replays_in_order_over_tls(tmp_path: Path, firmware: Path, tls_gateway: TlsGateway) -> None:
    """The same over TLS, on the 64-bit PyPI interpreter (the ESP32-like build has no TLS): the heap figures
    are the 64-bit port's, printed, not a budget."""
    r = replay(tmp_path, firmware, tls_gateway.gateway, UNIX64, UNIX_HEAP_FOR_64K_ESP32, tls_gateway)
    print("\n" + describe(r, UNIX64, UNIX_HEAP_FOR_64K_ESP32, tls=True))
    assert r.low > 0



SMALLEST_HEAP_STEP = 4 * 1024


def test_smallest_heap_the_replay_runs_in(tmp_path: Path, firmware_esp32_like: Path, gateway: GatewayProcess,
                                          heap_report: Callable[[str], None]) -> None:
    """Down from 64 KB in steps of 4 KB until the replay no longer runs: prints the smallest heap that
    still runs it (one replay takes ~3 s here; the search stops at the first failure)."""
    heap, runs = ESP32_LIKE_HEAP_BYTES, []
    while heap > SMALLEST_HEAP_STEP:
        try:
            # A device id per run: the gateway and its subscriber are shared.
            r = replay(tmp_path / f"h{heap // 1024}", firmware_esp32_like, gateway, ESP32_LIKE, heap,
                       uid_last=heap // 1024 % 256)
        except AssertionError as e:
            errors = [line.strip() for line in str(e).splitlines() if "Error" in line] or [str(e)]
            runs.append((heap, errors[0][:160]))
            break
        runs.append((heap, f"runs, lowest free {r.low}"))
        heap -= SMALLEST_HEAP_STEP
    smallest = min((h for h, outcome in runs if outcome.startswith("runs")), default=None)
    heap_report(f"smallest heap the {BACKLOG}-reading replay runs in on {ESP32_LIKE} (steps of "
          f"{SMALLEST_HEAP_STEP // 1024}K): {None if smallest is None else f'{smallest // 1024}K'}; "
          + "; ".join(f"{h // 1024}K: {outcome}" for h, outcome in runs))
    assert smallest is not None  # it runs at 64 KB at least
