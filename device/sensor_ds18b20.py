# Ferry firmware: Maxim DS18B20 temperature on OneWire (MicroPython's frozen `onewire` and
# `ds18x20` modules). The first DS18B20 the bus search finds; 12-bit conversions, which take
# up to 750 ms: read() collects the conversion started at the previous read and starts the
# next one, so a read never waits. Faster than that, it repeats the last value.
import time

from micropython import const

NAMES = ("temp_c",)
DECIMALS = (2,)
_CONVERT_MS = const(750)  # datasheet t_CONV at 12 bits


def centi_c(buf):
    """Scratchpad bytes 0-1 (1/16 degC, two's complement) -> centi-degC, half away from zero."""
    t = buf[1] << 8 | buf[0]
    if t & 0x8000:
        return -(((0x10000 - t) * 25 + 2) // 4)
    return (t * 25 + 2) // 4


class Sensor:
    def __init__(self, ds, spec):
        self.ds = ds  # ds18x20.DS18X20(onewire.OneWire(Pin(spec["pin"])))
        self.rom = None
        self.started = -1  # ticks_ms of the conversion in progress; -1: none
        self.last = None
        self.errors = 0

    def read(self, values, at):
        ds = self.ds
        if self.rom is None:
            roms = ds.scan()
            if not roms:
                raise OSError(19)  # no DS18B20 answers the search
            self.rom = roms[0]
        started = self.started
        if started == -1 or time.ticks_diff(time.ticks_ms(), started) >= _CONVERT_MS:
            self.started = -1  # a failure below: the next read starts over with a new conversion
            self.last = None
            if started != -1:
                self.last = centi_c(ds.read_scratch(self.rom))  # CRC-8 checked: raises on a mismatch
            ds.convert_temp()
            self.started = time.ticks_ms()
        if self.last is None:
            return None  # the first conversion is still running: no value yet, not an error
        values[at] = self.last
        return True
