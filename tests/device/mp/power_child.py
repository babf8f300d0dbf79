# One "life" of a device between power cuts, for tests/device/test_outbox_power_cut.py
# (MicroPython code). It reports what the outbox recovered, then samples, flushes
# and acks until the test SIGKILLs it. One line per event, printed unbuffered:
#   R {json}     what the outbox recovered at start (pending readings, counters, heap)
#   B            the next append will flush (a kill after this lands in or after a flush)
#   A seq        about to append reading (boot, seq)
#   F seq        append returned with nothing staged: readings up to seq are on flash
#   D total      the outbox's drop counter changed (a full ring dropped its oldest)
#   P boot seq   about to ack (PUBACK of) the oldest pending reading
#   K boot seq   that ack returned
import gc
import json
import random
import time

import outbox
from fakertc import FileRTC


def main(folder, fs, seed, boot, link_up, cfg):
    random.seed(seed)
    if fs == "lfs":
        import filebd

        filebd.mount(folder + "/flash.img", "/fl", blocks=64, delay_ms=cfg["delay_ms"])
        prefix = "/fl/ob"
    else:
        prefix = folder + "/ob"
    ob = outbox.Outbox(prefix, capacity=cfg["capacity"], segment_slots=cfg["segment_slots"],
                       flush_every=cfg["flush_every"], flush_interval_ms=cfg["flush_interval_ms"],
                       ack_persist_every=cfg["ack_persist_every"], rtc=FileRTC(folder + "/rtc.bin"))
    gc.collect()
    free = gc.mem_free()
    buf = ob.record_buffer()
    pending = []
    for i in range(ob.pending()):
        p = ob.read_into(i, buf)
        pending.append(None if p is None else [ob.rec_boot, ob.rec_seq])
    print("R", json.dumps({"pending": pending, "dropped": ob.dropped, "corrupt": ob.corrupt,
                           "lost": ob.lost_unflushed, "unknown": ob.loss_unknown,
                           "last_loss": ob.last_loss, "from": ob.recovered_from, "free": free}))
    n_flush = cfg["flush_every"]
    dropped = ob.dropped
    filler = "x" * 60
    seq = 0
    while True:
        payload = '{"v":1,"dev":"sim-1","boot":%d,"seq":%d,"m":{"t_c":%d},"pad":"%s"}' % (
            boot, seq, random.getrandbits(8), filler)
        payload = payload.encode()
        if ob.staged() == n_flush - 1:
            print("B")
        print("A", seq)
        ob.append(boot, seq, payload)
        if not ob.staged():
            print("F", seq)
        if ob.dropped != dropped:
            dropped = ob.dropped
            print("D", dropped)
        if link_up:
            for _ in range(random.choice((0, 1, 1, 1, 2, 2, 15))):
                if not ob.pending():
                    break
                ob.read_into(0, buf)
                b, s = ob.rec_boot, ob.rec_seq
                print("P", b, s)
                if not ob.ack_oldest():
                    raise AssertionError("ack of the oldest refused")
                print("K", b, s)
        seq += 1
        if random.getrandbits(3) == 0:
            time.sleep_ms(random.getrandbits(2))
