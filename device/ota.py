# Ferry firmware: over-the-air updates, the download (docs/ota.md). MicroPython.
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
# Checks: every chunk's CRC; the manifest against the offered sha256 (and HMAC with the key in
# /ferry_ota.key), before any file byte is taken; each file's sha256 as its last chunk arrives
# (a mismatch drops the file, the download goes back to its start); then every file read back
# from flash once more before boot_select.install() renames the stage to an app folder.
#
# Pure apart from the flash: bytes in, reply bytes out. Imported only when an update arrives.
import binascii
import hashlib
import json
import os
import time

from micropython import const

import ota_trial

HDR = const(13)
VERSION = const(1)
STAGE = "/ota/stage"
OFFER = "/ota/stage/offer"
MANIFEST = "manifest.json"
KEY_PATH = "/ferry_ota.key"
MAX_MANIFEST = const(4096)
MAX_FILES = const(64)
MAX_NAME = const(32)
REPORT_EVERY = const(8)  # a progress reply every this many chunks taken
REPORT_GAP_MS = const(1000)  # at most one reply per second for chunks that do not fit
_NAME_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."


def max_chunk(topic_len, rx_bytes):
    """The largest data size a chunk may carry to a board whose receive buffer is rx_bytes (the
    PUBLISH: fixed header up to 3, topic length 2 + topic, packet id 2, chunk header), in 64s."""
    return (rx_bytes - 3 - 2 - topic_len - 2 - HDR) & ~63


def _u32(b, o):
    return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]


def _hex(digest):
    return binascii.hexlify(digest).decode()


def _bs():
    return ota_trial.bs()


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def load_key(path=KEY_PATH):
    """The board's HMAC key (hex on flash), or None when it has none."""
    try:
        with open(path) as f:
            return binascii.unhexlify(f.read().strip())
    except (OSError, ValueError):
        return None


class Hmac:
    """HMAC-SHA256 over hashlib.sha256 (MicroPython has no hmac module; RFC 2104)."""

    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        k = bytearray(64)
        k[:len(key)] = key
        self._outer = bytes(b ^ 0x5C for b in k)
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in k))

    def update(self, data):
        self._inner.update(data)

    def digest(self):
        return hashlib.sha256(self._outer + self._inner.digest()).digest()


