# Ferry firmware: over-the-air updates, the download's hot path (docs/ota.md). MicroPython.
#
# An operator offers a release with an `ota` command on .../cmd (the manifest's size, sha256
# and, when the board has a key, HMAC-SHA256; small enough for a command). The release then
# arrives as one byte stream of chunks on .../ota at QoS 1: the manifest first (offsets
# [0, manifest size)), then the files in the manifest's order. Each chunk is
#   [1: version 1][4: release tag, the manifest sha256's first 4 bytes][4: offset, big endian]
#   [4: CRC-32 of the data, big endian][data]
# and is written only when its offset is the next one the board needs and its CRC matches:
# appended to its file in /ota/stage (open, write, close: on littlefs the file then has the
# old or the new length, never a torn chunk). The next offset is always what the stage holds,
# so a reboot or a dropped link resumes where flash stopped. The board tells the operator the
# next offset it needs (a reply every few chunks, and at most once a second when a chunk does
# not fit), the operator sends a window ahead of it: go-back-N, no buffering of chunks that
# arrive early (they are dropped, the window is resent).
#
# Heap (docs/ota.md, "Heap"): this module and one Ota object stay loaded while a download runs,
# beside the running firmware, so they hold only what every chunk needs: the running hash, the
# offsets, the current file's name, size and sha256 (read from the stage's index file at each
# file boundary, not a list of every file). The rare moments (the offer, resuming after a reboot,
# the manifest's checks, the final read-back and the switch) are ota_stage.py's, imported for the
# call and dropped after it, as session.py does with session_connect.py.
import binascii
import gc
import hashlib
import json
import os
import sys
import time

from micropython import const

HDR = const(13)
VERSION = const(1)
STAGE = "/ota/stage"
MANIFEST = "manifest.json"
INDEX = "index"  # the checked manifest's files, "name size sha256" a line (no .py/.mpy: never a release file)
REPORT_EVERY = const(8)  # a progress reply every this many chunks taken
REPORT_GAP_MS = const(1000)  # at most one reply per second for chunks that do not fit


def max_chunk(topic_len, rx_bytes):
    """The largest data size a chunk may carry to a board whose receive buffer is rx_bytes (the
    PUBLISH: fixed header up to 3, topic length 2 + topic, packet id 2, chunk header), in 64s."""
    return (rx_bytes - 3 - 2 - topic_len - 2 - HDR) & ~63


def stage(name, *args):
    """ota_stage.<name>(*args): the module is imported for the call and dropped after it."""
    gc.collect()  # its bytecode then fills the heap from the lowest hole
    import ota_stage

    try:
        return getattr(ota_stage, name)(*args)
    finally:
        del sys.modules["ota_stage"]


def heap_free(o):
    """gc.mem_free() after a collection, kept in o.heap_low when lower: called at a download's peaks (the
    manifest parsed, the read-back, the switch; the app's heap_check covers the time between)."""
    gc.collect()
    f = gc.mem_free()
    if o.heap_low < 0 or f < o.heap_low:
        o.heap_low = f
    return f


def load_key():
    """The board's HMAC key (/ferry_ota.key, hex), or None when it has none."""
    return stage("load_key")


