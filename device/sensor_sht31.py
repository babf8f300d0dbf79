# Ferry firmware: Sensirion SHT31 temperature and humidity on I2C (MicroPython).
# The driver interface (docs/device.md, "Sensors"): Sensor(bus, spec) with NAMES and
# DECIMALS, and read(values, at) writing fixed-point small ints into values[at:]; it returns
# True, None (no value yet, not an error) or False/raises (an error: counted by hw.py).
import time

from micropython import const

NAMES = ("temp_c", "rh_pct")
DECIMALS = (2, 2)
_MEASURE = b"\x24\x00"  # single shot, high repeatability, no clock stretching
_WAIT_MS = const(16)  # datasheet: 15.5 ms max for high repeatability


def crc8(buf, off):
    """Sensirion CRC-8 (poly 0x31, init 0xFF) of buf[off:off+2]."""
    crc = 0xFF
    for i in range(off, off + 2):
        crc ^= buf[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def convert(buf, values, at=0):
    """Raw words in buf[0:6] -> values[at] = centi-degC, values[at+1] = centi-%RH; False on a CRC error.

    175 * raw / 65535 = 3500 * raw / 13107 (65535 = 5 * 13107): the products stay below 2**30.
    """
    if crc8(buf, 0) != buf[2] or crc8(buf, 3) != buf[5]:
        return False
    values[at] = (buf[0] << 8 | buf[1]) * 3500 // 13107 - 4500
    values[at + 1] = (buf[3] << 8 | buf[4]) * 2000 // 13107
    return True


class Sensor:
    def __init__(self, i2c, spec):
        self.i2c = i2c
        self.addr = spec["addr"]
        self.raw = bytearray(6)
        self.errors = 0

    def read(self, values, at):
        self.i2c.writeto(self.addr, _MEASURE)
        time.sleep_ms(_WAIT_MS)
        self.i2c.readfrom_into(self.addr, self.raw)
        return convert(self.raw, values, at)
