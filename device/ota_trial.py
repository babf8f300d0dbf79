# Ferry firmware: the first start of an update, on trial (docs/ota.md). MicroPython.
#
# boot_select.select() ran the new folder on trial; this start must prove itself before
# CONFIRM_MS: connected, MIN_ACKED of its readings acknowledged by the gateway (so the outbox
# reads, publishes and acks), and the outbox's corrupt-record count unchanged since the update
# was applied (the new version reads what the old one wrote). Then confirm(): the trial becomes
# the confirmed version. Past the deadline, or with the outbox damaged, rollback(): the next start
# runs the previous version. Crashes and watchdog resets are counted by boot_select itself.
#
# Small on purpose (imported by the app at start and for a trial's verdict, dropped after). The state file's
# format is boot_select's: read and, for the verdict, written here without importing it (its ~4 KB).
import os
import sys
import time

from micropython import const

STATE = "/ota/state"  # boot_select.STATE
UPDATE = "/ota/update"  # boot_select.UPDATE: the app asks for update mode (ota_mode.py)
CONFIRM_MS = const(600000)
MIN_ACKED = const(3)


def start():
    """At the app's start: (None, or on a trial start the outbox's corrupt count when the update was
    applied; the birth's "ota" member). Drops a request for update mode that boot_select did not run
    (a start that failed). Dropped after it; the app imports it again for a trial's verdict (tick())."""
    try:
        os.remove(UPDATE)
    except OSError:
        pass
    trial = pending()
    st = status()
    sys.modules.pop("ota_trial", None)  # imported again for a trial's verdict (tick())
    return trial, st


def tick(app, min_acked=MIN_ACKED):
    """The app's loop on a trial start: confirm once healthy (then the birth says so), roll back and
    reset when not. app: the App (session, ob, hw, t0, trial, ota_status, birth())."""
    s = app.session
    # Connected: now, or long enough for min_acked readings (a duty-cycle wake has closed the link).
    verdict = check(s.up or s.acked >= min_acked, s.acked, app.ob.corrupt, app.trial,
                    time.ticks_diff(time.ticks_ms(), app.t0), min_acked, app.cfg.ota_confirm_s * 1000)
    if verdict is None:
        sys.modules.pop("ota_trial", None)
        return
    from hw import log

    finish(verdict)
    app.trial = None
    log("ota: trial %s" % verdict)
    if verdict == "rollback":
        app.ob.close()
        app.hw.reset()
    app.ota_status = status()
    sys.modules.pop("ota_trial", None)
    s.publish_status(app.birth())


def pending():
    """At start, after the outbox is open: None, or the outbox's corrupt count when the update was
    applied if this start runs a slot on trial (then the app calls check() from its loop)."""
    st = read_state()
    if not st.get("trial") or st.get("trial") != running():
        return None  # the factory files never run on trial
    return int(st.get("corrupt", "0") or 0)


def running():
    """boot_select.running(): the slot whose folder select() put first on sys.path ("" the factory files)."""
    p = sys.path[0] if sys.path else ""
    return p[5:] if p.startswith("/ota/") else ""  # "/ota/<slot>"


def read_state():
    """boot_select.read() without importing it at every start (its ~3.7 KB): the state file's "key value"
    lines, from state.tmp when a cut came before the rename; {} when there is none."""
    for p in (STATE, STATE + ".tmp"):
        try:
            with open(p) as f:
                st = {}
                for line in f.read().split("\n"):
                    k, _, v = line.partition(" ")
                    if k:
                        st[k] = v
            if "cur" in st:
                return st
        except OSError:
            pass
    return {}


def check(up, acked, corrupt_now, corrupt_then, elapsed_ms, min_acked=MIN_ACKED, confirm_ms=CONFIRM_MS):
    """Pure: "confirm", "rollback" or None (not yet).

    up: the session is connected; acked: readings of this start the gateway acknowledged;
    corrupt_now/corrupt_then: the outbox's corrupt-record count now and when the update was
    applied (a power cut's unflushed readings do not count against the new version);
    elapsed_ms: since this start began."""
    if corrupt_now != corrupt_then:
        return "rollback"
    if up and acked >= min_acked:
        return "confirm"
    if elapsed_ms >= confirm_ms:
        return "rollback"
    return None


def finish(result, why=""):
    """Persist check()'s verdict: "confirm", the trial becomes the confirmed slot; "rollback", the next start
    runs the confirmed one (the caller resets the board). Written here in boot_select's format (one state
    file, tmp then rename) rather than through boot_select: its ~4 KB would be needed right when a trial
    start, with this module loaded, is at its tightest."""
    st = read_state()
    t = st.get("trial")
    if not t:
        return
    if result == "confirm":
        new = {"cur": t, "ver": st.get("tver", ""), "last": "confirmed %s" % st.get("tver", "")}
    elif result == "rollback":
        new = {"cur": st.get("cur", ""), "ver": st.get("ver", ""),
               "last": "rolled_back %s: %s" % (st.get("tver", "?"), why or "health check failed")}
    else:
        return
    write_state(new)


def write_state(st):
    """Replace the state file whole (boot_select.write's format): tmp, then rename (flashfs.replace)."""
    from flashfs import replace

    try:
        os.mkdir("/ota")
    except OSError:
        pass
    with open(STATE + ".tmp", "w") as f:
        f.write("".join("%s %s\n" % (k, st[k]) for k in st))
    replace(STATE + ".tmp", STATE)


def status():
    """The birth's `"ota":{...}` member (JSON text): running slot, trial or confirmed, version, last event."""
    import json

    st = read_state()
    slot = running()
    trial = bool(st.get("trial")) and st.get("trial") == slot
    return '"ota":{"slot":"%s","state":"%s","ver":%s,"last":%s}' % (
        slot, "trial" if trial else "confirmed", json.dumps(st.get("tver" if trial else "ver", "")),
        json.dumps(st.get("last", "")))
