# Ferry firmware: the first start of an update, on trial (docs/ota.md). MicroPython.
#
# boot_select.select() ran the new folder on trial; this start must prove itself before
# CONFIRM_MS: connected, MIN_ACKED of its readings acknowledged by the gateway (so the outbox
# reads, publishes and acks), and the outbox's corrupt-record count unchanged since the update
# was applied (the new version reads what the old one wrote). Then confirm(): the trial becomes
# the confirmed version. Past the deadline, or with the outbox damaged, rollback(): the next start
# runs the previous version. Crashes and watchdog resets are counted by boot_select itself.
#
# Small on purpose (imported by the app only on a trial start, or for the birth's `ota` field):
# the state file's format is boot_select's, reached through it.
import sys

from micropython import const

CONFIRM_MS = const(600000)
MIN_ACKED = const(3)


def bs():
    """boot_select (a boot file in /, off sys.path when a slot runs; main.py drops it from sys.modules
    after select() to give its ~3.7 KB back): imported for the call. drop() lets it go again."""
    m = sys.modules.get("boot_select")
    if m is None:
        sys.path.append("/")
        try:
            import boot_select as m
        finally:
            sys.path.pop()
    return m


def pending():
    """At start, after the outbox is open: None, or the outbox's corrupt count when the update was
    applied if this start runs a slot on trial (then the app calls check() from its loop)."""
    if not (sys.path and sys.path[0].startswith("/ota/")):
        return None  # the factory files never run on trial
    c = bs().trial()
    drop()
    return c


def drop():
    sys.modules.pop("boot_select", None)


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
    """Persist check()'s verdict. After "rollback" the caller resets the board."""
    b = bs()
    if result == "confirm":
        b.confirm()
    elif result == "rollback":
        b.rollback(why or "health check failed")
    drop()


def status():
    """The birth's `"ota":{...}` member (JSON text): running slot, trial or confirmed, version, last event."""
    import json

    b = bs()
    st = b.read()
    slot = b.running()
    trial = bool(st.get("trial")) and st.get("trial") == slot
    drop()
    return '"ota":{"slot":"%s","state":"%s","ver":%s,"last":%s}' % (
        slot, "trial" if trial else "confirmed", json.dumps(st.get("tver" if trial else "ver", "")),
        json.dumps(st.get("last", "")))
