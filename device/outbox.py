# Ferry's power-loss-safe outbox: every reading is on flash before it is sent
# (MicroPython code: ESP32 v1.22+ and the unix port). docs/outbox.md has the
# design, the measured costs and the exact meaning of every counter.
#
# Records live in fixed-size slots in a ring of K append-only segment files
# "<prefix>.0" .. "<prefix>.<K-1>", each holding S slots. Record number `lsn`
# (0, 1, 2, ... over the outbox's life) sits in file (lsn // S) % K at byte
# (lsn % S) * slot_size. A segment file is only ever truncated (when the ring
# comes back to it) and appended to, never rewritten in the middle: littlefs
# copies everything after a mid-file write, so an in-place ring in one big
# file costs ~30x the erases. Appends are staged in RAM and written N at a
# time (or after T ms) with one write + sync per segment touched.
#
# The head (next lsn to write) is always found by scanning slot CRCs, never
# trusted from a pointer, so a torn flush is detected. The tail (oldest not
# yet acknowledged), the loss mark and the counters are the "state": 52 bytes
# written to RTC memory on every change and to "<prefix>.st" (two alternating
# copies) on every append (count_losses) or every `ack_persist_every` acks.
#
# Heap: the hot path (append, read_into, ack_oldest) allocates nothing but the
# memoryview read_into returns. MicroPython puts a function's frame on the
# heap when its locals + stack pass 11 words, so hot methods stay small. No
# value on it reaches 2**30 (a heap object on an ESP32, whose small ints have
# 31 bits): the CRC-32 is computed in two 16-bit halves (binascii.crc32 returns
# one 32-bit int), the same CRC-32 as before, so files on flash stay readable.
# The start-up (state load, head scan, loss count) is outbox_open.py's: imported by
# the constructor and dropped after it, so its bytecode is not on the heap afterwards.
import struct
import sys
import time
from array import array

from micropython import const

HEADER_SIZE = const(20)  # the payload starts here in a slot buffer
_MAGIC = const(0xF0B1)
_ST_SIZE = const(52)  # the state: 13 little-endian 32-bit words, the first its CRC
_F_MARKS = const(1)  # the state was written with count_losses on: its mark is exact
_F_CLEAN = const(2)  # nothing was staged when the state was written: its mark is exact
# CRC-32 (zlib's, binascii.crc32's) state after 4 zero bytes, in halves: a record's and the
# state's CRC covers the buffer with its first 4 bytes (where the CRC goes) taken as zero.
_CRC_ZERO4_LO = const(0x20E3)
_CRC_ZERO4_HI = const(0xDEBB)


# The CRC-32 table (polynomial 0xEDB88320) for 4 bits at a time, as low and high 16-bit halves:
# 64 bytes of heap instead of 1 KB for a byte-wise table, at about twice the time per byte.
_CRC_LO = array("H", (0x0000, 0x1064, 0x20C8, 0x30AC, 0x4190, 0x51F4, 0x6158, 0x713C,
                      0x8320, 0x9344, 0xA3E8, 0xB38C, 0xC2B0, 0xD2D4, 0xE278, 0xF21C))
_CRC_HI = array("H", (0x0000, 0x1DB7, 0x3B6E, 0x26D9, 0x76DC, 0x6B6B, 0x4DB2, 0x5005,
                      0xEDB8, 0xF00F, 0xD6D6, 0xCB61, 0x9B64, 0x86D3, 0xA00A, 0xBDBD))
_CRC = bytearray(4)  # the CRC _crc computed last, little-endian as stored


def _crc(buf, n):
    """CRC-32 of buf[:n] with buf[0:4] read as zero, into _CRC: in 16-bit halves, so no
    intermediate value reaches 2**30 and nothing is allocated (7 locals: the frame stays on the stack)."""
    lo = _CRC_ZERO4_LO
    hi = _CRC_ZERO4_HI
    for i in range(4, n):
        lo ^= buf[i]
        x = lo & 0xF
        lo = (lo >> 4 | (hi & 0xF) << 12) ^ _CRC_LO[x]
        hi = hi >> 4 ^ _CRC_HI[x]
        x = lo & 0xF
        lo = (lo >> 4 | (hi & 0xF) << 12) ^ _CRC_LO[x]
        hi = hi >> 4 ^ _CRC_HI[x]
    _CRC[0] = lo & 0xFF ^ 0xFF
    _CRC[1] = lo >> 8 ^ 0xFF
    _CRC[2] = hi & 0xFF ^ 0xFF
    _CRC[3] = hi >> 8 ^ 0xFF


def _seal(buf, n):
    """Write the CRC-32 of buf[:n] (its first 4 bytes as zero) into buf[0:4]."""
    _crc(buf, n)
    buf[0:4] = _CRC


