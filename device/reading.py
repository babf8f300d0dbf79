# Ferry firmware: the canonical telemetry payload (docs/contract.md), written into one
# preallocated buffer. No allocation per reading: the heap test encodes under
# micropython.heap_lock(). All arithmetic stays below 2**30, the ESP32's small-int
# limit, so no big ints appear either: the Unix-epoch millisecond timestamp is
# written from (seconds since 2000, milliseconds) in pieces.
from micropython import const

BUFFER_BYTES = const(512)
MAX_METRICS = const(16)
_EPOCH_2000_HI = const(9466)  # 946_684_800 s = 9466 * 100_000 + 84_800
_EPOCH_2000_LO = const(84800)
_ZERO = const(48)

_TRUE = b"true"
_FALSE = b"false"


class MetricSet:
    """Names, fixed-point values and decimals of up to 16 metrics, preallocated."""

    def __init__(self, names, decimals):
        # names: bytes like b"temp_c"; decimals: digits after the point per metric.
        self.count = len(names)
        self.keys = [b'"' + n + b'":' for n in names]
        self.decimals = list(decimals)
        self.values = [0] * self.count  # value * 10**decimals, as small ints


class ReadingEncoder:
    """Writes `{"v":1,"dev":...,"m":{...},"bat":...,"rssi":...}` into `buf`."""

    def __init__(self, device_id):
        self.buf = bytearray(BUFFER_BYTES)
        self.view = memoryview(self.buf)
        self._head = b'{"v":1,"dev":"' + device_id + b'","boot":'
        self._digits = bytearray(12)

    def _put(self, pos, data):
        n = len(data)
        self.buf[pos:pos + n] = data
        return pos + n

    def _put_int(self, pos, value, width=0):
        # Decimal digits of a small int, zero-padded to `width`.
        buf = self.buf
        if value < 0:
            buf[pos] = 45  # '-'
            pos += 1
            value = -value
        digits = self._digits
        n = 0
        while True:
            digits[n] = _ZERO + value % 10
            value //= 10
            n += 1
            if value == 0 and n >= width:
                break
        while n:
            n -= 1
            buf[pos] = digits[n]
            pos += 1
        return pos

    def _put_fixed(self, pos, value, decimals):
        # value / 10**decimals with trailing zeros (and a bare point) removed.
        if decimals == 0:
            return self._put_int(pos, value)
        if value < 0:
            self.buf[pos] = 45
            pos += 1
            value = -value
        scale = 1
        for _ in range(decimals):
            scale *= 10
        pos = self._put_int(pos, value // scale)
        fraction = value % scale
        if fraction == 0:
            return pos
        while fraction % 10 == 0:
            fraction //= 10
            decimals -= 1
        self.buf[pos] = 46  # '.'
        return self._put_int(pos + 1, fraction, decimals)

    def encode(self, boot, seq, secs_2000, millis, synced, metrics, battery_mv=None, rssi_dbm=None):
        """Write one reading; returns its length. `secs_2000`/`millis` are the sample time:
        seconds since 2000-01-01 and 0-999 ms when `synced`, else seconds and ms since boot."""
        pos = self._put(0, self._head)
        pos = self._put_int(pos, boot)
        pos = self._put(pos, b',"seq":')
        pos = self._put_int(pos, seq)
        pos = self._put(pos, b',"ts":')
        if synced:
            hi = secs_2000 // 100000 + _EPOCH_2000_HI
            lo = secs_2000 % 100000 + _EPOCH_2000_LO
            if lo >= 100000:
                lo -= 100000
                hi += 1
            pos = self._put_int(pos, hi)
            pos = self._put_int(pos, lo, 5)
            pos = self._put_int(pos, millis, 3)
        elif secs_2000:
            pos = self._put_int(pos, secs_2000)
            pos = self._put_int(pos, millis, 3)
        else:
            pos = self._put_int(pos, millis)
        pos = self._put(pos, b',"sync":')
        pos = self._put(pos, _TRUE if synced else _FALSE)
        pos = self._put(pos, b',"m":{')
        keys = metrics.keys
        values = metrics.values
        decimals = metrics.decimals
        for i in range(metrics.count):
            if i:
                self.buf[pos] = 44  # ','
                pos += 1
            pos = self._put(pos, keys[i])
            pos = self._put_fixed(pos, values[i], decimals[i])
        self.buf[pos] = 125  # '}'
        pos += 1
        if battery_mv is not None:
            pos = self._put(pos, b',"bat":')
            pos = self._put_int(pos, battery_mv)
        if rssi_dbm is not None:
            pos = self._put(pos, b',"rssi":')
            pos = self._put_int(pos, rssi_dbm)
        self.buf[pos] = 125
        return pos + 1
