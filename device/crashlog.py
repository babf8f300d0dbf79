# Ferry firmware: what main.py does with an exception that reaches it (MicroPython).
#
# Imported only then (a MemoryError while importing `app`, a broken flash, a bug): printed,
# written with its traceback to a small crash file on flash (at most CRASH_BYTES, replaced,
# never appended to) and counted. The count of failed starts in a row backs off the next
# try (2 s doubling to 5 min, feeding the watchdog meanwhile) and goes into the status
# message as `boot_failures` (identity.failed_starts() reads it; clear() sets it back to 0
# once a start got connected, keeping the last traceback for whoever looks).
#
# Nothing here may raise: each step that touches the flash or allocates is guarded on its own.
import time

import machine
from micropython import const

from identity import CRASH_PATH, failed_starts

CRASH_BYTES = const(512)
_BACKOFF_MIN_MS = const(2000)
_BACKOFF_MAX_MS = const(300000)


def crashed(e, watchdog):
    """Log e, count it in the crash file, back off (feeding `watchdog`) and reset. Never returns."""
    import gc
    import sys

    _forget_modules(sys)
    gc.collect()  # what failed (a MemoryError's import, the app's buffers) is garbage now
    free = gc.mem_free()
    count = failed_starts() + 1
    delay = _BACKOFF_MAX_MS if count > 8 else min(_BACKOFF_MIN_MS << (count - 1), _BACKOFF_MAX_MS)
    try:
        print("ferry %d fatal: %r; failed starts in a row: %d; reset in %d ms; heap free %d" % (
            time.ticks_ms(), e, count, delay, free))
        sys.print_exception(e)
    except Exception:
        pass
    try:
        _write(count, e)
    except Exception:
        pass
    while delay > 0:  # a back-off is not a hang
        watchdog.feed()
        step = delay if delay < 1000 else 1000
        time.sleep_ms(step)
        delay -= step
    machine.reset()


def _forget_modules(sys):
    """Drop the firmware's modules from sys.modules: a MemoryError while importing the app leaves
    those it got to there, half built, and the crash file needs the heap they hold."""
    try:
        import os

        for name in os.listdir("/"):
            stem = name.rsplit(".", 1)[0]
            if name.endswith((".py", ".mpy")) and stem not in ("crashlog", "identity", "flashfs") \
                    and stem in sys.modules:
                del sys.modules[stem]
    except Exception:
        pass


def clear():
    """A start got connected: failed starts in a row are 0 again; the last traceback stays."""
    try:
        with open(CRASH_PATH) as f:
            f.readline()
            rest = f.read()
        _replace("failures 0\n" + rest)
    except Exception:
        pass


def _write(count, e):
    import io
    import sys

    out = io.StringIO()
    out.write("failures %d\n" % count)
    sys.print_exception(e, out)
    _replace(out.getvalue()[:CRASH_BYTES])


def _replace(text):
    from flashfs import replace

    with open(CRASH_PATH + ".tmp", "w") as f:
        f.write(text)
    replace(CRASH_PATH + ".tmp", CRASH_PATH)
