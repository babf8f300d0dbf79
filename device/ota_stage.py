# Ferry firmware: over-the-air updates, the rare moments of a download (docs/ota.md). MicroPython.
#
# ota_download.py keeps the chunk path loaded while a release arrives; what happens a few times per
# update is here, imported by ota_download.stage() for one call and dropped after it (its bytecode is heap
# the running firmware and its telemetry get back between those moments):
# - the offer (the `ota` command): a new release replaces the stage, the same one resumes;
# - resuming after a reboot: the next offset is what the stage on flash holds, rehashed;
# - the manifest's checks, before any file byte is taken: its sha256 against the offer, its
#   HMAC-SHA256 with the board's key (/ferry_ota.key) when there is one, its contents, the free
#   flash; then the file list goes to the stage's index file, one line per file, so the chunk path
#   never holds the whole list;
# - the end: every file read back from flash and hashed again, the app's `prepare` (flush the
#   outbox), then the switch: the stage renamed to the free slot, the state written last
#   (boot_select's format; the commit point).
import binascii
import hashlib
import json
import os
import sys

from micropython import const

from ota_download import INDEX, MANIFEST, heap_free

KEY_PATH = "/ferry_ota.key"
MAX_MANIFEST = const(4096)
MAX_FILES = const(64)
MAX_NAME = const(32)
FLASH_SPARE = const(8192)  # free flash left after the release
_NAME_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."


def _trial():
    """ota_trial: the update state on flash (boot_select's format) without boot_select's ~4 KB; _let_go()."""
    import ota_trial

    return ota_trial


def _let_go():
    sys.modules.pop("ota_trial", None)


def _slot_dir(slot):
    return "/ota/" + slot  # boot_select.slot_dir of an update's folder


def _hex(digest):
    return binascii.hexlify(digest).decode()


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


# ---- the offer ---------------------------------------------------------------------------------
def offer(o, cid, args):
    """The `ota` command's args: {"ver", "size", "sha256"[, "hmac"]}. Returns the reply."""
    ver = args.get("ver")
    size = args.get("size")
    sha = args.get("sha256")
    mac = args.get("hmac")
    if not isinstance(ver, str) or not 1 <= len(ver) <= 32:
        return o.fail(cid, "args.ver: a string of 1-32 characters")
    if not isinstance(size, int) or not 2 <= size <= MAX_MANIFEST:
        return o.fail(cid, "args.size: the manifest's size, 2..%d" % MAX_MANIFEST)
    if not _is_hex(sha, 64):
        return o.fail(cid, "args.sha256: 64 hex digits")
    if mac is not None and not _is_hex(mac, 64):
        return o.fail(cid, "args.hmac: 64 hex digits")
    if o.key is not None and mac is None:
        return o.fail(cid, "args.hmac: required (this board has a key)")
    t = _trial()
    try:
        st = t.read_state()
        running = t.running()
        on_trial = bool(st.get("trial"))
        here = _read_offer(_slot_dir(running) if running else o.root + "/-")
    finally:
        _let_go()
    if on_trial:
        return o.fail(cid, "busy: a trial is running")
    if o.state in ("download", "installed") and o.sha == sha:
        o.cid = cid  # the operator asks again: where are we
        return o.reply()
    if here is not None and here.get("sha256") == sha:
        o.cid = cid
        o.ver = ver
        o.sha = sha
        o.state = "current"  # this release is what runs
        return o.reply()
    old = _read_offer(o.root)
    if old is None or old.get("sha256") != sha:
        rmtree(o.root)
        _mkdirs(o.root)
        with open(o.root + "/offer", "w") as f:
            f.write(json.dumps({"cid": cid, "ver": ver, "size": size, "sha256": sha, "hmac": mac}))
    elif old.get("cid") != cid:
        old["cid"] = cid
        with open(o.root + "/offer", "w") as f:
            f.write(json.dumps(old))
    o.error = ""
    if not _load(o):
        rmtree(o.root)
        return o.fail(cid, o.error)
    if o.state == "download" and o.fi >= o.nfiles >= 0:
        return complete(o)
    return o.reply()


def resume(o):
    """At start: pick up a download the stage holds (after a reboot). True when there is one."""
    if _read_offer(o.root) is None:
        return False
    return _load(o) and o.state == "download"


def _load(o):
    """Set the state from the stage on flash: the next offset is what flash holds."""
    off = _read_offer(o.root)
    if off is None:
        o.error = "stage: no offer"
        return False
    o.cid = off.get("cid")
    o.ver = off["ver"]
    o.msize = off["size"]
    o.sha = off["sha256"]
    o.tag = binascii.unhexlify(o.sha[:8])
    o.mac = off.get("hmac")
    o.nfiles = -1
    o.total = o.msize
    o.state = "download"
    o.fi = -1
    o.fstart = 0
    o.fname = MANIFEST
    o.fsize = o.msize
    o.h = hashlib.sha256()
    o.hmac = Hmac(o.key) if o.key is not None else None
    buf = bytearray(256)
    n = _rehash(o, buf, o.msize)
    o.next = n
    if n < o.msize:
        return True
    if not manifest_done(o):
        return False
    for i in range(o.nfiles):  # each complete file is checked again at the end
        o.fi = i
        o.entry(i)
        if o.fsize == 0:
            open(o.root + "/" + o.fname, "wb").close()
        have = _rehash(o, buf, o.fsize)
        if have < o.fsize:
            o.next = o.fstart + have
            return True
        o.fstart += o.fsize
    o.fi = o.nfiles
    o.next = o.total
    return True


