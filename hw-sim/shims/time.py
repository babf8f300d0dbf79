# hw-sim: the ESP32's clock on the unix port (MicroPython code).
# Epoch 2000-01-01 as on ESP32 MicroPython, and an RTC that starts at the epoch on
# power-on until ntptime sets it; everything else is the built-in module.
from utime import *  # noqa: F401,F403 - ticks_ms, sleep_ms, ... as built in
import select
import utime
import _board

EPOCH_OFFSET_S = 946684800  # 1970 -> 2000


def time():
    return int(utime.time() + _board.clock_offset_s()) - EPOCH_OFFSET_S


def time_ns():
    return utime.time_ns() + int(_board.clock_offset_s() * 1e9) - EPOCH_OFFSET_S * 1000000000


def gmtime(secs=None):
    return utime.gmtime((time() if secs is None else secs) + EPOCH_OFFSET_S)


localtime = gmtime


def mktime(t):
    return utime.mktime(t) - EPOCH_OFFSET_S


_sleeper = select.poll()  # nothing registered: ipoll(ms) is one poll() syscall that waits ms


def sleep_ms(ms):
    # The unix port's sleep_ms wakes every 0.5 ms until the time is up (mp_hal_delay_ms polls
    # mp_event_wait_ms(1), which sleeps 500 us): ~1,800 wake-ups a second per board waiting to
    # reconnect, and 200 such boards took both cores of the host they share (an ESP32 waits in
    # FreeRTOS ticks on a core of its own). An empty poll set waits in one poll(), and, as an
    # ESP32's sleep_ms, allocates nothing (ipoll returns the poll object; time.sleep would box a float).
    if ms > 0:
        for _ in _sleeper.ipoll(ms):
            pass
