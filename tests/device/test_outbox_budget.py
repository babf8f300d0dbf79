"""The outbox's budgets on the real MicroPython interpreter: heap, allocations, flash writes per reading.

The numbers printed here (run with -s) are the ones docs/outbox.md quotes.
Flash cost is measured on real littlefs (vfs.VfsLfs2, as on the ESP32) over a
block device that counts 4 KiB erases and programmed bytes.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from ferry.hwsim.micropython import ESP32_LIKE, ESP32_LIKE_HEAP_BYTES, esp32_like_mpy_cross, run_code
from tests.device.fw_support import esp32_like
from tests.device.helpers import DEVICE_DIR, MP_PATH, REPO_ROOT, lfs_setup, run_mp
from tests.vectors import load as load_vectors

pytestmark = pytest.mark.integration

CANONICAL = [v["payload"] for v in load_vectors("contract/readings.json")["valid"] if v["canonical"]]


HEAP_RUN = """
import sys, gc, json
sys.path.insert(0, {first!r})
gc.collect()
start = gc.mem_free()
import outbox
import outbox_open  # Outbox()'s start-up code, dropped after it: only its qstrs stay (counted as the module's)
del sys.modules["outbox_open"]
from fakertc import FileRTC
gc.collect()
imported = gc.mem_free()
ob = outbox.Outbox({prefix!r}, capacity=1000, rtc=FileRTC({rtc!r}))
buf = ob.record_buffer()
gc.collect()
print(json.dumps({{"start": start, "imported": imported, "setup": gc.mem_free(), "file": outbox.__file__}}))
"""


@pytest.mark.parametrize("form", ["py", "mpy"])
def test_heap_after_setup_fits_a_64k_esp32(tmp_path: Path, form: str) -> None:
    """On the 32-bit ESP32-like interpreter with a 64 KB heap (docs/device.md: 32-bit objects and
    bytecode, as on an ESP32), the outbox module and an outbox of capacity 1,000."""
    esp32_like()
    first = DEVICE_DIR
    if form == "mpy":  # precompiled, as `ferry flash` copies it; bytecode still loads into RAM
        first = tmp_path / "mpy"
        first.mkdir()
        for module in ("outbox", "outbox_open"):
            subprocess.run([str(esp32_like_mpy_cross()), "-o", str(first / f"{module}.mpy"),
                            str(DEVICE_DIR / f"{module}.py")], check=True, timeout=60)
    result = run_code(HEAP_RUN.format(first=str(first), prefix=str(tmp_path / "ob"), rtc=str(tmp_path / "rtc")),
                      sys_path=MP_PATH, heap_bytes=ESP32_LIKE_HEAP_BYTES, interpreter_name=ESP32_LIKE)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(first)) and out["file"].endswith("." + form)
    code, instance = out["start"] - out["imported"], out["imported"] - out["setup"]
    print(f"\nheap ({ESP32_LIKE}, {ESP32_LIKE_HEAP_BYTES} B, outbox.{form}): free at start {out['start']}, "
          f"module {code} B, outbox (capacity 1000, defaults) {instance} B, free after setup {out['setup']}")
    assert instance < 5 * 1024  # 10 staged slots of 256 B, two slot buffers, the state
    assert code + instance < 16 * 1024


def test_hot_path_allocations(tmp_path: Path) -> None:
    out = run_mp(f"""
import json, micropython, outbox
class RamRTC:  # machine.RTC().memory(buf) copies into RTC memory: no heap
    def __init__(self):
        self.data = b""
    def memory(self, data=None):
        if data is None:
            return self.data
        self.data = data
ob = outbox.Outbox({str(tmp_path / 'ob')!r}, capacity=1000, flush_every=10, flush_interval_ms=600000,
                   rtc=RamRTC())
payload = {CANONICAL[0].encode()!r}
buf = ob.record_buffer()
def measure(fn, n):
    t0 = micropython.mem_total()
    for i in range(n):
        fn(i)
    return (micropython.mem_total() - t0) / n
