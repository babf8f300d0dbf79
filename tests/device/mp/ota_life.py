# One "life" of a board between power cuts, for tests/device/test_ota_power_cut.py (MicroPython).
# littlefs in a file at /, slowed down (delay_ms per erase/program) so that a SIGKILL lands inside
# flash operations. At start it reports what runs (slot, the versions app.py and util.py say, the
# running folder's files, the outbox file's hash, the state); on a trial it does its "first boot"
# and confirms; then it offers itself the release and downloads it chunk by chunk from the offset
# it needs, as an operator's DevicePush would send, until installed (exit: the reset).
import binascii
import hashlib
import json
import os
import random
import struct
import time

import boot_select
import ota_download as ota
import ota_child as t
import ota_trial


def chunk(tag, stream, off, size):
    data = stream[off:off + size]
    return struct.pack(">B4sII", 1, tag, off, binascii.crc32(data) & 0xFFFFFFFF) + data


def file_hash(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            h.update(f.read())
    except OSError:
        return None
    return binascii.hexlify(h.digest()).decode()


def first_life(host):
    """Format: the factory files and an outbox file, as `ferry flash` and a running board left them."""
    for name in os.listdir(host + "/factory"):
        with open(host + "/factory/" + name, "rb") as f:
            data = f.read()
        with open("/" + name, "wb") as f:
            f.write(data)
    os.mkdir("/data")
    with open(host + "/ob.bin", "rb") as f:
        data = f.read()
    with open("/data/ob.bin", "wb") as f:
        f.write(data)
    t.out(formatted=True)


def main(flash, host, image, power_on, seed, first):
    t.setup(flash, host, image, delay_ms=1)
    if first:
        first_life("/host")
        return
    random.seed(seed)
    slot = boot_select.select(power_on=power_on)
    d = boot_select.slot_dir(slot)
    running = t.folder_hashes(d) if slot else {n: file_hash("/" + n) for n in ("app.py", "util.py")}
    t.out(slot=slot, app=t.fake_app(), files=running, ob=file_hash("/data/ob.bin"), st=boot_select.read())
    corrupt_then = boot_select.trial()
    if corrupt_then is not None:
        time.sleep_ms(random.getrandbits(5))  # the first boot's work: connect, publish
        if ota_trial.check(True, 3, 0, corrupt_then, 100) == "confirm":
            boot_select.confirm()
            t.out(confirmed=slot)
    with open("/host/stream.bin", "rb") as f:
        stream = f.read()
    args = t.offer_args()
    tag = binascii.unhexlify(args["sha256"][:8])
    o = ota.Ota(256)
    r = json.loads(o.offer("c-1", args))
    if not r["ok"]:
        t.out(offer_error=r["error"])
        return
    t.out(offer=r["result"]["ota"], next=r["result"]["next"])
    if o.state == "current":
        return
    now = 0
    while o.state == "download":
        now += 10
        t.out(n=o.next, total=o.total)  # the next chunk goes in now (the last one: verify and switch)
        t.feed(o, chunk(tag, stream, o.next, 256), now)
    t.out(end=o.state, slot=o.slot, error=o.error)

