"""The sensor drivers (device/sensor_*.py) and their settings on the real MicroPython interpreter,
against datasheet vectors: Bosch's BME280/BMP280 compensation example, the DS18B20 temperature
table and Maxim's CRC-8 example, PMS5003 frames as hw-sim's pyserial model writes them (also
over a real pty), and a read path that allocates nothing. The BME280's integer formulas are
also checked on CPython, where every intermediate value can be watched: none reaches 2**30
(an ESP32's small ints have 31 bits).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from ferry.hwsim import pms5003_model
from ferry.hwsim.board import SHIMS_DIR, BoardConfig, VirtualBoard
from ferry.hwsim.micropython import DEVICE_LIB_DIR, interpreter, prelude, run_code
from tests.device.fw_support import DEVICE_DIR

# The BMP280 datasheet's compensation example (3.12; the BME280 uses the same T and P formulas):
# these trimming values, adc_T 519888 -> 25.08 degC, adc_P 415148 -> 100653.27 Pa (double precision).
DATASHEET_CAL = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
HUMIDITY_CAL = (75, 362, 0, 313, 50, 30)  # H1-H6 of a real BME280 (the datasheet gives no example)
CAL = DATASHEET_CAL + HUMIDITY_CAL


def run_fw(code: str, shims: bool = False, heap_bytes: int = 256 * 1024) -> dict:
    path = [DEVICE_DIR, DEVICE_LIB_DIR] + ([SHIMS_DIR] if shims else [])
    result = run_code(code, sys_path=path, heap_bytes=heap_bytes)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def board_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """What the hw-sim shims read at import, for driver code run outside a board."""
    (tmp_path / "wlan").write_text("down")
    monkeypatch.setenv("FERRY_BOARD_STATE", str(tmp_path))
    monkeypatch.setenv("FERRY_BOARD_CTL", "2")  # control messages go to stderr
    return tmp_path


# ---------------------------------------------------------------------------- the datasheet's formulas

def bosch_reference(cal: tuple[int, ...], adc_t: int, adc_p: int, adc_h: int) -> tuple[int, int, int]:
    """BME280_compensate_T_int32, _P_int32, bme280_compensate_H_int32 transcribed from the datasheet
    (4.2.3 and 8.2): Python's ints do what C's 32-bit ones do wherever those do not overflow."""
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6 = cal
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
    t_fine = var1 + var2
    temperature = (t_fine * 5 + 128) >> 8
    var1 = (t_fine >> 1) - 64000
    var2 = (((var1 >> 2) * (var1 >> 2)) >> 11) * p6
    var2 = var2 + ((var1 * p5) << 1)
    var2 = (var2 >> 2) + (p4 << 16)
    var1 = (((p3 * (((var1 >> 2) * (var1 >> 2)) >> 13)) >> 3) + ((p2 * var1) >> 1)) >> 18
    var1 = ((32768 + var1) * p1) >> 15
    p = ((((1048576 - adc_p) - (var2 >> 12))) * 3125) & 0xFFFFFFFF
    if p < 0x80000000:
        p = (p << 1) // var1
    else:
        p = (p // var1) * 2
    var1 = (p9 * (((p >> 3) * (p >> 3)) >> 13)) >> 12
    var2 = ((p >> 2) * p8) >> 13
    p = p + ((var1 + var2 + p7) >> 4)
    v = t_fine - 76800
    v = ((((adc_h << 14) - (h4 << 20) - (h5 * v)) + 16384) >> 15) * (
        ((((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    v = min(max(v, 0), 419430400)
    return temperature, p, v >> 12


def calibration_bytes(cal: tuple[int, ...]) -> tuple[bytes, bytes]:
    """Registers 0x88-0xA1 and 0xE1-0xE7 holding `cal` (the datasheet's memory map, table 16)."""
    def le16(v: int) -> bytes:
        return (v & 0xFFFF).to_bytes(2, "little")
    a = b"".join(le16(v) for v in cal[:12]) + b"\x00" + bytes([cal[12]])
    h4, h5 = cal[15], cal[16]
    b = le16(cal[13]) + bytes([cal[14], (h4 >> 4) & 0xFF, (h4 & 0xF) | (h5 & 0xF) << 4, (h5 >> 4) & 0xFF,
                               cal[17] & 0xFF])
    return a, b


def random_cases(n: int, seed: int) -> list[tuple[tuple[int, ...], int, int, int]]:
    """Trimming values within +-20% of the example's (H5, H3, H6, H1 over their usual ranges) and raw
    readings whose results lie in the sensor's range: -40..85 degC, 300..1100 hPa."""
    rnd = random.Random(seed)
    out = []
    while len(out) < n:
        cal = [int(c * rnd.uniform(0.8, 1.2)) for c in CAL]
        cal[12], cal[14] = rnd.randint(0, 255), rnd.randint(0, 255)  # H1, H3
        cal[16], cal[17] = rnd.randint(-60, 60), rnd.randint(0, 60)  # H5, H6
        adc = (rnd.randint(300_000, 700_000), rnd.randint(150_000, 800_000), rnd.randint(0, 65535))
        t, p, _ = bosch_reference(tuple(cal), *adc)
        if -4000 <= t <= 8500 and 30_000 <= p <= 110_000:
            out.append((tuple(cal), *adc))
    return out


# ---------------------------------------------------------------------------- settings

def test_sensor_settings_default_to_the_sht31_and_name_the_bad_key() -> None:
    base = {"site": "s", "wifi_ssid": "w", "broker_host": "h", "tls": False}
    cases = {
        "default": None,
        "full": [{"type": "bme280", "addr": 119}, {"type": "ds18b20", "pin": 4, "prefix": "water_"},
                 {"type": "pms5003", "rx": 16, "tx": 17}],
        "not a list": {"type": "sht31"},
        "unknown type": [{"type": "dht22"}],
        "unknown key": [{"type": "sht31", "pin": 4}],
        "missing pin": [{"type": "ds18b20"}],
        "bad address": [{"type": "bme280", "addr": 0x44}],
        "same metric twice": [{"type": "sht31"}, {"type": "ds18b20", "pin": 4}],
        "bad prefix": [{"type": "ds18b20", "pin": 4, "prefix": "Water"}],
        "one bus, two pin pairs": [{"type": "sht31"}, {"type": "bme280", "scl": 18, "sda": 19}],
        "too many metrics": [{"type": "bme280", "prefix": f"p{i}_"} for i in range(6)],
    }
    code = "import json\nfrom settings import Settings, SettingsError\nout = {}\n"
    for name, sensors in cases.items():
        raw = dict(base, i2c_scl_pin=25) if sensors is None else dict(base, sensors=sensors)
        code += (f"try:\n    out[{name!r}] = Settings({raw!r}).sensors\n"
                 f"except SettingsError as e:\n    out[{name!r}] = str(e)\n")
    out = run_fw(code + "print(json.dumps(out))")
    assert out.pop("default") is None  # hw.Hardware's default, the SHT31 at 0x44 on i2c_scl_pin/i2c_sda_pin
    assert out.pop("full") == [
        {"type": "bme280", "prefix": "", "i2c": 0, "scl": 22, "sda": 21, "addr": 119},
        {"type": "ds18b20", "prefix": "water_", "pin": 4},
        {"type": "pms5003", "prefix": "", "uart": 2, "rx": 16, "tx": 17},
    ]
    p = "/ferry_config.json: "
    assert out == {
        "not a list": p + "sensors: must be a list of 1-8 objects",
        "unknown type": p + "sensors[0].type: must be one of bme280 ds18b20 pms5003 sht31",
        "unknown key": p + "sensors[0].pin: unknown key for sht31",
        "missing pin": p + "sensors[0].pin: missing (required for ds18b20)",
        "bad address": p + "sensors[0].addr: must be an integer 118..119, got 68",
        "same metric twice": p + "sensors[1].prefix: metric temp_c twice (give one sensor a prefix)",
        "bad prefix": p + "sensors[0].prefix: must be 1-16 characters of a-z 0-9 _, from a letter",
        "one bus, two pin pairs": p + "sensors[1].scl: i2c 0 is on pins 22/21 already",
        "too many metrics": p + "sensors: 18 metrics, at most 16 fit a reading",
    }


def test_settings_metric_names_are_the_drivers() -> None:
    out = run_fw("""
import json, settings, sensor_config
res = {}
for kind in sensor_config.SENSOR_KEYS:
    m = __import__("sensor_" + kind)
    res[kind] = [" ".join(m.NAMES), sensor_config.SENSOR_KEYS[kind][0], len(m.DECIMALS)]
print(json.dumps(res))
""")
    for kind, (driver, settings_names, decimals) in out.items():
        assert driver == settings_names and decimals == len(driver.split()), kind


# ---------------------------------------------------------------------------- BME280

def test_bme280_gives_the_datasheet_example() -> None:
    a, b = calibration_bytes(CAL)
    out = run_fw(f"""
import json, sensor_bme280 as d
cal = d.calibration({a!r}, {b!r})
v = [0, 0, 0]
ok = d.compensate(cal, 519888, 415148, 30000, v, 0)
print(json.dumps({{"cal": cal, "ok": ok, "v": v, "tf": d.t_fine(cal, 519888)}}))
""")
    assert out["cal"] == list(CAL)  # the memory map, H4/H5's shared nibbles included
    t, p, h = bosch_reference(CAL, 519888, 415148, 30000)
    assert out["ok"] and out["tf"] == 128422  # the datasheet's t_fine
    assert out["v"][0] == t == 2508  # 25.08 degC
    assert out["v"][2] == p  # the 32-bit formula: 100656 Pa, the double one 100653.27
    assert abs(p - 100653.27) < 4
    assert out["v"][1] == h * 100 // 1024


def test_bme280_integer_formulas_match_the_datasheet_and_stay_below_2_30() -> None:
    """On CPython, with an int type that fails on any result of 2**30 or more: 6,000 random
    trimming/raw combinations give exactly the datasheet's results. Then 300 of them on MicroPython."""
    sys.modules.setdefault("micropython", types.SimpleNamespace(const=lambda v: v))
    sys.path.insert(0, str(DEVICE_DIR))
    try:
        import sensor_bme280 as driver
    finally:
        sys.path.remove(str(DEVICE_DIR))
        sys.modules.pop("sensor_bme280", None)

    peak = [0]

    class Small(int):
        """An int whose every arithmetic result must stay below 2**30 in magnitude."""

    def checked(name: str):
        op = getattr(int, name)

        def method(self, *args):
            r = op(int(self), *(int(a) for a in args))
            assert abs(r) < 1 << 30, f"{name}({int(self)}, {args}) = {r}"
            peak[0] = max(peak[0], abs(r))
            return Small(r)
        return method

    for name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
                 "__rfloordiv__", "__mod__", "__rmod__", "__lshift__", "__rlshift__", "__rshift__",
                 "__rrshift__", "__and__", "__rand__", "__or__", "__ror__", "__neg__"):
        setattr(Small, name, checked(name))
    cases = random_cases(6_000, seed=7)
    for cal, adc_t, adc_p, adc_h in cases:
        values = [0, 0, 0]
        assert driver.compensate([Small(c) for c in cal], Small(adc_t), Small(adc_p), Small(adc_h), values, 0)
        t, p, h = bosch_reference(cal, adc_t, adc_p, adc_h)
        assert values == [t, h * 100 // 1024, p], (cal, adc_t, adc_p, adc_h)
    sample = cases[:300]
    out = run_fw(f"""
import json, sensor_bme280 as d
res = []
for cal, t, p, h in {[[list(c), t, p, h] for c, t, p, h in sample]!r}:
    v = [0, 0, 0]
    d.compensate(cal, t, p, h, v, 0)
    res.append(v)
print(json.dumps(res))
""")
    assert out == [[t, h * 100 // 1024, p] for t, p, h in (bosch_reference(*c) for c in sample)]
    print(f"\nBME280: {len(cases)} cases exact, largest intermediate {peak[0]} = {peak[0] / (1 << 30):.2f} x 2**30")


# ---------------------------------------------------------------------------- DS18B20

def test_ds18b20_crc_table_and_reads_through_the_onewire_model(board_env: Path) -> None:
    table = {0x07D0: 12500, 0x0550: 8500, 0x0191: 2506, 0x00A2: 1013, 0x0008: 50, 0x0000: 0,
             0xFFF8: -50, 0xFF5E: -1013, 0xFE6F: -2506, 0xFC90: -5500}  # datasheet table 1, to 0.01
    out = run_fw(f"""
import json, time, machine, onewire, ds18x20, _board
import sensor_ds18b20 as d
res = {{"an27": onewire.OneWire(machine.Pin(4)).crc8(b"\\x02\\x1c\\xb8\\x01\\x00\\x00\\x00"),
       "an27_whole": onewire.OneWire(machine.Pin(4)).crc8(b"\\x02\\x1c\\xb8\\x01\\x00\\x00\\x00\\xa2")}}
res["table"] = [d.centi_c(bytes((raw & 0xFF, raw >> 8))) for raw in {list(table)!r}]
s = d.Sensor(ds18x20.DS18X20(onewire.OneWire(machine.Pin(4))), {{"pin": 4}})
v = [0]
res["first"] = s.read(v, 0)  # starts the first conversion: no value yet
time.sleep_ms(300)
res["early"] = s.read(v, 0)  # 300 ms later: still converting
time.sleep_ms(500)
res["done"] = [s.read(v, 0), v[0]]
res["rom"] = list(s.rom)
def faulty(name):
    _board.faults_file.seek(0)
    _board.faults_file.write(name.encode() + b" " * 16)
def attempt():
    try:
        return s.read(v, 0)
    except Exception as e:
        return type(e).__name__
faulty("ds18b20_crc")
time.sleep_ms(800)
res["crc"] = attempt()
faulty("ds18b20")
time.sleep_ms(800)
res["unplugged"] = [attempt(), attempt()]
faulty("")
res["back"] = [attempt()]
time.sleep_ms(800)
res["back"].append(attempt())
print(json.dumps(res))
""", shims=True)
    assert out["an27"] == 0xA2 and out["an27_whole"] == 0  # Maxim application note 27's example ROM
    assert out["table"] == list(table.values())
    assert out["first"] is None and out["early"] is None
    ok, centi = out["done"]
    assert ok is True and 1000 < centi < 1900  # the model's water tank, 14 +- 1.5 degC
    assert out["rom"][0] == 0x28  # family code of a DS18B20
    assert out["crc"] == "Exception"  # ds18x20's "CRC error": the driver's caller counts it
    assert out["unplugged"] == ["OneWireError", "OneWireError"]
    assert out["back"] == [None, True]  # a new conversion first, then values again


# ---------------------------------------------------------------------------- PMS5003

FRAME_GOOD = pms5003_model.frame((11, 17, 22), (10, 15, 20))
FRAME_NEXT = pms5003_model.frame((6, 8, 9), (5, 7, 9))


def test_pms5003_frame_has_the_manuals_layout() -> None:
    f = FRAME_GOOD
    assert len(f) == 32 and f[:4] == b"\x42\x4d\x00\x1c"
    assert int.from_bytes(f[30:], "big") == sum(f[:30])
    assert [int.from_bytes(f[i:i + 2], "big") for i in (10, 12, 14)] == [10, 15, 20]


def test_pms5003_parser_resyncs_and_counts_bad_frames() -> None:
    corrupt = bytearray(FRAME_NEXT)
    corrupt[12] ^= 0x40
    bad_length = bytearray(FRAME_NEXT)
    bad_length[3] = 20
    streams = {
        "good": FRAME_GOOD,
        "garbage first": b"\x00\xff\x42\x13\x4d" + FRAME_GOOD,
        "corrupt then good": bytes(corrupt) + FRAME_GOOD,
        "cut short by the next": FRAME_NEXT[:17] + FRAME_GOOD,
        "bad length then good": bytes(bad_length[:8]) + FRAME_GOOD,
        "byte by byte": FRAME_GOOD,
        "two: the latest wins": FRAME_NEXT + FRAME_GOOD,
        "corrupt only": bytes(corrupt),
    }
    out = run_fw(f"""
import json, time, micropython
import sensor_pms5003 as d

class Uart:  # what machine.UART(..., timeout=0).readinto gives: what has arrived, None when nothing
    def __init__(self, data, step):
        self.data = data
        self.step = step
    def readinto(self, buf):
        n = min(len(buf), self.step, len(self.data))
        if not n:
            return None
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

res = {{}}
for name, data in {streams!r}.items():
    s = d.Sensor(Uart(data, 1 if name == "byte by byte" else 64), {{}})
    v = [0, 0, 0]
    for _ in range(4 if name == "byte by byte" else 1):  # a read takes at most 8 chunks
        r = s.read(v, 0)
    res[name] = [r, v, s.frames, s.errors]
s = d.Sensor(Uart({FRAME_GOOD!r}, 64), {{}})
v = [0, 0, 0]
res["stale"] = [s.read(v, 0)]
s.good = time.ticks_add(time.ticks_ms(), -6000)  # no frame for 6 s: silent
res["stale"].append(s.read(v, 0))
s = d.Sensor(Uart(b"", 64), {{}})
res["none yet"] = s.read(v, 0)
s.since = time.ticks_add(time.ticks_ms(), -6000)  # 6 s after power-on and still nothing
res["never"] = s.read(v, 0)
print(json.dumps(res))
""")
    good = [True, [10, 15, 20], 1, 0]
    assert out == {
        "good": good,
        "garbage first": [True, [10, 15, 20], 1, 1],  # 0x42 0x13: one broken start
        "corrupt then good": [True, [10, 15, 20], 1, 1],
        "cut short by the next": [True, [10, 15, 20], 1, 1],
        "bad length then good": [True, [10, 15, 20], 1, 1],
        "byte by byte": good,
        "two: the latest wins": [True, [10, 15, 20], 2, 0],
        "corrupt only": [None, [0, 0, 0], 0, 1],
        "stale": [True, False],
        "none yet": None,
        "never": False,
    }


def test_pms5003_reads_the_pyserial_models_bytes_over_a_pty(tmp_path: Path) -> None:
    """The firmware's driver on machine.UART (the shim over the pty's master) and the sensor model
    writing real frames with pyserial on the pty's device: good frames, then frames cut short."""
    board = VirtualBoard(tmp_path / "b", BoardConfig(sensor_seed=5))
    port = board.attach_uart(2)
    uarts = (board.state_dir / "uarts").read_text()
    master = int(uarts.split(":")[1])
    code = prelude([SHIMS_DIR, DEVICE_DIR]) + """
import json, time, machine
import sensor_pms5003 as d
s = d.Sensor(machine.UART(2, baudrate=9600, tx=17, rx=16, timeout=0), {})
v = [0, 0, 0]
seen = []
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 1500:
    if s.read(v, 0):
        if not seen or seen[-1] != v:
            seen.append(list(v))
    time.sleep_ms(30)
print(json.dumps({"seen": seen, "frames": s.frames, "errors": s.errors}))
"""
    env = dict(os.environ, FERRY_BOARD_STATE=str(board.state_dir), FERRY_BOARD_CTL="2")
    model = pms5003_model.Pms5003Model(port, seed=5, interval_s=0.1)
    results: dict[str | None, dict] = {}
    try:
        model.start()
        for fault in (None, "truncate"):
            model.fault = fault
            time.sleep(0.15)  # the frame in flight before the switch
            run = subprocess.run([interpreter(), "-X", "heapsize=256K", "-c", code], capture_output=True, text=True,
                                 timeout=30, env=env, pass_fds=(master,), stdin=subprocess.DEVNULL)
            assert run.returncode == 0, run.stdout + run.stderr
            results[fault] = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        model.stop()
        board.stop()
    written = {pm for _, pm in model.sent if pm}  # frames from before a run may still wait in the pty
    out = results[None]
    assert out["frames"] >= 8 and out["errors"] == 0, out
    assert out["seen"] and all(tuple(v) in written for v in out["seen"])
    out = results["truncate"]
    assert out["frames"] >= 5 and out["errors"] >= 5, out  # each cut frame counted, the next one still read
    assert all(tuple(v) in written for v in out["seen"])
    print(f"\nPMS5003 over a pty: {results[None]['frames']} frames, then with cut frames {out}")


# ---------------------------------------------------------------------------- heap

def test_sampling_every_driver_allocates_nothing(board_env: Path) -> None:
    """hw.sample() over all four drivers under micropython.heap_lock(), their buses replaced by
    allocation-free fakes (the hw-sim shims allocate; an ESP32's I2C, OneWire and UART do not)."""
    a, b = calibration_bytes(CAL)
    out = run_fw(f"""
import json, time, gc, micropython
from hw import Hardware
hw = Hardware(22, 21, [
    {{"type": "bme280", "prefix": "", "i2c": 0, "scl": 22, "sda": 21, "addr": 118}},
    {{"type": "ds18b20", "prefix": "water_", "pin": 4}},
    {{"type": "pms5003", "prefix": "", "uart": 2, "rx": 16, "tx": 17}},
    {{"type": "sht31", "prefix": "b_", "i2c": 0, "scl": 22, "sda": 21, "addr": 69}},
])
mem = bytearray(256)
mem[0xD0] = 0x60
mem[0x88:0x88 + 26] = {a!r}
mem[0xE1:0xE1 + 7] = {b!r}
mem[0xF7:0xFF] = bytes((0x65, 0x5a, 0xc0, 0x7e, 0xed, 0x00, 0x75, 0x30))  # adc_P 415148, adc_T 519888
sht = bytearray(b"\\x66\\x66\\x93\\x80\\x00\\xa2")
class I2C:
    def writeto(self, addr, buf):
        pass
    def readfrom_into(self, addr, buf):
        for i in range(6):
            buf[i] = sht[i]
    def writeto_mem(self, addr, reg, buf):
        pass
    def readfrom_mem_into(self, addr, reg, buf):
        for i in range(len(buf)):
            buf[i] = mem[reg + i]
scratch = bytearray(b"\\x91\\x01\\x4b\\x46\\x7f\\xff\\x0c\\x10\\x00")
roms = [bytearray(8)]
class DS:
    def scan(self):
        return roms
    def convert_temp(self):
        pass
    def read_scratch(self, rom):
        return scratch
frame = {FRAME_GOOD!r}
class Uart:
    def __init__(self):
        self.n = 0
    def readinto(self, buf):
        self.n += 1
        if self.n & 1:
            for i in range(32):
                buf[i] = frame[i]
            return 32
        return None
hw.drivers[0].i2c = hw.drivers[3].i2c = I2C()
hw.drivers[1].ds = DS()
hw.drivers[2].uart = Uart()
v = [0] * len(hw.names)
first = hw.sample(v)  # reads the BME280's calibration, starts the DS18B20's conversion
hw.drivers[1].started = time.ticks_add(time.ticks_ms(), -1000)
ok = failed = 0
gc.collect()
micropython.heap_lock()
for _ in range(20):
    ok = hw.sample(v)
    failed = hw.failed
    hw.drivers[1].started = time.ticks_add(time.ticks_ms(), -1000)
micropython.heap_unlock()
print(json.dumps({{"names": [n.decode() for n in hw.names], "v": v, "ok": ok, "failed": failed,
                  "errors": [d.errors for d in hw.drivers]}}))
""", shims=True)
    assert out["ok"] is True and out["failed"] == 0 and out["errors"] == [0, 0, 0, 0]
    values = dict(zip(out["names"], out["v"]))
    t, p, h = bosch_reference(CAL, 519888, 415148, 30000)
    assert values == {"temp_c": t, "rh_pct": h * 100 // 1024, "pressure_hpa": p, "water_temp_c": 2506,
                      "pm1_0_ugm3": 10, "pm2_5_ugm3": 15, "pm10_ugm3": 20, "b_temp_c": 2500, "b_rh_pct": 5000}


def test_ferry_flash_checks_the_sensor_list_as_the_board_does() -> None:
    """`ferry flash --set sensors=[...]` runs the firmware's own settings.py and sensor_config.py on
    CPython: the same errors, and nothing of the firmware left in sys.modules after."""
    import argparse

    from ferry import flash

    def config(sensors: str) -> dict:
        return flash.build_config(argparse.Namespace(
            broker=("gw.lan", None), ca=None, site="lab", wifi_ssid="ap", device_id=None, sample_s=None,
            mode=None, set=[f"sensors={sensors}"]))

    assert config('[{"type": "pms5003", "rx": 16, "tx": 17}]')["sensors"] == [{"type": "pms5003", "rx": 16, "tx": 17}]
    with pytest.raises(flash.FlashError, match=r"sensors\[0\]\.rx: missing \(required for pms5003\)"):
        config('[{"type": "pms5003", "tx": 17}]')
    assert "settings" not in sys.modules and "sensor_config" not in sys.modules
