# Ferry firmware: which application folder runs, and the trial/confirm/rollback bookkeeping of
# over-the-air updates (docs/ota.md). MicroPython.
#
# main.py calls select() before `import app`. It is part of the "boot" files that only a USB
# flash changes (main.py, this file, MicroPython itself); an update never replaces it. So it
# imports no firmware module (flashfs, identity...): whatever it imported would stay in
# sys.modules and shadow the copy in the folder it selects - a mix of two versions.
#
# Flash layout:
#   /                 the files `ferry flash` installed: slot "" (the factory version), never
#                     written by an update, so there is always something to fall back to
#   /ota/a, /ota/b    two app folders; a folder exists only once an update has been fully
#                     verified in /ota/stage and renamed (one littlefs metadata commit)
#   /ota/state        "key value" lines, replaced as a whole (tmp + rename): the commit point
#   /data, /ferry_*   outbox, configuration, boot counter, crash file: outside every app folder
#
#   /ota/update       the app's request for update mode: module() then runs ota_mode, not app
#
# The rest of the bookkeeping is part of the app: the switch (install) in ota_stage.py, the
# trial's health check and verdict in ota_trial.py, which reads and writes this file's format
# itself (importing this module there would cost ~4 KB at the heap's tightest moments).
# State keys: cur (the confirmed slot, "" = /), trial (slot on trial, absent otherwise),
# tries (non-power-on starts of the trial), ver/tver (versions of cur/trial), corrupt (the
# outbox's corrupt-record count when the update was applied: the health check wants it unchanged),
# last (what happened last: "confirmed 0.2.0", "rolled_back 0.2.0: <reason>").
import os
import sys

from micropython import const

ROOT = "/ota"
STATE = "/ota/state"
UPDATE = "/ota/update"  # the app asks for update mode (an offer came); holds the outbox's corrupt count
MAX_TRIES = const(3)  # non-power-on starts of a trial (crash resets, watchdog resets) before a rollback
MAX_FAILS = const(2)  # crashlog's failed starts in a row during a trial before a rollback
CONFIRM_MS = const(600000)  # a trial start must pass its health check within this


def start():
    """main.py's one call, before the app, when /ota exists (a board that never took an update has nothing
    to choose): choose the folder (select()), arm a trial's deadline, and
    return the module to run ("app" or "ota_mode", module()). The module then drops itself from
    sys.modules (~3.7 KB of a 64 KB heap back; ota_trial imports it again when needed)."""
    import gc

    select()
    if trial() is not None:
        arm_deadline()  # ESP32: a machine.Timer rolls a silent trial back; None on the unix port
    name = module()
    del sys.modules["boot_select"]
    gc.collect()
    return name


def slot_dir(slot):
    return ROOT + "/" + slot if slot else "/"


def _rel(path):
    # The unix port's VfsPosix fails a rename whose two paths are both absolute (see flashfs.py).
    return path[1:] if path.startswith("/") and os.getcwd() == "/" else path


def _replace(tmp, path):
    try:
        os.rename(tmp, _rel(path))  # atomic on littlefs (ESP32) and POSIX
    except OSError:  # FAT cannot rename over a file: readers fall back to tmp
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, _rel(path))


def parse(text):
    st = {}
    for line in text.split("\n"):
        k, _, v = line.partition(" ")
        if k:
            st[k] = v
    return st


def read(path=STATE):
    """The state (a dict of str), {} when none. A cut before the rename leaves the new state in .tmp."""
    for p in (path, path + ".tmp"):
        try:
            with open(p) as f:
                st = parse(f.read())
            if "cur" in st:
                return st
        except OSError:
            pass
    return {}


def write(st, path=STATE):
    try:
        os.mkdir(ROOT)
    except OSError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join("%s %s\n" % (k, st[k]) for k in st))
    _replace(tmp, path)


def _present(slot):
    """The slot's folder holds an app (a folder exists only after a verified rename)."""
    if not slot:
        return True
    for name in ("/app.mpy", "/app.py"):
        try:
            os.stat(slot_dir(slot) + name)
            return True
        except OSError:
            pass
    return False


