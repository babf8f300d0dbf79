# Ferry firmware: Bosch BME280 temperature, humidity and pressure on I2C (MicroPython).
# Forced mode, oversampling x1 for all three, filter off (the datasheet's "weather
# monitoring" setting): one measurement per read, ~9.3 ms, then the sensor sleeps.
#
# Compensation: the datasheet's 32-bit integer formulas (BME280 datasheet 4.2.3, appendix
# 8.2), with the same results, but no intermediate value reaches 2**30: on an ESP32 a small
# int has 31 bits and anything larger is a heap object. Where a product of the datasheet can
# pass 2**30 it is split at bit 14 (_mulshr); the division of the pressure formula is done in
# two steps. tests/device/test_sensors.py checks every intermediate over the sensor's range.
import time

from micropython import const

NAMES = ("temp_c", "rh_pct", "pressure_hpa")
DECIMALS = (2, 2, 2)  # centi-degC, centi-%RH, Pa (= centi-hPa)
_REG_ID = const(0xD0)
_CHIP_ID = const(0x60)
_REG_CALIB_A = const(0x88)  # 26 bytes: T1-T3, P1-P9, (0xA0), H1
_REG_CALIB_B = const(0xE1)  # 7 bytes: H2-H6
_REG_CTRL_HUM = const(0xF2)
_REG_CTRL_MEAS = const(0xF4)
_REG_DATA = const(0xF7)  # press[3], temp[3], hum[2]
_CTRL_HUM = b"\x01"  # osrs_h x1 (takes effect with the next ctrl_meas write)
_FORCED = b"\x25"  # osrs_t x1, osrs_p x1, forced mode
_WAIT_MS = const(10)  # datasheet 9.3 ms max with x1/x1/x1
_M14 = const(0x3FFF)


def _mulshr(a, b, n, add=0):
    """(a * b + add) >> n, exactly, for |a| < 2**26, |b| < 2**16, 0 <= add < 2**14.

    a * b = hi * 2**14 + lo, lo in 0..2**14-1, from (a & 0x3FFF) * b < 2**30 and (a >> 14) * b."""
    c = (a & _M14) * b
    lo = (c & _M14) + add
    hi = (a >> 14) * b + (c >> 14) + (lo >> 14)
    if n >= 14:
        return hi >> (n - 14)
    return (hi << (14 - n)) + ((lo & _M14) >> n)


def _mullo(a, b):
    """(a * b) & 0x3FFF, the part _mulshr(a, b, 14) drops."""
    return ((a & _M14) * b) & _M14


def _s16(buf, i):
    v = buf[i] | buf[i + 1] << 8
    return v - 65536 if v & 0x8000 else v


def _s8(v):
    return v - 256 if v & 0x80 else v


def calibration(a, b):
    """The 18 trimming values [T1 T2 T3 P1..P9 H1..H6] from registers 0x88.. (a, 26 bytes) and 0xE1.. (b, 7)."""
    cal = [a[0] | a[1] << 8, _s16(a, 2), _s16(a, 4), a[6] | a[7] << 8]
    for i in range(8, 24, 2):
        cal.append(_s16(a, i))
    cal.append(a[25])
    cal.append(_s16(b, 0))
    cal.append(b[2])
    cal.append(_s8(b[3]) * 16 | b[4] & 0x0F)
    cal.append(_s8(b[5]) * 16 | b[4] >> 4)
    cal.append(_s8(b[6]))
    return cal


def t_fine(cal, adc_t):
    """The datasheet's t_fine; the temperature is (t_fine * 5 + 128) >> 8 centi-degC."""
    e = (adc_t >> 4) - cal[0]
    return _mulshr((adc_t >> 3) - (cal[0] << 1), cal[1], 11) + _mulshr(_mulshr(e, e, 12), cal[2], 14)


def _divisor(cal, var1, v):
    """var1 of the datasheet before the division: ((32768 + ((P3 * ((v * v) >> 13)) >> 3
    + (P2 * var1) >> 1) >> 18) * P1) >> 15, as (P3 * sq13 + 4 * P2 * var1 - their low bits) >> 21."""
    sq13 = _mulshr(v, v, 13)
    lo = _mullo(sq13, cal[5])
    low = lo + _mullo(var1 << 2, cal[4]) - (lo & 7) - (((var1 & 1) * cal[4]) & 1) * 4
    d = (_mulshr(sq13, cal[5], 14) + _mulshr(var1 << 2, cal[4], 14) + (low >> 14)) >> 7
    return _mulshr(32768 + d, cal[3], 15)


