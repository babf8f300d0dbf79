"""The firmware's heap on a virtual board with a 64 KB ESP32 heap: the 32-bit ESP32-like interpreter
(32-bit objects, 31-bit small ints) at `-X heapsize=64K`, the firmware compiled by its own mpy-cross:
free heap at steady state, bytes allocated per reading (an int >= 2**30 would show here), CPU use.
The numbers are printed (run with -s) and quoted in docs/device.md.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from ferry.hwsim.micropython import ESP32_LIKE, ESP32_LIKE_HEAP_BYTES
from tests.device.fw_support import (
    Collector, Delivery, console_lines, device_id, install_firmware, make_board,
)

pytestmark = pytest.mark.integration

FREE_HEAP_BUDGET = 8 * 1024  # free at steady state of a 64 KB heap (test_firmware_replay.HEAP_FLOOR)
STATS = re.compile(r"stats seq (\d+) free (\d+) alloc_per_reading (-?\d+)")


def cpu_seconds(flash_dir: Path) -> float:
    """utime + stime of the interpreter running the board with this flash folder."""
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        if str(flash_dir).encode() in cmdline and b"micropython" in cmdline:  # either interpreter
            fields = stat.rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick
    raise AssertionError("board process not found")


def test_steady_state_heap_and_cpu(tmp_path: Path, firmware_esp32_like: Path, gateway: GatewayProcess,
                                   heap_report: Callable[[str], None]) -> None:
    board = make_board(tmp_path, "heap", interpreter=ESP32_LIKE)
    assert board.config.heap_bytes == ESP32_LIKE_HEAP_BYTES
    install_firmware(board, firmware_esp32_like, broker_port=gateway.port, sample_ms=100, log_stats_every=25,
                     outbox_flush_every=5, outbox_flush_interval_ms=500)
    collector = Collector(gateway.port)
    try:
        board.power_on()
        assert board.wait_for(lambda: len(console_lines(board, "stats")) >= 2, 20), board.console()[-2000:]
        cpu0, t0 = cpu_seconds(board.flash_dir), time.monotonic()
        time.sleep(3.0)
        cpu = (cpu_seconds(board.flash_dir) - cpu0) / (time.monotonic() - t0)
        assert board.wait_for(lambda: len(console_lines(board, "stats")) >= 3, 20)
        stats = [tuple(map(int, STATS.search(line).groups())) for line in console_lines(board, "stats")]
        got = Delivery.of(collector.readings(device_id(board)))
    finally:
        board.stop()
        collector.close()
    free = [s[1] for s in stats]
    heap_report(f"heap ({ESP32_LIKE}, a {ESP32_LIKE_HEAP_BYTES // 1024} KB heap, firmware as .mpy): "
          f"gc.mem_free() at seq {[s[0] for s in stats]}: {free}; allocated per reading with the "
          f"hw-sim shims: {[s[2] for s in stats[1:]]} B; CPU {cpu * 100:.1f}% of a core at 10 readings/s; "
          f"{got.count(1)} readings delivered")
    assert min(free) >= FREE_HEAP_BUDGET
    assert max(free) - min(free) < 2048  # steady: nothing accumulates
    assert cpu < 0.5  # a busy-polling loop would use a whole core


ALLOC_MAIN = r"""
# Measures what the firmware itself allocates per reading: sensors, RTC memory and the
# watchdog are replaced by allocation-free fakes (the hw-sim shims allocate; an ESP32's
# built-in modules do not).
import gc, micropython, time
import app
from hw import Hardware
from settings import Settings
gc.collect()

class RamRTC:  # machine.RTC().memory(buf) on an ESP32 copies into RTC memory
    def __init__(self):
        self.data = b""
    def memory(self, data=None):
        if data is None:
            return self.data
        self.data = data

hw = Hardware()
hw.rtc_memory = lambda: RamRTC()
a = app.App(hw, Settings.load())
print("connected", a.connect(1000))
hw.sample = lambda values: True
hw.battery_mv = lambda: 4000
hw.rssi = lambda: -60
hw.feed = lambda: None
s = a.session

def loop():  # App.run's body, without the watchdog
    now = time.ticks_ms()
    if time.ticks_diff(now, a.next_sample) >= 0:
        a._sample_due(now)
    f = a._flush_due()
    s.service(time.ticks_ms())
    a._housekeeping()
    a._sleep(f)

a.cfg.sample_ms = 10  # below what settings allow, to measure many readings quickly
while a.seq < 50:  # warm up: segment files opened, every buffer allocated
    loop()
gc.collect()
seq0, t0 = a.seq, micropython.mem_total()
while a.seq < seq0 + 300:
    loop()
per_reading = (micropython.mem_total() - t0) // (a.seq - seq0)
gc.collect()
t0 = micropython.mem_total()
for _ in range(50):
    a._encode()
encoder = (micropython.mem_total() - t0) // 50
t0 = micropython.mem_total()
for _ in range(50):
    a.ob.read_into(0, s._record)
read_into = (micropython.mem_total() - t0) // 50
print("ALLOC", per_reading, encoder, read_into, s.acked, gc.mem_free())

# Backlog replay rate: 300 readings on flash, then publish them all (window: settings.inflight).
for _ in range(300):
    a.sample()
a.ob.flush()
acked0, t0 = s.acked, time.ticks_ms()
while a.ob.pending() and s.up:
    s.service(time.ticks_ms())
    s.wait(0 if s.can_send() else s.deadline_ms(time.ticks_ms()))
print("DRAIN", s.acked - acked0, time.ticks_diff(time.ticks_ms(), t0))
"""


def test_firmware_allocations_per_reading(tmp_path: Path, firmware_esp32_like: Path,
                                          gateway: GatewayProcess) -> None:
    board = make_board(tmp_path, "alloc", interpreter=ESP32_LIKE, heap_bytes=2 * ESP32_LIKE_HEAP_BYTES)
    install_firmware(board, firmware_esp32_like, broker_port=gateway.port, sample_ms=100)
    (board.flash_dir / "main.py").write_text(ALLOC_MAIN)
    try:
        board.power_on()
        assert board.wait_for(lambda: "DRAIN" in board.console(), 60), board.console()[-3000:]
    finally:
        board.stop()
    per_reading, encoder, read_into, acked, free = map(int, board.console().split("ALLOC")[1].split()[:5])
    drained, drain_ms = map(int, board.console().split("DRAIN")[1].split()[:2])
    print(f"\nbacklog replay, QoS 1, 4 in flight, TCP_NODELAY: {drained} readings in {drain_ms} ms "
          f"({drained * 1000 // max(drain_ms, 1)}/s)")
    assert drained >= 300
    print(f"\nallocated per reading (sample, encode, append, publish, PUBACK, ack, sleep): {per_reading} B; "
          f"of which ReadingEncoder.encode {encoder} B (its frame goes to the heap), outbox.read_into "
          f"{read_into} B (the memoryview it returns), the payload view passed to outbox.append 32 B; "
          f"{acked} readings acknowledged; free {free}")
    assert acked >= 200
    # Everything beyond those three is what the flushes allocate (one memoryview slice per
    # 5-10 readings, a file object per new segment): a few bytes per reading.
    assert per_reading - encoder - read_into - 32 <= 32
