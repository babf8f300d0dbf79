# Over-the-air update tests' MicroPython side (tests/device/test_ota_*.py): a board's flash at
# `/` (a host folder, or littlefs in a file), the test's inputs at /host, and helpers that feed
# chunks the host encoded (ferry/ota.py) to device/ota.py as the session would: from a 640-byte
# receive buffer. Everything prints one JSON object per line.
import gc
import hashlib
import json
import os
import sys

import binascii

# Imported here, before setup() mounts the board's flash at / (the host's folders are out of reach then).
import boot_select  # noqa: F401
import ota_download as ota  # noqa: F401
import ota_trial  # noqa: F401



def _source_dir(module):
    for p in sys.path:
        try:
            os.stat(p + "/" + module)
            return p
        except OSError:
            pass
    return None


# The folder the device modules come from: mounted again after the flash (setup, at the end of
# sys.path), because ota.py imports ota_stage for a call and drops it after, as on a board, and
# ota_stage imports ota_trial again. The folder holds the .py sources or, for the heap test, .mpy.
FW_SRC = _source_dir("ota_stage.py") or _source_dir("ota_stage.mpy")

RX = bytearray(640)


def setup(flash, host, lfs_image=None, delay_ms=0):
    import vfs

    if lfs_image:
        import filebd

        filebd.mount(lfs_image, "/", blocks=128, delay_ms=delay_ms)
    else:
        vfs.mount(vfs.VfsPosix(flash), "/")
    vfs.mount(vfs.VfsPosix(host), "/host")
    vfs.mount(vfs.VfsPosix(FW_SRC), "/fw-src")
    sys.path.append("/fw-src")
    os.chdir("/")


def out(**kw):
    print(json.dumps(kw))


def chunks():
    """The chunks the host encoded: /host/chunks.bin is [u16 length][chunk]..."""
    with open("/host/chunks.bin", "rb") as f:
        data = f.read()
    res = []
    i = 0
    while i < len(data):
        n = data[i] << 8 | data[i + 1]
        res.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return res


def offer_args():
    with open("/host/offer.json") as f:
        return json.load(f)


def feed(o, chunk, now=0):
    n = len(chunk)
    RX[:n] = chunk
    r = o.chunk(memoryview(RX), n, now)
    return None if r is None else json.loads(r)


def chunk_offset(c):
    return c[5] << 24 | c[6] << 16 | c[7] << 8 | c[8]


def folder_hashes(path):
    """{name: sha256 hex} of the files in path (not recursive)."""
    res = {}
    try:
        names = os.listdir(path)
    except OSError:
        return None
    for name in names:
        p = (path.rstrip("/") + "/" + name) if path != "/" else "/" + name
        if os.stat(p)[0] & 0x4000:
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            h.update(f.read())
        res[name] = binascii.hexlify(h.digest()).decode()
    return res


def fake_app():
    """What `import app` found: the version app.py and util.py say (equal unless mixed)."""
    try:
        import app
        import util

        return [app.VERSION, util.VERSION]
    except ImportError as e:
        return ["import failed: %s" % e]


def mem():
    gc.collect()
    return gc.mem_free()


def argv_json(i):
    return json.loads(sys.argv[i])