ob.append(1, 0, payload)
staged = measure(lambda i: ob.append(1, i + 1, payload), 8)
total = measure(lambda i: ob.append(2, i, payload), 200)
ob.read_into(0, buf)
read = measure(lambda i: ob.read_into(0, buf), 50)
ack = measure(lambda i: ob.ack_oldest(), 30)  # within one segment file
acked = ob.tail
ob.flush()
micropython.heap_lock()  # any allocation now raises MemoryError
try:
    ob.append(3, 0, payload)
    ob.ack_oldest()
    locked = "ok"
except MemoryError:
    locked = "allocated"
micropython.heap_unlock()
print(json.dumps({{"staged": staged, "with_flushes": total, "read": read, "ack": ack, "acked": acked,
                  "locked": locked}}))
""")
    print(f"\nheap allocated per call (unix port): append {out['staged']:.0f} B, append incl. its share "
          f"of flushes {out['with_flushes']:.1f} B, read_into {out['read']:.0f} B, ack {out['ack']:.0f} B")
    assert out["acked"] == 30
    assert out["locked"] == "ok"  # append (staged) and ack run with the heap locked
    assert out["staged"] == 0 and out["ack"] == 0
    assert out["with_flushes"] <= 16  # a memoryview slice per flush, a file object per segment
    assert out["read"] <= 32  # the returned memoryview slice


def test_every_canonical_reading_round_trips_byte_for_byte(tmp_path: Path) -> None:
    payloads = [p.encode() for p in CANONICAL] + [b"x" * 1024]
    out = run_mp(f"""
import json, outbox
ob = outbox.Outbox({str(tmp_path / 'ob')!r}, capacity=16, slot_size=1024 + outbox.HEADER_SIZE)
for i, p in enumerate({payloads!r}):
    ob.append(4294967295, 4294967295 - i, p)
ob.close()
ob = outbox.Outbox({str(tmp_path / 'ob')!r}, capacity=16, slot_size=1024 + outbox.HEADER_SIZE)
buf = ob.record_buffer()
got = []
for i in range(ob.pending()):
    got.append([ob.read_into(i, buf) == {payloads!r}[i], ob.rec_boot, ob.rec_seq])
print(json.dumps(got))
""")
    assert out == [[True, 4294967295, 4294967295 - i] for i in range(len(payloads))]
    assert max(len(p) for p in CANONICAL) <= 256 - 20  # the default slot holds every canonical reading


FLASH_RUN = """
import json, outbox
from fakertc import FileRTC
payload = {payload!r}
ob = outbox.Outbox('/fl/ob', capacity=1000, rtc=FileRTC({rtc!r}), flush_every={flush_every},
                   count_losses={count_losses})
bd.erases = bd.progs = bd.prog_bytes = 0
buf = ob.record_buffer()
for s in range({n}):
    ob.append(1, s, payload)
    while ob.pending():
        ob.read_into(0, buf)
        ob.ack_oldest()
print(json.dumps({{"erases": bd.erases, "progs": bd.progs, "prog_bytes": bd.prog_bytes,
                  "record_syncs": ob.flash_writes, "record_bytes": ob.flash_bytes,
                  "state_writes": ob.state_writes, "state_bytes": ob.state_bytes}}))