def _rehash(o, buf, limit):
    """Feed what flash holds of the part being received into the running hashes; its length (a file
    longer than `limit` is cut back by removing it: never expected, a staged file only grows by chunks)."""
    path = o.root + "/" + o.fname
    n = _size(path)
    if n <= 0:
        return 0
    if n > limit:
        os.remove(path)
        return 0
    mv = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            o.h.update(mv[:k])
            if o.hmac is not None:
                o.hmac.update(mv[:k])
    return n


# ---- the manifest ------------------------------------------------------------------------------
def manifest_done(o):
    """The manifest is all on flash: check it (sha256, HMAC, contents, free flash), write the index.
    False with o.error when it does not check out: the stage is removed."""
    if _manifest_checks(o):
        return True
    rmtree(o.root)
    return False


def _manifest_checks(o):
    if _hex(o.h.digest()) != o.sha:
        o.error = "manifest: sha256 does not match the offer"
        return False
    if o.key is not None and (o.hmac is None or _hex(o.hmac.digest()) != o.mac):
        o.error = "manifest: HMAC does not match (wrong key or forged)"
        return False
    o.hmac = None
    try:
        with open(o.root + "/" + MANIFEST) as f:
            m = json.load(f)
        files = _check_manifest(m, o.ver)
    except (ValueError, KeyError, TypeError) as e:
        o.error = "manifest: %s" % (e.args[0] if e.args else e)
        return False
    heap_free(o)  # the peak: this module, the parsed manifest and the file list
    m = None
    need = 0
    for f in files:
        need += f[1]
    free = _free_bytes()
    if free >= 0 and need + FLASH_SPARE > free:
        o.error = "flash: the release needs %d bytes, %d free" % (need, free)
        return False
    with open(o.root + "/" + INDEX, "w") as f:
        for name, size, sha in files:
            f.write("%s %d %s\n" % (name, size, sha))
    o.nfiles = len(files)
    o.total = o.msize + need
    o.fi = 0
    o.fstart = o.msize
    return True


def _check_manifest(m, ver):
    """[(name, size, sha256)] from the manifest {"v":1,"ver":..,"files":[[name,size,sha],...]}."""
    if not isinstance(m, dict) or m.get("v") != 1:
        raise ValueError("v: must be 1")
    if m.get("ver") != ver:
        raise ValueError("ver %r is not the offered %r" % (m.get("ver"), ver))
    mpy = m.get("mpy", -1)
    if not isinstance(mpy, int):
        raise ValueError("mpy: an integer")
    board = getattr(sys.implementation, "_mpy", -1) & 0xFF
    if mpy >= 0 and mpy != board:
        raise ValueError("mpy: the release is .mpy v%d, this board imports v%d" % (mpy, board))
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
                or name in names or not (name.endswith(".py") or name.endswith(".mpy"))):
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


# ---- the end: read back, switch ------------------------------------------------------------------
def complete(o):
    """Every byte is in: read each file back from flash, then switch (install)."""
    buf = bytearray(256)
    mv = memoryview(buf)
    for i in range(o.nfiles):
        o.entry(i)
        h = o.h
        n = 0
        if i == 0:
            heap_free(o)  # this module, the read-back buffer
        with open(o.root + "/" + o.fname, "rb") as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                h.update(mv[:k])
                n += k
        if n != o.fsize or _hex(h.digest()) != o.fsha:
            name = o.fname
            os.remove(o.root + "/" + name)
            _load(o)  # back to that file's start
            return o.reply("verify: %s" % name)
    try:
        corrupt = o.prepare() if o.prepare is not None else 0
        o.slot = install(o, corrupt)
    except Exception as e:  # a flash error: the stage (or the renamed folder) waits for the next offer
        return o.fail(o.cid, "switch: %r" % (e,))
    o.state = "installed"  # the app resets once this reply is acknowledged
    return o.reply()


def install(o, corrupt):
    """Make the verified stage the trial slot: rename it to the free slot, then the state (the commit
    point). A cut before the state is written leaves the old version confirmed. Returns the slot."""
    t = _trial()
    heap_free(o)  # the peak of the switch: this module and ota_trial
    try:
        st = t.read_state()
        if st.get("trial"):
            raise OSError(16)  # EBUSY: a trial is running
        cur = st.get("cur", "")
        target = "b" if cur == "a" else "a"
        rmtree(_slot_dir(target))
        os.rename(_rel(o.root), _rel(_slot_dir(target)))
        t.write_state({"cur": cur, "ver": st.get("ver", ""), "trial": target, "tver": o.ver, "tries": "0",
                       "corrupt": str(corrupt), "last": st.get("last", "")})
    finally:
        _let_go()
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