class Ota:
    """One board's download; `state`: idle, download, installed or failed."""

    def __init__(self, chunk_max, prepare=None, key=None, root=STAGE):
        self.chunk_max = chunk_max
        self._prepare = prepare  # called before the switch: flushes the outbox, returns its corrupt count
        self.key = key
        self.root = root
        self.buf = bytearray(256)  # reading staged files back
        self.state = "idle"
        self.cid = None
        self.ver = ""
        self.sha = ""  # the manifest's sha256, hex: the release
        self.tag = b""
        self.msize = 0
        self.mac = None
        self.files = None  # [(name, size, sha256 hex)] once the manifest checked out
        self.next = 0
        self.total = 0
        self.fi = -1  # file being received (-1: the manifest)
        self.fstart = 0
        self._h = None
        self._m = None
        self.taken = 0
        self._last_report = None
        self.error = ""
        self.slot = ""

    # ---- replies ------------------------------------------------------------
    def _reply(self, why=""):
        body = '"ota":"%s","rel":"%s","ver":%s,"next":%d,"total":%d,"chunk":%d,"mpy":%d' % (
            self.state, self.sha[:8], json.dumps(self.ver), self.next, self.total, self.chunk_max, _board_mpy())
        if why:
            body += ',"why":%s' % json.dumps(why)
        if self.slot:
            body += ',"slot":"%s"' % self.slot
        return ('{"v":1,"id":%s,"ok":true,"result":{%s}}' % (json.dumps(self.cid), body)).encode()

    def _fail(self, cid, msg):
        self.state = "failed"
        self.error = msg
        return '{"v":1,"id":%s,"ok":false,"error":%s}' % (json.dumps(cid), json.dumps("ota: " + msg))

    def fail(self, cid, msg):
        return self._fail(cid, msg).encode()

    # ---- the offer (the `ota` command) -----------------------------------------
    def offer(self, cid, args):
        """The `ota` command's args: {"ver", "size", "sha256"[, "hmac"]}. Returns the reply."""
        ver = args.get("ver")
        size = args.get("size")
        sha = args.get("sha256")
        mac = args.get("hmac")
        if not isinstance(ver, str) or not 1 <= len(ver) <= 32:
            return self.fail(cid, "args.ver: a string of 1-32 characters")
        if not isinstance(size, int) or not 2 <= size <= MAX_MANIFEST:
            return self.fail(cid, "args.size: the manifest's size, 2..%d" % MAX_MANIFEST)
        if not _is_hex(sha, 64):
            return self.fail(cid, "args.sha256: 64 hex digits")
        if mac is not None and not _is_hex(mac, 64):
            return self.fail(cid, "args.hmac: 64 hex digits")
        if self.key is not None and mac is None:
            return self.fail(cid, "args.hmac: required (this board has a key)")
        if _bs().trial() is not None:
            return self.fail(cid, "busy: a trial is running")
        if self.state in ("download", "installed") and self.sha == sha:
            self.cid = cid  # the operator asks again: where are we
            return self._reply()
        bs = _bs()
        here = _read_offer(bs.slot_dir(bs.running()) if bs.running() else self.root + "/-")
        if here is not None and here.get("sha256") == sha:
            self.cid = cid
            self.ver = ver
            self.sha = sha
            self.state = "current"  # this release is what runs
            return self._reply()
        old = _read_offer(self.root)
        if old is None or old.get("sha256") != sha:
            rmtree(self.root)
            _mkdirs(self.root)
            with open(self.root + "/offer", "w") as f:
                f.write(json.dumps({"cid": cid, "ver": ver, "size": size, "sha256": sha, "hmac": mac}))
        elif old.get("cid") != cid:
            old["cid"] = cid
            with open(self.root + "/offer", "w") as f:
                f.write(json.dumps(old))
        self.error = ""
        if not self._load():
            rmtree(self.root)
            return self._fail(cid, self.error).encode()
        if self.state == "download" and self.files is not None and self.next == self.total:
            return self._complete()
        return self._reply()

    def resume(self):
        """At start: pick up a download the stage holds (after a reboot). True when there is one."""
        if _read_offer(self.root) is None:
            return False
        return self._load() and self.state == "download"

    def _load(self):
        """Set the state from the stage on flash: the next offset is what flash holds."""
        o = _read_offer(self.root)
        if o is None:
            self.error = "stage: no offer"
            return False
        self.cid = o.get("cid")
        self.ver = o["ver"]
        self.msize = o["size"]
        self.sha = o["sha256"]
        self.tag = binascii.unhexlify(self.sha[:8])
        self.mac = o.get("hmac")
        self.files = None
        self.total = self.msize
        self.state = "download"
        self.fi = -1
        self.fstart = 0
        self._h = hashlib.sha256()
        self._m = Hmac(self.key) if self.key is not None else None
        n = self._rehash(self.root + "/" + MANIFEST, self.msize)
        self.next = n
        if n < self.msize:
            return True
        if not self._manifest_done():
            return False
        for i in range(len(self.files)):  # each complete file is checked again at the end
            name, size, _ = self.files[i]
            self.fi = i
            if size == 0:
                open(self.root + "/" + name, "wb").close()
            have = self._rehash(self.root + "/" + name, size)
            if have < size:
                self.fi = i
                self.next = self.fstart + have
                return True
            self.fstart += size
            self._h = hashlib.sha256()
        self.fi = len(self.files)
        self.next = self.total
        return True

    def _rehash(self, path, limit):
        """Feed what flash holds of path into the running hashes; its length (a file longer than
        `limit` is cut back by removing it: never expected, a staged file only grows by chunks)."""
        n = _size(path)
        if n <= 0:
            return 0
        if n > limit:
            os.remove(path)
            return 0
        mv = memoryview(self.buf)
        with open(path, "rb") as f:
            while True:
                k = f.readinto(self.buf)
                if not k:
                    break
                self._feed(mv[:k])
        return n

    def _feed(self, data):
        self._h.update(data)
        if self.fi < 0 and self._m is not None:
            self._m.update(data)

    # ---- chunks ---------------------------------------------------------------
    def chunk(self, data, n, now):
        """One chunk from .../ota: data[:n] (a memoryview of the receive buffer). Returns a reply to
        publish, or None."""
        if self.state == "idle" and not self.resume():
            return None  # no download here (a late chunk of an update that is over)
        if self.state == "download" and self.files is not None and self.fi >= len(self.files):
            return self._complete()  # everything was on flash already (a cut before the switch)
        if self.state != "download" or n < HDR or data[0] != VERSION or not self._ours(data):
            return None  # another release's chunk, a malformed one: the operator goes by the replies
        off = _u32(data, 5)
        k = n - HDR
        if off != self.next:
            return self._late(now, "offset %d" % off)
        if k == 0 or (self.files is not None and off + k > self.total):
            return self._late(now, "length %d at %d" % (k, off))
        body = data[HDR:n]
        crc = binascii.crc32(body)
        if (crc >> 16) & 0xFFFF != (data[9] << 8 | data[10]) or crc & 0xFFFF != (data[11] << 8 | data[12]):
            return self._late(now, "crc at %d" % off)
        self.taken += 1
        pos = 0
        news = False  # the manifest checked out: say so (the total is known now)
        while pos < k:  # a chunk may end one part (the manifest, a file) and begin the next
            end = self._part_end()
            take = end - self.next
            if take > k - pos:
                take = k - pos
            part = body[pos:pos + take]
            with open(self._part_path(), "ab") as f:
                f.write(part)
            self._feed(part)
            self.next += take
            pos += take
            if self.next == end:
                at = self.next
                r = self._part_done()
                if self.state != "download" or self.next != at:
                    self._last_report = now
                    return r  # failed, installed, or back to a file's start: the rest is not taken
                news = news or r is not None
                if pos < k and self.files is not None and self.next + k - pos > self.total:
                    return self._late(now, "length %d at %d" % (k, off))
        if news or self.taken % REPORT_EVERY == 0:
            self._last_report = now
            return self._reply()
        return None

    def _ours(self, data):
        t = self.tag
        return data[1] == t[0] and data[2] == t[1] and data[3] == t[2] and data[4] == t[3]

    def _late(self, now, why):
        """A chunk that does not fit: say where we are, at most once per REPORT_GAP_MS."""
        if self._last_report is not None and time.ticks_diff(now, self._last_report) < REPORT_GAP_MS:
            return None
        self._last_report = now
        return self._reply(why)

    def _part_end(self):
        return self.msize if self.fi < 0 else self.fstart + self.files[self.fi][1]

    def _part_path(self):
        return self.root + "/" + (MANIFEST if self.fi < 0 else self.files[self.fi][0])

    def _part_done(self):
        """The manifest or a file is complete; None to go on, else a reply."""
        if self.fi < 0:
            if not self._manifest_done():
                rmtree(self.root)
                return self._fail(self.cid, self.error).encode()
            return self._next_file(True)
        name, size, sha = self.files[self.fi]
        if _hex(self._h.digest()) != sha:
            os.remove(self._part_path())  # start the file again
            self.next = self.fstart
            self._h = hashlib.sha256()
            return self._reply("sha256 of %s" % name)
        self.fstart += size
        self.fi += 1
        self._h = hashlib.sha256()
        return self._next_file(None)

    def _next_file(self, news):
        while self.fi < len(self.files) and self.files[self.fi][1] == 0:  # empty files: nothing comes
            open(self._part_path(), "wb").close()
            self.fi += 1
        if self.fi == len(self.files):
            return self._complete()
        return self._reply() if news else None

    def _manifest_done(self):
        """The manifest is all on flash: check it (sha256, HMAC, contents) and take the file list."""
        if _hex(self._h.digest()) != self.sha:
            self.error = "manifest: sha256 does not match the offer"
            return False
        if self.key is not None and (self._m is None or _hex(self._m.digest()) != self.mac):
            self.error = "manifest: HMAC does not match (wrong key or forged)"
            return False
        self._m = None
        try:
            with open(self.root + "/" + MANIFEST) as f:
                m = json.load(f)
            files = _check_manifest(m, self.ver)
        except (ValueError, KeyError, TypeError) as e:
            self.error = "manifest: %s" % (e.args[0] if e.args else e)
            return False
        need = sum(f[1] for f in files)
        free = _free_bytes()
        if free >= 0 and need + 8192 > free:
            self.error = "flash: the release needs %d bytes, %d free" % (need, free)
            return False
        self.files = files
        self.total = self.msize + need
        self.fi = 0
        self.fstart = self.msize
        self._h = hashlib.sha256()
        return True

    def _complete(self):
        """Every byte is in: read each file back from flash, then switch (boot_select.install)."""
        for name, size, sha in self.files:
            h = hashlib.sha256()
            n = 0
            with open(self.root + "/" + name, "rb") as f:
                while True:
                    k = f.readinto(self.buf)
                    if not k:
                        break
                    h.update(memoryview(self.buf)[:k])
                    n += k
            if n != size or _hex(h.digest()) != sha:
                os.remove(self.root + "/" + name)
                self._load()  # back to that file's start
                return self._reply("verify: %s" % name)
        try:
            corrupt = self._prepare() if self._prepare is not None else 0
            self.slot = install(self.root, self.ver, corrupt, _bs())
        except Exception as e:  # a flash error: the stage (or the renamed folder) waits for the next offer
            return self._fail(self.cid, "switch: %r" % (e,)).encode()
        self.state = "installed"  # the app resets once this reply is acknowledged
        return self._reply()