"""


@pytest.mark.parametrize(("flush_every", "count_losses"), [(10, True), (10, False), (1, False)])
def test_flash_writes_per_reading_on_littlefs(tmp_path: Path, flush_every: int, count_losses: bool) -> None:
    n = 600
    out = run_mp(lfs_setup(tmp_path, blocks=128) + FLASH_RUN.format(
        payload=CANONICAL[0].encode(), rtc=str(tmp_path / "rtc"), flush_every=flush_every,
        count_losses=count_losses, n=n))
    per = {k: v / n for k, v in out.items()}
    print(f"\nlittlefs, flush_every={flush_every}, count_losses={count_losses}, per reading: "
          f"{per['erases']:.3f} erases (4 KiB), {per['prog_bytes']:.0f} B programmed in {per['progs']:.2f} programs; "
          f"outbox: {per['record_syncs']:.2f} record syncs ({per['record_bytes']:.0f} B), "
          f"{per['state_writes']:.2f} state writes ({per['state_bytes']:.0f} B)")
    assert per["record_syncs"] == pytest.approx(1 / flush_every) and per["record_bytes"] == 256
    if count_losses:
        assert per["state_writes"] == pytest.approx(1.1, abs=0.02)  # every append, and every 10th ack
        assert per["erases"] < 0.3
    elif flush_every == 10:
        assert per["state_writes"] < 0.15
        assert per["erases"] < 0.2
    else:
        assert per["erases"] > 0.5  # what batching saves


def test_littlefs_mid_file_writes_cost_more_than_segment_appends(tmp_path: Path) -> None:
    """Why segments: littlefs copies the rest of a file after a write in its middle."""
    out = run_mp(lfs_setup(tmp_path, blocks=256) + """
import json
slot, batch = 256, bytearray(2560)
with open('/fl/ring', 'wb') as f:  # one preallocated 1,000-slot ring file
    for _ in range(100):
        f.write(batch)
bd.erases = 0
f = open('/fl/ring', 'r+b')
for k in range(60):
    f.seek(k * 2560)
    f.write(batch)
    f.flush()
f.close()
ring = bd.erases
bd.erases = 0
for k in range(60):  # the outbox's way: append to segment files of 32 slots
    if k % 3 == 0:
        if k:
            f.close()
        f = open('/fl/seg%d' % (k // 3 % 4), 'wb')
    f.write(batch)
    f.flush()
f.close()
print(json.dumps({"ring": bd.erases and ring, "segments": bd.erases}))
""")
    ring, segments = out["ring"] / 600, out["segments"] / 600
    print(f"\nlittlefs erases per reading, batches of 10: in-place ring file {ring:.3f}, segment appends {segments:.3f}")
    assert ring > 5 * segments


def _settings_default(name: str) -> int:
    """A board setting's default, read from device/settings.py's schema (MicroPython source)."""
    match = re.search(rf'\("{name}", "int", (\d+),', (DEVICE_DIR / "settings.py").read_text())
    assert match, name
    return int(match.group(1))


def test_flash_wear_at_the_firmware_defaults_is_what_the_docs_quote(tmp_path: Path) -> None:
    """The firmware flushes after `outbox_flush_every` readings or `outbox_flush_interval_ms`,
    whichever comes first; at the default sample interval the time limit comes first, so a
    flush holds this many readings (1 at 10 s / 5 s: no batching). docs/outbox.md quotes the
    erases per reading measured here for the defaults, not the batched figure."""
    sample_ms = _settings_default("sample_ms")
    per_flush = max(1, min(_settings_default("outbox_flush_every"),
                           _settings_default("outbox_flush_interval_ms") // sample_ms))
    n = 300
    out = run_mp(lfs_setup(tmp_path, blocks=128) + FLASH_RUN.format(
        payload=CANONICAL[0].encode(), rtc=str(tmp_path / "rtc"), flush_every=per_flush, count_losses=True, n=n))
    erases = out["erases"] / n
    print(f"\nfirmware defaults (sample_ms {sample_ms}, {per_flush} reading(s) per flush, count_losses): "
          f"{erases:.3f} erases per reading")
    row = re.search(r"\| firmware defaults \(`sample_ms` (\d+), `outbox_flush_interval_ms` (\d+)\) \| ([\d.]+) \|",
                    (REPO_ROOT / "docs" / "outbox.md").read_text())
    assert row, "docs/outbox.md has no row for the firmware's defaults"
    assert (int(row.group(1)), int(row.group(2))) == (sample_ms, _settings_default("outbox_flush_interval_ms"))
    assert float(row.group(3)) == pytest.approx(erases, rel=0.15)
