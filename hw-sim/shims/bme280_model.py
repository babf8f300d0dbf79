# hw-sim: a Bosch BME280 on the virtual I2C bus (MicroPython code), register by register:
# chip id 0xD0 = 0x60, the calibration words at 0x88-0xA1 and 0xE1-0xE7, ctrl_hum 0xF2,
# ctrl_meas 0xF4 (a write with mode "forced" takes one measurement), the data registers
# 0xF7-0xFE (0x80000 "skipped" until the first measurement). The raw values are found by
# inverting the datasheet's floating-point compensation (4.2.3), so the firmware's integer
# formulas are checked against an independent implementation. The measurement is ready at
# once (no 9.3 ms conversion time, no status register "measuring" bit), no IIR filter,
# no oversampling noise, no normal mode.
import _board
import utime

import sensor_model
import sensor_signals

ADDRESS = 0x76

# Trimming values: T1-T3 and P1-P9 are the datasheet's example (BMP280 datasheet 3.12, the
# same compensation); H1-H6 are a real sensor's.
CAL = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000, 75, 362, 0, 313, 50, 30)


def _le16(v):
    v &= 0xFFFF
    return bytes((v & 0xFF, v >> 8))


def registers(cal=CAL):
    """{address: byte} of the chip id and the calibration."""
    a = b"".join(_le16(v) for v in cal[:12]) + b"\x00" + bytes((cal[12],))
    h4, h5 = cal[15], cal[16]
    b = _le16(cal[13]) + bytes((cal[14], (h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4), (h5 >> 4) & 0xFF,
                                cal[17] & 0xFF))
    regs = {0xD0: 0x60}
    for i, v in enumerate(a):
        regs[0x88 + i] = v
    for i, v in enumerate(b):
        regs[0xE1 + i] = v
    return regs


def t_fine(cal, adc_t):
    v1 = (adc_t / 16384.0 - cal[0] / 1024.0) * cal[1]
    v2 = (adc_t / 131072.0 - cal[0] / 8192.0) ** 2 * cal[2]
    return v1 + v2


def pressure_pa(cal, tf, adc_p):
    v1 = tf / 2.0 - 64000.0
    v2 = v1 * v1 * cal[8] / 32768.0 + v1 * cal[7] * 2.0
    v2 = v2 / 4.0 + cal[6] * 65536.0
    v1 = (cal[5] * v1 * v1 / 524288.0 + cal[4] * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * cal[3]
    p = (1048576.0 - adc_p - v2 / 4096.0) * 6250.0 / v1
    return p + (cal[11] * p * p / 2147483648.0 + p * cal[10] / 32768.0 + cal[9]) / 16.0


def humidity_pct(cal, tf, adc_h):
    h = tf - 76800.0
    h = (adc_h - (cal[15] * 64.0 + cal[16] / 16384.0 * h)) * (
        cal[13] / 65536.0 * (1.0 + cal[17] / 67108864.0 * h * (1.0 + cal[14] / 67108864.0 * h)))
    h = h * (1.0 - cal[12] * h / 524288.0)
    return min(100.0, max(0.0, h))


def _invert(f, target, hi, rising=True):
    """The raw value in 0..hi-1 whose compensated value is closest to target (f monotonic)."""
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (f(mid) <= target) == rising:
            lo = mid
        else:
            hi = mid
    return lo


class BME280:
    def __init__(self, seed, clock, cal=CAL):
        self.seed = seed
        self.clock = clock
        self.cal = cal
        self.regs = registers(cal)
        self.regs.update({0xF2: 0, 0xF4: 0, 0xF7: 0x80, 0xF8: 0, 0xF9: 0, 0xFA: 0x80, 0xFB: 0, 0xFC: 0, 0xFD: 0x80,
                          0xFE: 0})
        self.pointer = 0

    def write(self, data):
        self.pointer = data[0]
        for i, v in enumerate(data[1:]):
            self.regs[self.pointer + i] = v
            if self.pointer + i == 0xF4 and v & 3 == 1:
                self._measure()

    def read_into(self, buf):
        for i in range(len(buf)):
            buf[i] = self.regs.get(self.pointer + i, 0)

    def _measure(self):
        now = self.clock()
        cal = self.cal
        adc_t = _invert(lambda a: t_fine(cal, a) / 5120.0, sensor_model.temperature_c(self.seed, now), 1 << 20)
        tf = t_fine(cal, adc_t)
        adc_p = _invert(lambda a: pressure_pa(cal, tf, a), sensor_signals.pressure_hpa(self.seed, now) * 100, 1 << 20,
                        rising=False)
        adc_h = _invert(lambda a: humidity_pct(cal, tf, a), sensor_model.humidity_pct(self.seed, now), 1 << 16)
        for i, v in enumerate((adc_p >> 12, adc_p >> 4 & 0xFF, (adc_p & 0xF) << 4, adc_t >> 12, adc_t >> 4 & 0xFF,
                               (adc_t & 0xF) << 4, adc_h >> 8, adc_h & 0xFF)):
            self.regs[0xF7 + i] = v


_model = []  # this board's BME280, made at its first access


def _device(addr):
    if addr != ADDRESS or _board.fault("bme280"):
        raise OSError(19)  # ENODEV: no ACK
    if not _model:
        _model.append(BME280(_board.sensor_seed, utime.time))
    return _model[0]


def writeto(addr, buf):
    """machine.I2C.writeto for any address but the SHT31's."""
    _device(addr).write(bytes(buf))
    return len(buf)


def readfrom_into(addr, buf):
    _device(addr).read_into(buf)