def pressure_pa(cal, tf, adc_p):
    """Pa (BME280_compensate_P_int32), or -1 where the datasheet's would divide by 0 or the
    result is beyond 2,500 hPa."""
    var1 = (tf >> 1) - 64000
    v = var1 >> 2
    sq11 = _mulshr(v, v, 11)
    # var2 >> 12 of the datasheet = (P4 << 4) + (sq11 * P6 + 2 * var1 * P5) >> 14
    x = ((cal[6] << 4) + _mulshr(sq11, cal[8], 14) + _mulshr(var1 << 1, cal[7], 14)
         + ((_mullo(sq11, cal[8]) + _mullo(var1 << 1, cal[7])) >> 14))
    d = _divisor(cal, var1, v)
    y = 1048576 - adc_p - x
    if d <= 0 or y < 0 or y // d >= 40:
        return -1
    if y < 687195:  # y * 3125 < 2**31: (y * 6250) // d, in two steps
        p = (y // d) * 6250 + (y % d) * 6250 // d
    else:
        p = ((y // d) * 3125 + (y % d) * 3125 // d) * 2
    v1 = _mulshr(_mulshr(p >> 3, p >> 3, 13), cal[11], 12)
    return p + ((v1 + _mulshr(p >> 2, cal[10], 13) + cal[9]) >> 4)


def humidity_q10(cal, tf, adc_h):
    """%RH * 1024 (bme280_compensate_H_int32)."""
    x = tf - 76800
    u = adc_h - (cal[15] << 6)
    # (adc_H << 14) - (H4 << 20) - H5 * x + 16384) >> 15, the product split at bit 14
    a = (u >> 1) + (((((u & 1) << 14) + 16384 - _mullo(x, cal[16])) >> 14) - _mulshr(x, cal[16], 14) >> 1)
    b = _mulshr(((x * cal[14]) >> 11) + 32768, (x * cal[17]) >> 10, 10) + 2097152
    c = _mulshr(b, cal[13], 14, 8192)
    # v = a * c may pass 2**30: kept as v >> 12 and v & 0xFFF
    v15 = _mulshr(c, a, 15)
    if v15 < 0:
        return 0
    if v15 > 0xFFFF:
        return 102400
    s = _mulshr(_mulshr(v15, v15, 7), cal[12], 4)
    r = _mulshr(c, a, 12) - (s >> 12) + ((((c & 0xFFF) * a & 0xFFF) - (s & 0xFFF)) >> 12)
    return 0 if r < 0 else 102400 if r > 102400 else r


def compensate(cal, adc_t, adc_p, adc_h, values, at):
    """Raw readings -> values[at:at+3] (centi-degC, centi-%RH, Pa); False when out of range."""
    tf = t_fine(cal, adc_t)
    p = pressure_pa(cal, tf, adc_p)
    if p < 0:
        return False
    values[at] = (tf * 5 + 128) >> 8
    values[at + 1] = (humidity_q10(cal, tf, adc_h) * 25) >> 8
    values[at + 2] = p
    return True


class Sensor:
    def __init__(self, i2c, spec):
        self.i2c = i2c
        self.addr = spec["addr"]
        self.cal = None  # read at the first read that finds the sensor
        self.buf = bytearray(8)
        self.errors = 0

    def _calibrate(self):
        i2c = self.i2c
        a = bytearray(26)
        b = bytearray(7)
        i2c.readfrom_mem_into(self.addr, _REG_ID, b)
        if b[0] != _CHIP_ID:  # 0x58: a BMP280, which has no humidity
            raise OSError(19)
        i2c.readfrom_mem_into(self.addr, _REG_CALIB_A, a)
        i2c.readfrom_mem_into(self.addr, _REG_CALIB_B, b)
        i2c.writeto_mem(self.addr, _REG_CTRL_HUM, _CTRL_HUM)
        self.cal = calibration(a, b)

    def read(self, values, at):
        if self.cal is None:
            self._calibrate()
        buf = self.buf
        self.i2c.writeto_mem(self.addr, _REG_CTRL_MEAS, _FORCED)
        time.sleep_ms(_WAIT_MS)
        self.i2c.readfrom_mem_into(self.addr, _REG_DATA, buf)
        adc_p = buf[0] << 12 | buf[1] << 4 | buf[2] >> 4
        adc_t = buf[3] << 12 | buf[4] << 4 | buf[5] >> 4
        if adc_t == 0x80000 or adc_p == 0x80000:  # "skipped": the sensor lost its settings (a reset)
            self.cal = None
            return False
        return compensate(self.cal, adc_t, adc_p, buf[6] << 8 | buf[7], values, at)
