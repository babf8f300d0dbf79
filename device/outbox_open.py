# Ferry's outbox at start-up (MicroPython): find the head on flash, load the newest valid
# state (state file or RTC memory), count what a power cut lost, open the files.
#
# Run once, by Outbox() (outbox.py), which then drops this module from sys.modules: its
# bytecode is garbage from the next collection on, heap the running firmware gets back
# (docs/device.md, "Heap"). Allocates freely: start-up only.
import os
import struct
import time

from micropython import const

from outbox import _sealed, _u32

_ST_MAGIC = const(0x3142_4F46)  # b"FOB1"
_ST_SIZE = const(52)
_F_MARKS = const(1)  # the same flags as outbox.py's
_F_CLEAN = const(2)


def _parse(b):
    """The state words after the magic (epoch, gen, ...) from 52 bytes, or None if not valid."""
    if b is None or len(b) < _ST_SIZE:
        return None
    b = bytearray(b[:_ST_SIZE])
    if _u32(b, 4) != _ST_MAGIC or not _sealed(b, _ST_SIZE):
        return None
    return struct.unpack_from("<IIIIIIIIIII", b, 8)

def _load_state(ob):
    """(state, source): the newest valid state from the state file and RTC memory."""
    best = None
    try:
        with open(ob._name("st"), "rb") as f:
            data = f.read()
        for i in (0, 1):
            s = _parse(data[i * _ST_SIZE:])
            if s is not None and (best is None or s[1] > best[1]):
                best = s
    except OSError:
        pass
    src = "flash"
    if best is not None and ob._rtc is not None:
        try:
            s = _parse(ob._rtc.memory())
        except (OSError, ValueError, TypeError):
            s = None
        # RTC memory is believed for the same outbox (epoch) only, and when newer.
        if s is not None and s[0] == best[0] and s[1] >= best[1]:
            best, src = s, "rtc"
    return best, src

# ---- start-up ------------------------------------------------------
def _first_valid(ob, idx, buf):
    """The lsn of the first valid slot in segment file `idx`, or -1."""
    slots = ob._segment_slots
    try:
        f = open(ob._name(idx), "rb")
    except OSError:
        return -1
    try:
        for j in range(slots):
            if f.readinto(buf) != ob._slot_size:
                break
            lsn = _u32(buf, 8)
            if lsn % slots == j and (lsn // slots) % ob._segment_files == idx and ob._valid(buf, lsn):
                return lsn
    finally:
        f.close()
    return -1

def _find_head(ob, buf):
    """The next lsn to write: after the last valid slot of the newest segment.

    A slot that fails its CRC before a valid one is corruption, not the end:
    segment files are only appended to, so the end is the last valid slot.
    """
    best = -1
    for idx in range(ob._segment_files):
        lsn = _first_valid(ob, idx, buf)
        if lsn > best:
            best = lsn
    if best < 0:
        return 0
    h = best + 1
    for lsn in range(best + 1, (best // ob._segment_slots + 1) * ob._segment_slots):
        if ob._read_slot(lsn, buf):
            h = lsn + 1
    return h

def _oldest(ob, head, buf):
    """The oldest lsn still on flash (segments older than the ring, or truncated, are gone)."""
    if head == 0:
        return 0
    slots = ob._segment_slots
    head_segment = (head - 1) // slots
    segment = head_segment - (ob._segment_files - 1)
    if segment < 0:
        segment = 0
    while segment < head_segment and _first_valid(ob, segment % ob._segment_files, buf) // slots != segment:
        segment += 1
    return segment * slots

def open_outbox(ob):
    st, src = _load_state(ob)
    scan = bytearray(ob._slot_size)  # start-up scans only: garbage after
    head = _find_head(ob, scan)
    oldest = _oldest(ob, head, scan)
    ob._close_reader()
    ob._head = head
    ob._acks = 0
    if st is None:
        ob.recovered_from = "new"
        ob._epoch = _u32(os.urandom(4), 0) if hasattr(os, "urandom") else time.ticks_ms()
        ob._gen = 0
        ob._tail = oldest
        if head:  # records without a state: re-presented from the oldest; losses unknown
            ob.loss_unknown = 1
    else:
        ob.recovered_from = src
        (ob._epoch, ob._gen, tail, mark, mark_boot, mark_seq, ob.dropped,
         ob.lost_unflushed, ob.corrupt, flags, ob.loss_unknown) = st
        if tail < oldest:  # a drop whose state write was cut off
            ob.dropped += oldest - tail
            tail = oldest
        ob._tail = tail if tail <= head else head
        n = mark - head  # readings marked as appended that are not on flash
        if src == "rtc" or flags & (_F_MARKS | _F_CLEAN):
            if n > 0:
                ob.lost_unflushed += n
                ob.last_loss = (mark_boot, mark_seq - n + 1, mark_seq)
        else:  # a power cut with count_losses off: some staged readings may be gone
            if n > 0:
                ob.lost_unflushed += n
            ob.loss_unknown += 1
    ob._mark = head
    ob._mark_boot = ob._mark_seq = 0
    struct.pack_into("<II", ob._state, 4, _ST_MAGIC, ob._epoch)  # never change: not in _words
    name = ob._name("st")
    try:
        ob._state_file = open(name, "r+b")
    except OSError:
        ob._state_file = open(name, "w+b")
        ob._state_file.write(bytearray(2 * _ST_SIZE))
    ob._save(True, _F_CLEAN)  # nothing is staged yet
    if head % ob._segment_slots:
        ob._head_segment = head // ob._segment_slots
        ob._head_file = open(ob._name(ob._head_segment % ob._segment_files), "r+b")

