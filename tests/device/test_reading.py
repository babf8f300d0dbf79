"""The firmware's reading encoder produces the contract's canonical bytes, without allocating."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from ferry.hwsim.micropython import DEVICE_LIB_DIR, run_code
from tests.vectors import load as load_vectors

DEVICE_DIR = Path(__file__).resolve().parents[2] / "device"
EPOCH_2000_UNIX_S = 946_684_800


def encoder_call(reading: dict) -> str:
    """MicroPython source that encodes `reading` (a vector's expected fields) under heap_lock."""
    names = [name.encode() for name in reading["metrics"]]
    decimals, values = [], []
    for value in reading["metrics"].values():
        exponent = -Decimal(str(value)).as_tuple().exponent
        places = max(0, exponent)
        decimals.append(places)
        values.append(int(Decimal(str(value)) * 10 ** places))
    ts = reading["ts_ms"]
    if reading["synced"]:
        secs, millis = ts // 1000 - EPOCH_2000_UNIX_S, ts % 1000
    else:
        secs, millis = ts // 1000, ts % 1000
    return (
        f"m = MetricSet({names!r}, {decimals!r})\n"
        f"m.values[:] = {values!r}\n"
        f"e = ReadingEncoder({reading['device'].encode()!r})\n"
        "n = 0\n"  # the global exists before the heap is locked
        "gc.collect()\n"
        "micropython.heap_lock()\n"
        f"n = e.encode({reading['boot']}, {reading['seq']}, {secs}, {millis}, {reading['synced']}, m,"
        f" {reading['battery_mv']}, {reading['rssi_dbm']})\n"
        "micropython.heap_unlock()\n"
        "print(bytes(e.view[:n]).decode())\n"
    )


def test_canonical_vectors_encode_byte_for_byte_under_heap_lock() -> None:
    cases = [c for c in load_vectors("contract/readings.json")["valid"] if c["canonical"]]
    script = "import gc, micropython\nfrom reading import MetricSet, ReadingEncoder\n"
    script += "".join(encoder_call(case["reading"]) for case in cases)
    result = run_code(script, sys_path=[DEVICE_DIR, DEVICE_LIB_DIR])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [case["payload"] for case in cases]


def test_negative_values_and_trailing_zeros() -> None:
    reading = {"device": "d", "boot": 3, "seq": 9, "ts_ms": 1732480000005, "synced": True,
               "metrics": {"t": -4.5, "p": 1013.0, "z": 0}, "battery_mv": None, "rssi_dbm": -100}
    result = run_code("import gc, micropython\nfrom reading import MetricSet, ReadingEncoder\n"
                      + encoder_call(reading), sys_path=[DEVICE_DIR])
    assert result.returncode == 0, result.stdout
    payload = result.stdout.strip()
    assert payload == ('{"v":1,"dev":"d","boot":3,"seq":9,"ts":1732480000005,"sync":true,'
                       '"m":{"t":-4.5,"p":1013,"z":0},"rssi":-100}')
    assert json.loads(payload)["m"] == {"t": -4.5, "p": 1013, "z": 0}


def test_encoding_allocates_nothing_measured_with_gc_disabled() -> None:
    # heap_lock alone could hide a frame the VM falls back to putting on the C stack;
    # counting allocated bytes over many calls with the collector off cannot.
    script = (
        "import gc\nfrom reading import MetricSet, ReadingEncoder\n"
        "m = MetricSet([b'temp_c', b'rh_pct'], [2, 2])\nm.values[0] = 2150\nm.values[1] = 4025\n"
        "e = ReadingEncoder(b'esp32-a1b2c3')\n"
        "def run(k):\n"
        "    for i in range(k):\n"
        "        e.encode(17, i, 785795200, 123, True, m, 3910, -61)\n"
        "run(10)\ngc.collect()\ngc.disable()\n"
        "a = gc.mem_alloc()\nrun(1000)\nb = gc.mem_alloc()\n"
        "print(b - a)\n")
    result = run_code(script, sys_path=[DEVICE_DIR], heap_bytes=128 * 1024)
    assert result.returncode == 0, result.stdout
    assert int(result.stdout) < 1000  # under one byte per reading (the loop's own range object)