def decide(st, failed_starts, power_on):
    """Pure: (slot to run, new state or None when unchanged). A power cut does not count as a
    failed try (the board is not at fault); a crash or watchdog reset does."""
    cur = st.get("cur", "")
    if not _present(cur):  # cannot happen unless the flash was damaged: the factory files
        cur = ""
    trial = st.get("trial")
    if not trial:
        return cur, None
    new = dict(st)
    tries = int(st.get("tries", "0") or 0)
    if not power_on:
        tries += 1
    new["tries"] = str(tries)
    reason = None
    if not _present(trial):
        reason = "slot %s missing" % trial
    elif failed_starts >= MAX_FAILS:
        reason = "crash loop (%d failed starts)" % failed_starts
    elif tries > MAX_TRIES:
        reason = "not confirmed after %d starts" % MAX_TRIES
    if reason is None:
        return trial, new
    return cur, _rolled_back(new, reason)


def _rolled_back(st, reason):
    new = {"cur": st.get("cur", ""), "ver": st.get("ver", ""),
           "last": "rolled_back %s: %s" % (st.get("tver", "?"), reason)}
    return new


def _failed_starts():
    try:
        with open("/ferry_crash") as f:  # crashlog.py's file: "failures N" (identity.CRASH_PATH)
            return int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _power_on():
    try:
        import machine

        return machine.reset_cause() == machine.PWRON_RESET
    except Exception:  # a port without reset_cause: every start counts as a try
        return False


def running():
    """The slot this start runs (select() put its folder first on sys.path)."""
    p = sys.path[0] if sys.path else ""
    return p[len(ROOT) + 1:] if p.startswith(ROOT + "/") else ""


def select(power_on=None):
    """Choose the folder to run, persist the trial's bookkeeping, set sys.path. Returns the slot.

    main.py may drop this module from sys.modules afterwards (~3.7 KB of a 32-bit board's heap):
    what it selected stays readable from sys.path (running())."""
    st = read()
    slot, new = decide(st, _failed_starts(), _power_on() if power_on is None else power_on)
    if new is not None:
        write(new)
    if slot:
        # The slot first; "" and "/" out, so nothing the slot lacks is taken from the factory files.
        path = [p for p in sys.path if p not in ("", "/", ".")]
        sys.path[:] = [slot_dir(slot)] + path
    return slot


def module():
    """The module main.py runs: "ota_mode" (update mode: the session and the download alone) when the
    app asked for it, no trial runs (a cut right after a switch) and the last start did not fail; else
    "app" (which drops a request left over)."""
    try:
        os.stat(UPDATE)
    except OSError:
        return "app"
    return "ota_mode" if _failed_starts() == 0 and not read().get("trial") else "app"


def trial():
    """None, or when this start runs a slot on trial, the outbox's corrupt count when the update was
    applied (the app keeps it and calls check() from its loop)."""
    st = read()
    if not st.get("trial") or st.get("trial") != running():
        return None
    return int(st.get("corrupt", "0") or 0)


def confirm():
    """The trial passed: it becomes the confirmed slot (one rename)."""
    st = read()
    t = st.get("trial")
    if not t:
        return
    write({"cur": t, "ver": st.get("tver", ""), "last": "confirmed %s" % st.get("tver", "")})


def rollback(reason):
    """Give up the trial now (the caller resets the board; the next start runs the confirmed slot)."""
    st = read()
    if st.get("trial"):
        write(_rolled_back(st, reason))


def arm_deadline(ms=CONFIRM_MS):
    """On a board with machine.Timer: roll back and reset if still on trial after ms, even when the
    new app never calls check() (it lacks the hook, or its loop is stuck while feeding the watchdog)."""
    try:
        import machine

        def expire(_):
            if trial() is not None:
                rollback("not confirmed within %d ms" % ms)
                machine.reset()

        t = machine.Timer(0)
        t.init(mode=machine.Timer.ONE_SHOT, period=ms, callback=expire)
        return t
    except Exception:  # no Timer (the unix port): the app's check() enforces the deadline
        return None
