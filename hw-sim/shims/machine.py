# hw-sim: the ESP32 `machine` module on the unix port (MicroPython code).
# The built-in stays reachable as `umachine`. Pins, ADC and I2C are backed by the
# deterministic sensor model (an SHT31 and a BME280 on every I2C bus); a UART reads and
# writes a host pty where a sensor model runs; RTC memory, the watchdog, deep sleep and resets are
# shared with the host supervisor through _board.
from umachine import *  # noqa: F401,F403 - Signal, idle, mem8, ... as built in
import utime
import _board
import sensor_model

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
BROWNOUT_RESET = 6
PIN_WAKE = 2
TIMER_WAKE = 4

SHT31_ADDRESS = 0x44
_SHT31_MEASURE_HIGH = b"\x24\x00"
BATTERY_ADC_PIN = 35
_BATTERY_DIVIDER = 2  # a 1:1 divider halves the cell voltage at the ADC


def reset_cause():
    return _board.reset_cause


def wake_reason():
    return TIMER_WAKE if _board.reset_cause == DEEPSLEEP_RESET else 0


def unique_id():
    return _board.uid


def freq(hz=None):
    return None if hz is not None else 240000000


def idle():
    utime.sleep_ms(1)


def lightsleep(ms=None):
    utime.sleep_ms(ms or 0)


def _halt():
    # The host kills the interpreter as soon as it reads the request: like the chip, this never returns.
    while True:
        utime.sleep_ms(1000)


def deepsleep(ms=0):
    """Power down until the timer (the host restarts the process after `ms`), keeping RTC memory."""
    _board.control(b"S%d" % ms)
    _halt()


def reset():
    _board.control(b"R")
    _halt()


def soft_reset():
    _board.control(b"s")
    _halt()


def _host_s():
    return utime.time()


# GPIO numbers of each chip profile, and those with an ADC (ESP-IDF datasheets): for any
# other number MicroPython raises ValueError("invalid pin"), as the real ports do.
if _board.chip == "esp32s3":
    _GPIO = bytes(range(22)) + bytes(range(26, 49))
    _ADC = bytes(range(1, 21))
elif _board.chip == "esp32c3":
    _GPIO = bytes(range(22))
    _ADC = bytes(range(6))
else:
    _GPIO = bytes(range(20)) + b"\x15\x16\x17\x19\x1a\x1b" + bytes(range(32, 40))  # no 20, 24, 28-31
    _ADC = b"\x00\x02\x04\x0c\x0d\x0e\x0f\x19\x1a\x1b" + bytes(range(32, 40))


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        if not 0 <= id < 256 or id not in _GPIO:
            raise ValueError("invalid pin")
        self.id = id
        self._value = 0 if value is None else value

    def init(self, mode=-1, pull=-1, value=None):
        if value is not None:
            self._value = value

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0

    def irq(self, handler=None, trigger=3):
        return None

    __call__ = value


class ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    def __init__(self, pin, atten=ATTN_11DB):
        self._pin = pin.id if isinstance(pin, Pin) else pin
        if not 0 <= self._pin < 256 or self._pin not in _ADC:
            raise ValueError("invalid pin")

    def atten(self, value):
        pass

    def width(self, value):
        pass

    def read_uv(self):
        if self._pin != BATTERY_ADC_PIN:
            return 0
        now = _host_s()
        return sensor_model.battery_mv(_board.sensor_seed, now, _board.boot_wall_s) * 1000 // _BATTERY_DIVIDER

    def read_u16(self):
        return min(65535, self.read_uv() * 65535 // 3300000)

    def read(self):
        return self.read_u16() >> 4


def _sht31_crc(data):
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class I2C:
    """An I2C bus with a Sensirion SHT31 at 0x44 and a Bosch BME280 at 0x76 (shims/bme280_model.py,
    imported at the first access to another address than 0x44), each answering until the host
    unplugs it (VirtualBoard.set_sensor_faults): then no ACK (ENODEV)."""

    def __init__(self, id=0, scl=None, sda=None, freq=400000):
        self._command = b""

    def scan(self):
        return [SHT31_ADDRESS, 0x76]

    def writeto(self, addr, buf, stop=True):
        if addr != SHT31_ADDRESS:
            return _import_shim("bme280_model").writeto(addr, buf)
        if _board.fault("sht31"):
            raise OSError(19)  # ENODEV: no ACK
        self._command = bytes(buf)
        return len(buf)

    def readfrom_into(self, addr, buf, stop=True):
        if addr != SHT31_ADDRESS:
            return _import_shim("bme280_model").readfrom_into(addr, buf)
        if self._command != _SHT31_MEASURE_HIGH or _board.fault("sht31"):
            raise OSError(19)
        now = _host_s()
        seed = _board.sensor_seed
        t_raw = int((sensor_model.temperature_c(seed, now) + 45) * 65535 / 175)
        rh_raw = int(sensor_model.humidity_pct(seed, now) * 65535 / 100)
        t_raw = max(0, min(65535, t_raw))
        rh_raw = max(0, min(65535, rh_raw))
        t = bytes((t_raw >> 8, t_raw & 0xFF))
        rh = bytes((rh_raw >> 8, rh_raw & 0xFF))
        out = t + bytes((_sht31_crc(t),)) + rh + bytes((_sht31_crc(rh),))
        for i in range(min(len(buf), 6)):
            buf[i] = out[i]

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self.readfrom_into(addr, buf, stop)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        self.writeto(addr, bytes((memaddr,)) + buf)

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        self.writeto(addr, bytes((memaddr,)), False)
        self.readfrom_into(addr, buf)


class SoftI2C(I2C):
    pass


class RTC:
    """The ESP32 RTC: `memory()` survives deep sleep and resets, not a power cut."""

    def __init__(self, id=0):
        pass

    def memory(self, data=None):
        """2 KiB that keep the exact bytes of any buffer (an array('I') of 13 words: 52 bytes)."""
        # File layout: 2-byte length, then the bytes (MicroPython files cannot truncate).
        f = _board.rtc_file
        if data is None:
            f.seek(0)
            header = f.read(2)
            return f.read(header[0] << 8 | header[1]) if len(header) == 2 else b""
        data = bytes(data)  # the buffer's bytes: len() of an array counts its items
        if len(data) > 2048:
            raise ValueError("buffer too long")
        f.seek(0)
        f.write(bytes((len(data) >> 8, len(data) & 0xFF)) + data)  # one write: a kill never tears it
        return None

    def datetime(self, dt=None):
        import time
        if dt is None:
            t = time.gmtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        secs = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        _board.set_clock_offset_s(secs + time.EPOCH_OFFSET_S - utime.time())

    def init(self, dt):
        self.datetime(dt)


class WDT:
    """The task watchdog: the host resets the board when `feed()` stops for `timeout` ms."""

    def __init__(self, id=0, timeout=5000):
        _board.control(b"W%d" % timeout)

    def feed(self):
        _board.control(b"F")


# ---- shims only some boards need, imported at their first use
import sys  # noqa: E402


def _import_shim(name):
    """shims/<name>.py, imported at its first use: a shim only some boards need, imported after boot,
    when `/` is the board's flash and this folder is out of sight. Mounted just for the import (read
    from the file as the lexer goes: compiling a whole source string at once needs more free heap)."""
    if name in sys.modules:
        return sys.modules[name]
    import gc
    import vfs
    gc.collect()
    vfs.mount(vfs.VfsPosix(__file__[:__file__.rfind("/")]), "/.hw-sim", readonly=True)
    sys.path.append("/.hw-sim")
    try:
        return __import__(name)
    finally:
        sys.path.remove("/.hw-sim")
        vfs.umount("/.hw-sim")


def __getattr__(name):
    if name == "UART":  # only boards with a UART sensor load it
        return _import_shim("machine_uart").UART
    raise AttributeError(name)


import _frozen  # noqa: E402,I001 - stands in for onewire and ds18x20 until first used (_frozen.py)

for _name in ("onewire", "ds18x20"):
    if _name not in sys.modules:
        sys.modules[_name] = _frozen