def install(stage, ver, corrupt, bs):
    """Make the verified folder `stage` the trial slot: rename it to the free slot, then the state
    (the commit point). A cut before the state is written leaves the old version confirmed."""
    st = bs.read()
    if st.get("trial"):
        raise OSError(16)  # EBUSY: a trial is running
    cur = st.get("cur", "")
    target = "b" if cur == "a" else "a"
    rmtree(bs.slot_dir(target))
    os.rename(_rel(stage), _rel(bs.slot_dir(target)))
    bs.write({"cur": cur, "ver": st.get("ver", ""), "trial": target, "tver": ver, "tries": "0",
              "corrupt": str(corrupt), "last": st.get("last", "")})
    return target


def rmtree(path):
    try:
        entries = [(e[0], e[1]) for e in os.ilistdir(path)]
    except OSError:
        return
    for name, kind in entries:
        p = path + "/" + name
        if kind == 0x4000:
            rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def _rel(path):
    # The unix port's VfsPosix fails a rename whose two paths are both absolute (see flashfs.py).
    return path[1:] if path.startswith("/") and os.getcwd() == "/" else path


def _is_hex(s, n):
    if not isinstance(s, str) or len(s) != n:
        return False
    for c in s:
        if c not in "0123456789abcdef":
            return False
    return True


