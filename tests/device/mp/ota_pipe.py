# A board's update side on a pipe, for tests/device/test_ota_push.py (MicroPython): the operator's
# DevicePush (CPython) writes one line per MQTT message it would publish, `C <command JSON>` for the
# `ota` command or `K <chunk hex> <ms>` for a chunk; each gets one line back: the reply JSON or `-`.
# `R` simulates a reset: a new Ota object (what is on flash stays).
import binascii
import json
import sys

import ota_download as ota
import ota_child as t


def main(flash, host):
    t.setup(flash, host)
    o = ota.Ota(256)
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        kind = line[0]
        if kind == "C":
            cmd = json.loads(line[2:])
            r = o.offer(cmd["id"], cmd["args"])
        elif kind == "K":
            hexdata, ms = line[2:].split()
            c = binascii.unhexlify(hexdata)
            t.RX[:len(c)] = c
            r = o.chunk(memoryview(t.RX), len(c), int(ms))
        else:
            o = ota.Ota(256)
            r = None
        print("-" if r is None else r.decode())