def _sealed(buf, n):
    """True when buf[0:4] is the CRC-32 of buf[:n] with those bytes zero."""
    _crc(buf, n)
    return buf[0] == _CRC[0] and buf[1] == _CRC[1] and buf[2] == _CRC[2] and buf[3] == _CRC[3]


def _u32(b, o):
    """A little-endian 32-bit field; a heap object on an ESP32 from 2**30 on (not for CRCs)."""
    return b[o] | b[o + 1] << 8 | b[o + 2] << 16 | b[o + 3] << 24


def _put(b, o, v):
    struct.pack_into("<I", b, o, v)


class Outbox:
    """A bounded, drop-oldest, power-loss-safe FIFO of readings on flash.

    prefix: path prefix of the files, e.g. "/data/ob" (the folder must exist).
    capacity: at least this many unacknowledged readings are kept; the ring
      has ceil(capacity / segment_slots) + 1 segment files.
    slot_size: bytes per record on flash, header included (payloads up to
      slot_size - HEADER_SIZE; bigger ones raise ValueError).
    flush_every / flush_interval_ms: staged readings are flushed when there
      are this many, or when the oldest has waited this long (checked by
      append() and poll()).
    segment_slots: slots per segment file; a full ring drops a whole segment.
    ack_persist_every: the tail goes to flash at least every this many acks
      (it goes to RTC memory on every ack).
    rtc: an object with memory() / memory(buf) like machine.RTC, or None.
    count_losses: write the state to flash on every append, so that readings
      lost unflushed in a power cut are counted exactly (docs/outbox.md).
    The geometry (slot_size, segment_slots, capacity) must not change while
    files exist: wipe the outbox to change it.
    """

    def __init__(self, prefix, capacity=1000, slot_size=256, flush_every=10,
                 flush_interval_ms=5000, segment_slots=40, ack_persist_every=10,
                 rtc=None, count_losses=True):
        if slot_size < 32 or flush_every < 1 or segment_slots < 1 or capacity < 1:
            raise ValueError("outbox: bad size")
        self._prefix = prefix
        self._slot_size = slot_size
        self._segment_slots = segment_slots
        self._segment_files = (capacity + segment_slots - 1) // segment_slots + 1
        self._flush_every = flush_every
        self._interval = flush_interval_ms
        self._ack_every = ack_persist_every
        self._rtc = rtc
        self._flags = _F_MARKS if count_losses else 0
        self.max_payload = slot_size - HEADER_SIZE
        # Preallocated buffers: the hot path allocates nothing else.
        self._stage = bytearray(flush_every * slot_size)
        self._stage_mv = memoryview(self._stage)
        self._slot = bytearray(slot_size)  # the record being built
        self._state = bytearray(_ST_SIZE)  # the state, as written
        self._staged = 0  # slots in _stage ...
        self._done = 0  # ... of which the first _done are on flash (a flush failed midway)
        self._t_staged = 0
        self._prev_len = slot_size - HEADER_SIZE
        self._head_file = None  # head segment file, open r+b / w+b
        self._head_segment = -1
        self._reader_file = None  # reader cache for one older segment
        self._reader_segment = -1
        self._read_buffer = self._read_view = None  # the last read_into buffer and a memoryview of it
        # Counters (docs/outbox.md says exactly what each one counts).
        self.dropped = 0
        self.corrupt = 0
        self.lost_unflushed = 0
        self.loss_unknown = 0
        self.last_loss = None  # (boot, first seq, last seq) lost unflushed, found at this start
        self.flash_writes = 0
        self.flash_bytes = 0
        self.state_writes = 0
        self.state_bytes = 0
        self.flush_errors = 0  # flushes that failed inside append() (retried by the next one)
        self.recovered_from = ""  # "rtc", "flash" or "new"
        self.rec_boot = self.rec_seq = self.rec_lsn = -1
        import outbox_open

        try:
            outbox_open.open_outbox(self)
        finally:
            del sys.modules["outbox_open"]  # start-up code only: garbage from the next collection on

    # ---- files ---------------------------------------------------------
    def _name(self, idx):
        return "%s.%s" % (self._prefix, idx)

    def _file(self, seg):
        """An open file holding segment `seg` (the head file when it is the head segment)."""
        if seg == self._head_segment and self._head_file is not None:
            return self._head_file
        if seg != self._reader_segment:
            return self._open_reader(seg)
        return self._reader_file

    def _open_reader(self, seg):
        self._close_reader()
        try:
            self._reader_file = open(self._name(seg % self._segment_files), "rb")
        except OSError:
            return None
        self._reader_segment = seg
        return self._reader_file

    def _close_reader(self):
        if self._reader_file is not None:
            self._reader_file.close()
            self._reader_file = None
        self._reader_segment = -1

    def _read_slot(self, lsn, buf):
        """Read slot `lsn` into buf (slot_size bytes); True when it holds valid record `lsn`."""
        f = self._file(lsn // self._segment_slots)
        if f is None:
            return False
        f.seek((lsn % self._segment_slots) * self._slot_size)
        return f.readinto(buf) == self._slot_size and self._valid(buf, lsn)

    def _valid(self, buf, lsn):
        if buf[4] | buf[5] << 8 != _MAGIC or buf[6] | buf[7] << 8 > self.max_payload or buf[11] > 0x3F:
            return False  # lsn is below 2**30: _u32 stays a small int
        return _u32(buf, 8) == lsn and _sealed(buf, self._slot_size)

    # ---- state ---------------------------------------------------------
    def _save(self, flash, flags=0):
        """Write the state to RTC memory and, when `flash`, to the state file."""
        if not flash and self._rtc is None:
            return
        self._gen += 1
        self._words(flags)
        _seal(self._state, _ST_SIZE)
        if self._rtc is not None:
            self._rtc.memory(self._state)
        if flash:
            self._write_state(flags)

    def _words(self, flags):
        # Words 1 (magic) and 2 (epoch) are written once, by _open.
        v = self._state
        _put(v, 12, self._gen)
        _put(v, 16, self._tail)
        _put(v, 20, self._mark)
        _put(v, 24, self._mark_boot)
        _put(v, 28, self._mark_seq)
        _put(v, 32, self.dropped)
        _put(v, 36, self.lost_unflushed)
        _put(v, 40, self.corrupt)
        _put(v, 44, self._flags | flags)
        _put(v, 48, self.loss_unknown)

    def _write_state(self, flags):
        f = self._state_file
        f.seek((self._gen & 1) * _ST_SIZE)  # two copies: a torn write leaves the other
        f.write(self._state)
        f.flush()
        self.state_writes += 1
        self.state_bytes += _ST_SIZE
        self._ftail = self._tail
        self._acks = 0
        self._clean = flags & _F_CLEAN

    # ---- writing -------------------------------------------------------
    def append(self, boot, seq, payload):
        """Accept one reading (payload: bytes-like), or raise and accept nothing.

        The reading is staged in RAM; staged readings are flushed when there are
        flush_every of them or the oldest waited flush_interval_ms. A flush that
        fails after the reading was accepted is counted in flush_errors and
        retried by the next append, which raises if it fails again.
        """
        if self._staged >= self._flush_every:
            self.flush()  # a flush failed: finish it before accepting more
        n = self._check(payload)
        self._mark_boot = boot
        self._mark_seq = seq
        self._build(payload, n)
        self._mark = self._head + self._staged - self._done + 1
        # The flash state must stop claiming "nothing staged" before a reading can be lost.
        self._save(self._flags or self._clean)
        self._stage_slot()
        if self._staged >= self._flush_every or self._due(time.ticks_ms()) <= 0:
            self._flush_accepted()

    def _flush_accepted(self):
        try:
            self.flush()
        except OSError:  # no "as e": binding it would put this frame on the heap
            self.flush_errors += 1

    def _check(self, payload):
        if isinstance(payload, str):
            raise TypeError("outbox: payload must be bytes")
        n = len(payload)
        if n > self.max_payload:
            raise ValueError("outbox: payload too big for a slot")
        return n

    def _build(self, payload, n):
        """Make the record (_mark_boot, _mark_seq, payload) in self._slot."""
        s = self._slot
        s[HEADER_SIZE:HEADER_SIZE + n] = payload
        self._pad(n)
        self._header(n)

    def _pad(self, n):
        """Zero what a longer previous payload left after this one."""
        s = self._slot
        for i in range(HEADER_SIZE + n, HEADER_SIZE + self._prev_len):
            s[i] = 0
        self._prev_len = n

    def _header(self, n):
        s = self._slot
        _put(s, 4, _MAGIC | n << 16)
        _put(s, 8, self._head + self._staged - self._done)
        _put(s, 12, self._mark_boot)
        _put(s, 16, self._mark_seq)
        _seal(s, self._slot_size)

    def _stage_slot(self):
        o = self._staged * self._slot_size
        self._stage[o:o + self._slot_size] = self._slot
        if self._staged == self._done:
            self._t_staged = time.ticks_ms()
        self._staged += 1

    def poll(self, now_ms=None):
        """Flush if the oldest staged reading waited flush_interval_ms; ms until the next due, -1 if none."""
        if self._staged == self._done:
            return -1
        left = self._due(time.ticks_ms() if now_ms is None else now_ms)
        if left > 0:
            return left
        self.flush()
        return -1

    def _due(self, now_ms):
        """ms until the staged readings are due for a flush (<= 0: now)."""
        if self._staged == self._done:
            return 1
        return self._interval - time.ticks_diff(now_ms, self._t_staged)

    def flush(self):
        """Write every staged reading to flash: one write + sync per segment file touched."""
        n = self._staged - self._done
        while self._done < self._staged:
            self._write_run()  # _done and _head advance only past what was written
        self._staged = self._done = 0
        return n

    def _write_run(self):
        """Write the staged slots that go to the head segment file."""
        lsn = self._head
        off = lsn % self._segment_slots
        if off == 0:
            self._start_segment(lsn // self._segment_slots)
        k = self._staged - self._done
        if k > self._segment_slots - off:
            k = self._segment_slots - off
        self._head_file.seek(off * self._slot_size)
        self._write_slots(k)
        self._head = lsn + k

    def _write_slots(self, k):
        a = self._done * self._slot_size
        b = a + k * self._slot_size
        f = self._head_file
        f.write(self._stage_mv[a:b])
        f.flush()  # littlefs: commit; unix port: fsync
        self.flash_writes += 1
        self.flash_bytes += b - a
        self._done += k

    def _start_segment(self, seg):
        """Make segment `seg` the head: drop (and count) unacked readings in the file it reuses."""
        keep = (seg - (self._segment_files - 1)) * self._segment_slots  # oldest lsn that survives
        if self._tail < keep:
            self.dropped += keep - self._tail
            self._tail = keep
        if self._ftail < keep:  # the state on flash must not point into the file we truncate
            self._save(True)
        if self._head_file is not None:
            self._head_file.close()
            self._head_file = None
        if self._reader_segment >= 0 and self._reader_segment % self._segment_files == seg % self._segment_files:
            self._close_reader()
        self._head_segment = seg
        self._head_file = open(self._name(seg % self._segment_files), "w+b")

    # ---- reading and acknowledging ---------------------------------------
    def pending(self):
        """Readings on flash not yet acknowledged (what may be sent)."""
        return self._head - self._tail

    def staged(self):
        """Readings in RAM waiting for the next flush (not sendable yet)."""
        return self._staged - self._done

    def record_buffer(self):
        """A buffer of the right size for read_into (allocate it once)."""
        return bytearray(self._slot_size)

    def read_into(self, i, buf):
        """The payload of the i-th pending reading (0 = oldest) as a memoryview into buf.

        buf is a bytearray(slot_size); rec_boot, rec_seq and rec_lsn are set.
        A corrupt oldest reading is skipped and counted in `corrupt`; a corrupt
        later one, or skipping past the last, gives None.
        """
        if i < 0 or self._tail + i >= self._head:
            raise IndexError("outbox: no such pending reading")
        while True:
            lsn = self._tail + i
            if lsn >= self._head:
                return None
            if self._read_slot(lsn, buf):
                break
            if i:
                return None
            self.corrupt += 1
            self._advance()
        self.rec_lsn = lsn
        self.rec_boot = _u32(buf, 12)
        self.rec_seq = _u32(buf, 16)
        return self._payload(buf)

    def _payload(self, buf):
        if buf is not self._read_buffer:  # one memoryview per caller buffer, not per read
            self._read_buffer = buf
            self._read_view = memoryview(buf)
        return self._read_view[HEADER_SIZE:HEADER_SIZE + (buf[6] | buf[7] << 8)]

    def ack_oldest(self):
        """PUBACK of the oldest pending reading (the caller keeps the order); False if none."""
        if self._tail >= self._head:
            return False
        self._advance()
        return True

    def _advance(self):
        self._tail += 1
        self._acks += 1
        self._save(self._acks >= self._ack_every)

    @property
    def head(self):
        """The lsn the next flushed reading gets."""
        return self._head

    @property
    def tail(self):
        """The lsn of the oldest pending reading."""
        return self._tail

    def lost_total(self):
        """Readings the device itself lost: the status payload's outbox.dropped."""
        return self.dropped + self.corrupt + self.lost_unflushed

    # ---- shutdown ------------------------------------------------------
    def persist(self):
        """Write the state to flash now (before deep sleep: a power cut there clears RTC memory)."""
        self._save(True, 0 if self._staged > self._done else _F_CLEAN)

    def close(self):
        """Flush, persist and close the files (call before deep sleep)."""
        self.flush()
        self.persist()
        for f in (self._head_file, self._reader_file, self._state_file):
            if f is not None:
                f.close()
        self._head_file = self._reader_file = self._state_file = None
        self._head_segment = self._reader_segment = -1