def _read_offer(root):
    try:
        with open(root + "/offer") as f:
            o = json.load(f)
        return o if isinstance(o, dict) and "sha256" in o else None
    except (OSError, ValueError):
        return None


def _mkdirs(path):
    p = ""
    for part in path.split("/"):
        if part:
            p += "/" + part
            try:
                os.mkdir(p)
            except OSError:
                pass


def _free_bytes():
    try:
        s = os.statvfs("/")
        return s[0] * s[3]
    except (OSError, AttributeError):
        return -1


def _board_mpy():
    import sys

    return getattr(sys.implementation, "_mpy", -1)


def _check_manifest(m, ver):
    """[(name, size, sha256)] from the manifest {"v":1,"ver":..,"files":[[name,size,sha],...]}."""
    if not isinstance(m, dict) or m.get("v") != 1:
        raise ValueError("v: must be 1")
    if m.get("ver") != ver:
        raise ValueError("ver %r is not the offered %r" % (m.get("ver"), ver))
    mpy = m.get("mpy", -1)
    if not isinstance(mpy, int):
        raise ValueError("mpy: an integer")
    if mpy >= 0 and mpy != _board_mpy() & 0xFF:
        raise ValueError("mpy: the release is .mpy v%d, this board imports v%d" % (mpy, _board_mpy() & 0xFF))
    files = m.get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise ValueError("files: 1-%d entries" % MAX_FILES)
    out = []
    names = []
    for e in files:
        if not isinstance(e, list) or len(e) != 3:
            raise ValueError("files: [name, size, sha256] each")
        name, size, sha = e
        if (not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or name[0] == "."
                or name in ("offer", MANIFEST) or name in names
                or not (name.endswith(".py") or name.endswith(".mpy"))):
            raise ValueError("files: bad name %r" % (name,))
        for c in name:
            if c not in _NAME_OK:
                raise ValueError("files: bad name %r" % (name,))
        if not isinstance(size, int) or not 0 <= size <= 262144:
            raise ValueError("files: bad size for %s" % name)
        if not _is_hex(sha, 64):
            raise ValueError("files: bad sha256 for %s" % name)
        names.append(name)
        out.append((name, size, sha))
    if "app.py" not in names and "app.mpy" not in names:
        raise ValueError("files: no app.py or app.mpy")
    return out
