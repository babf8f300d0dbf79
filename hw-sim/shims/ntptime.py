# hw-sim: ntptime on a virtual board (MicroPython code). Sets the board clock to the
# host's when the simulated Wi-Fi is up, as a successful NTP query would; with the host's
# fault "ntp" (VirtualBoard.set_sensor_faults) the server does not answer: the call blocks
# for `timeout` seconds and raises, as the real module does.
import _board
import network

host = "pool.ntp.org"
timeout = 1


def time():
    if not network.WLAN(network.STA_IF).isconnected():
        raise OSError(110)  # ETIMEDOUT, as the real module after its socket timeout
    if _board.fault("ntp"):
        import utime
        utime.sleep(timeout)
        raise OSError(110)
    import utime
    return int(utime.time()) - 946684800


def settime():
    time()
    _board.set_clock_offset_s(0.0)
