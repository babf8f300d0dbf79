# Ferry firmware: the app's answer to an update's offer (the `ota` command; docs/ota.md). MicroPython.
#
# A download does not fit beside the running app's heap, so the app does not take it: it asks for
# update mode (/ota/update, holding the outbox's corrupt-record count, which the new version's
# trial compares with), closes the outbox (what RAM staged goes to flash, where it waits untouched)
# and resets without answering. The command is not acknowledged, so the broker delivers it again
# after the reset, to update mode (ota_mode.py), which answers it. During a trial the app answers
# itself: the offer is refused, or, when it is the release on trial (its "installed" reply was
# lost), "current". Small, imported for the call and dropped after it (app._ota_offer).
import json
import os
import sys

from hw import log

UPDATE = "/ota/update"  # boot_select.UPDATE


def request(app, cid, args):
    """Reset into update mode (does not return), or, on a trial, the reply (bytes)."""
    if app.trial is not None:
        try:
            with open(sys.path[0] + "/offer") as f:  # the running slot's offer (ota_stage.py)
                running = json.load(f).get("sha256")
        except (OSError, ValueError):
            running = None
        if running is not None and running == args.get("sha256"):
            return ('{"v":1,"id":%s,"ok":true,"result":{"ota":"current","rel":"%s","ver":%s}}' % (
                json.dumps(cid), running[:8], json.dumps(args.get("ver")))).encode()
        return ('{"v":1,"id":%s,"ok":false,"error":"ota: busy: a trial is running"}' % json.dumps(cid)).encode()
    log("ota: %s offered: reset into update mode" % args.get("ver"))
    try:
        os.mkdir("/ota")
    except OSError:
        pass
    with open(UPDATE, "w") as f:
        f.write("%d\n" % app.ob.corrupt)
    app.ob.close()
    app.hw.reset()