class Ota:
    """One board's download; `state`: idle, download, installed, current or failed."""

    def __init__(self, chunk_max, prepare=None, key=None, root=STAGE):
        self.chunk_max = chunk_max
        self.prepare = prepare  # called before the switch: flushes the outbox, returns its corrupt count
        self.key = key
        self.root = root
        self.state = "idle"
        self.cid = None
        self.ver = ""
        self.sha = ""  # the manifest's sha256, hex: the release
        self.tag = b""
        self.msize = 0
        self.mac = None  # the offered HMAC (hex)
        self.nfiles = -1  # files in the manifest, once it checked out (-1: not yet)
        self.next = 0
        self.total = 0
        self.fi = -1  # file being received (-1: the manifest)
        self.fstart = 0
        self.fname = MANIFEST  # the part being received: its name, size, sha256 (hex)
        self.fsize = 0
        self.fsha = ""
        self.h = None  # sha256 of the part being received
        self.hmac = None  # ota_stage.Hmac of the manifest, while it arrives (with a key)
        self.taken = 0
        self.last_report = None
        self.error = ""
        self.slot = ""
        self.heap_low = -1  # lowest free heap at the download's peaks (heap_free), -1: none yet

    # ---- replies ------------------------------------------------------------
    def reply(self, why=""):
        body = '"ota":"%s","rel":"%s","ver":%s,"next":%d,"total":%d,"chunk":%d,"mpy":%d' % (
            self.state, self.sha[:8], json.dumps(self.ver), self.next, self.total, self.chunk_max,
            getattr(sys.implementation, "_mpy", -1))
        if why:
            body += ',"why":%s' % json.dumps(why)
        if self.slot:
            body += ',"slot":"%s"' % self.slot
        if self.heap_low >= 0:
            body += ',"heap_low":%d' % self.heap_low
        return ('{"v":1,"id":%s,"ok":true,"result":{%s}}' % (json.dumps(self.cid), body)).encode()

    def fail(self, cid, msg):
        """Ends the download: the `ok` false reply (bytes)."""
        self.state = "failed"
        self.error = msg
        return ('{"v":1,"id":%s,"ok":false,"error":%s}' % (json.dumps(cid), json.dumps("ota: " + msg))).encode()

    # ---- the offer (the `ota` command), a reboot ---------------------------------
    def offer(self, cid, args):
        """The `ota` command's args: {"ver", "size", "sha256"[, "hmac"]}. Returns the reply."""
        return stage("offer", self, cid, args)

    def resume(self):
        """Pick up a download the stage holds (after a reboot). True when there is one."""
        return stage("resume", self)

    # ---- chunks ---------------------------------------------------------------
    def chunk(self, data, n, now):
        """One chunk from .../ota: data[:n] (a memoryview of the receive buffer). Returns a reply to
        publish, or None."""
        if self.state == "idle" and not self.resume():
            return None  # no download here (a late chunk of an update that is over)
        if self.state == "download" and self.fi >= self.nfiles >= 0:
            return self._complete()  # everything was on flash already (a cut before the switch)
        if self.state != "download" or n < HDR or data[0] != VERSION or not self._ours(data):
            return None  # another release's chunk, a malformed one: the operator goes by the replies
        off = (data[5] << 24) | (data[6] << 16) | (data[7] << 8) | data[8]
        k = n - HDR
        if off != self.next:
            return self._late(now, "offset %d" % off)
        if k == 0 or (self.nfiles >= 0 and off + k > self.total):
            return self._late(now, "length %d at %d" % (k, off))
        body = data[HDR:n]
        crc = binascii.crc32(body)
        if (crc >> 16) & 0xFFFF != (data[9] << 8 | data[10]) or crc & 0xFFFF != (data[11] << 8 | data[12]):
            return self._late(now, "crc at %d" % off)
        self.taken += 1
        pos = 0
        news = False  # the manifest checked out: say so (the total is known now)
        while pos < k:  # a chunk may end one part (the manifest, a file) and begin the next
            end = self.fstart + self.fsize
            take = end - self.next
            if take > k - pos:
                take = k - pos
            part = body[pos:pos + take]
            with open(self.root + "/" + self.fname, "ab") as f:
                f.write(part)
            self.h.update(part)
            if self.hmac is not None:
                self.hmac.update(part)
            self.next += take
            pos += take
            if self.next == end:
                at = self.next
                r = self._part_done()
                if self.state != "download" or self.next != at:
                    self.last_report = now
                    return r  # failed, installed, or back to a file's start: the rest is not taken
                news = news or r is not None
                if pos < k and self.next + k - pos > self.total:
                    return self._late(now, "length %d at %d" % (k, off))
        if news or self.taken % REPORT_EVERY == 0:
            self.last_report = now
            return self.reply()
        return None

    def _ours(self, data):
        t = self.tag
        return data[1] == t[0] and data[2] == t[1] and data[3] == t[2] and data[4] == t[3]

    def _late(self, now, why):
        """A chunk that does not fit: say where we are, at most once per REPORT_GAP_MS."""
        if self.last_report is not None and time.ticks_diff(now, self.last_report) < REPORT_GAP_MS:
            return None
        self.last_report = now
        return self.reply(why)

    def _part_done(self):
        """The manifest or a file is complete; None to go on, else a reply."""
        if self.fi < 0:
            if not stage("manifest_done", self):
                return self.fail(self.cid, self.error)
            return self.next_file(True)
        if binascii.hexlify(self.h.digest()).decode() != self.fsha:
            os.remove(self.root + "/" + self.fname)  # start the file again
            self.next = self.fstart
            self.h = hashlib.sha256()
            return self.reply("sha256 of %s" % self.fname)
        self.fstart += self.fsize
        self.fi += 1
        return self.next_file(None)

    def next_file(self, news):
        """Make self.fi's entry the part being received (empty files are created at once); the switch
        when there is none left. A reply, or None."""
        while self.fi < self.nfiles:
            self.entry(self.fi)
            if self.fsize:
                return self.reply() if news else None
            open(self.root + "/" + self.fname, "wb").close()  # an empty file: nothing comes
            self.fi += 1
        return self._complete()

    def entry(self, i):
        """File i of the checked manifest (the stage's index) as the part being received."""
        with open(self.root + "/" + INDEX) as f:
            for _ in range(i):
                f.readline()
            name, size, sha = f.readline().split()
        self.fname = name
        self.fsize = int(size)
        self.fsha = sha
        self.h = hashlib.sha256()

    def _complete(self):
        """Every byte is in: read each file back from flash, then switch (ota_stage.complete)."""
        return stage("complete", self)
