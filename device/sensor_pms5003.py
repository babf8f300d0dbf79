# Ferry firmware: Plantower PMS5003 particulate matter on a UART, 9600 8N1 (MicroPython).
# The sensor's default active mode: it sends a 32-byte frame on its own every 0.2-2.3 s
# (0x42 0x4d, length 28, 13 big-endian data words, checksum = sum of the 30 bytes before it).
# read() takes what the UART has received without waiting, keeps the latest frame whose
# checksum is right and reports its atmospheric PM1.0/PM2.5/PM10 (data words 4-6, ug/m3).
# Garbage and broken frames are skipped (each counted in `errors`); the parser then looks
# for the next 0x42 0x4d, also inside the rejected bytes.
import time

from micropython import const

NAMES = ("pm1_0_ugm3", "pm2_5_ugm3", "pm10_ugm3")
DECIMALS = (0, 0, 0)
_FRAME = const(32)
_LENGTH = const(28)
_STALE_MS = const(5000)  # no good frame for this long: the sensor is silent (an error)
_MAX_READS = const(8)  # UART reads per read(): at most 8 x 64 bytes, so a flood cannot hold up the loop


class Sensor:
    def __init__(self, uart, spec):
        self.uart = uart
        self.chunk = bytearray(64)
        self.frame = bytearray(_FRAME)
        self.pos = 0
        self.pm = [0, 0, 0]
        self.good = -1  # ticks_ms of the latest good frame; -1: none yet
        self.since = time.ticks_ms()
        self.errors = 0
        self.frames = 0

    def read(self, values, at):
        self.drain()
        now = time.ticks_ms()
        if self.good == -1:  # the fan starts at power-on: no frame yet is no error at first
            return None if time.ticks_diff(now, self.since) < _STALE_MS else False
        if time.ticks_diff(now, self.good) >= _STALE_MS:
            return False
        pm = self.pm
        values[at] = pm[0]
        values[at + 1] = pm[1]
        values[at + 2] = pm[2]
        return True

    def drain(self):
        """Parse what the UART holds (at most _MAX_READS chunks)."""
        for _ in range(_MAX_READS):
            n = self.uart.readinto(self.chunk)
            if not n:
                return
            for i in range(n):
                self.feed(self.chunk[i])

    def feed(self, b):
        """One received byte."""
        f = self.frame
        pos = self.pos
        if pos == 0 and b != 0x42 or pos == 1 and b != 0x4D:
            self.pos = 0
            if pos:  # 0x42 then not 0x4d: a broken start
                self.errors += 1
                if b == 0x42:
                    f[0] = b
                    self.pos = 1
            return
        f[pos] = b
        pos += 1
        self.pos = pos
        if pos == 4 and (f[2] << 8 | f[3]) != _LENGTH:
            self.reject()
        elif pos == _FRAME:
            self.pos = 0
            if self.check():
                self.frames += 1
                self.good = time.ticks_ms()
                for i in range(3):
                    self.pm[i] = f[10 + 2 * i] << 8 | f[11 + 2 * i]
            else:
                self.reject()

    def check(self):
        f = self.frame
        total = 0
        for i in range(_FRAME - 2):
            total += f[i]
        return total == (f[_FRAME - 2] << 8 | f[_FRAME - 1])

    def reject(self):
        """A frame with a bad length or checksum: counted, then the parser starts again at the next
        0x42 0x4d among the bytes after its start (a frame cut short by the next one is not lost)."""
        self.errors += 1
        f = self.frame
        n = self.pos if self.pos else _FRAME
        self.pos = 0
        for k in range(1, n):
            if f[k] == 0x42 and (k + 1 == n or f[k + 1] == 0x4D):
                for j in range(n - k):
                    f[j] = f[k + j]
                self.pos = n - k
                if self.pos >= 4 and (f[2] << 8 | f[3]) != _LENGTH:
                    self.reject()
                return
