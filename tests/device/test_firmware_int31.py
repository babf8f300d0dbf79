"""31-bit safety: the hot path never makes an int of 2**30 or more, a heap object on an ESP32 (its small
ints have 31 bits). Run on the 32-bit ESP32-like interpreter, which has the same limit (the 64-bit one
hides it), under `micropython.heap_lock()`, where any allocation raises MemoryError:

- the reading encoder with boot, seq and seconds since 2000 at 2**30 - 1 (a timestamp of ~1.07e12 ms);
- the outbox's record CRC (built for append, checked by read_into and the start-up scan) and its state
  CRC (written to RTC memory on every append and ack), with payloads whose CRC-32 is >= 2**30 (three
  in four are): `binascii.crc32` returns such a CRC as a big int, so the old code allocated there.

The CRC must stay zlib's CRC-32 of the same bytes (the on-flash format is unchanged): checked against
Python's zlib on the host.
"""

from __future__ import annotations

import json
import subprocess
import zlib
from pathlib import Path

from ferry.hwsim.micropython import DEVICE_LIB_DIR, prelude
from tests.device.fw_support import DEVICE_DIR, esp32_like

LIMIT = 2**30
EPOCH_2000_UNIX_S = 946_684_800

CODE = r"""
import json, micropython, os, sys
import outbox, reading

class RamRTC:  # machine.RTC().memory(buf) on an ESP32 copies into RTC memory: no heap
    def __init__(self):
        self.data = b""
    def memory(self, data=None):
        if data is None:
            return self.data
        self.data = data

def locked(fn):
    # fn() under heap_lock (no *args: that tuple would be an allocation of its own): "alloc" when it needed the heap.
    micropython.heap_lock()
    try:
        r = fn()
    except MemoryError:
        r = "alloc"
    micropython.heap_unlock()
    return r

assert sys.maxsize == 2**30 - 1 or sys.maxsize == 2**31 - 1
out = {"records": [], "state": [], "encode": None}
enc = reading.ReadingEncoder(b"esp32-240ac4000001")
metrics = reading.MetricSet([b"temp_c", b"rh_pct"], [2, 2])
metrics.values[0] = 2150
metrics.values[1] = -4500
big = 2**30 - 1  # the largest small int: its arithmetic must stay below 2**30
n = locked(lambda: enc.encode(big, big, big, 999, True, metrics, 4200, -60))
out["encode"] = [n, bytes(enc.buf[:n]).decode() if n != "alloc" else None]

ob = outbox.Outbox(PREFIX, capacity=100, flush_every=10, flush_interval_ms=600000, rtc=RamRTC())
buf = ob.record_buffer()
for i in range(12):
    payload = b'{"v":1,"seq":%d,"m":{"t":%d}}' % (i, i * 7919)
    ob._mark_boot = 3
    ob._mark_seq = i
    r = locked(lambda: ob._build(payload, len(payload)))  # header, payload, CRC: what append stages
    slot = bytes(ob._slot)
    ok = locked(lambda: ob._valid(ob._slot, ob._head))  # what read_into and the start-up scan check
    out["records"].append([r, ok, slot.hex()])
    r = locked(lambda: ob._save(False))  # the state to RTC memory (every append and ack)
    out["state"].append([r, bytes(ob._rtc.data).hex()])
print(json.dumps(out))
"""


def run_on_esp32_like(tmp_path: Path, device_dir: Path) -> dict:
    code = CODE.replace("PREFIX", repr(str(tmp_path / "ob")))
    completed = subprocess.run(
        [str(esp32_like()), "-X", "heapsize=256K", "-c", prelude([device_dir, DEVICE_LIB_DIR]) + code],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def crc_ok(data: bytes) -> bool:
    """The first 4 bytes are zlib's CRC-32 of the buffer with them zero (the on-flash format)."""
    return int.from_bytes(data[:4], "little") == zlib.crc32(bytes(4) + data[4:])


def test_encoder_and_outbox_crcs_allocate_nothing_with_values_of_2_to_the_30(tmp_path: Path) -> None:
    out = run_on_esp32_like(tmp_path, DEVICE_DIR)

    n, text = out["encode"]
    assert n != "alloc", "ReadingEncoder.encode allocated (an int >= 2**30)"
    reading = json.loads(text)
    big = 2**30 - 1
    assert reading["boot"] == big and reading["seq"] == big
    assert reading["ts"] == (big + EPOCH_2000_UNIX_S) * 1000 + 999 >= LIMIT * 1000
    assert reading["m"] == {"temp_c": 21.5, "rh_pct": -45}

    crcs = []
    for built, valid, slot_hex in out["records"]:
        slot = bytes.fromhex(slot_hex)
        crcs.append(int.from_bytes(slot[:4], "little"))
        assert built is None, f"building a record with CRC {crcs[-1]:#x} allocated"
        assert valid is True, f"checking a record with CRC {crcs[-1]:#x}: {valid}"
        assert crc_ok(slot)
    assert sum(c >= LIMIT for c in crcs) >= 3, [hex(c) for c in crcs]  # the case that allocated
    states = []
    for saved, state_hex in out["state"]:
        state = bytes.fromhex(state_hex)
        states.append(int.from_bytes(state[:4], "little"))
        assert saved is None, f"saving the state (CRC {states[-1]:#x}) allocated"
        assert len(state) == 52 and crc_ok(state)
    assert any(c >= LIMIT for c in states), [hex(c) for c in states]
