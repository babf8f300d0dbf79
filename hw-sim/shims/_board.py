# Board-side half of hw-sim's virtual ESP32 (MicroPython code).
#
# The host supervisor (hwsim.board) starts the interpreter with
# FERRY_BOARD_STATE = the board's state folder and FERRY_BOARD_CTL = the
# number of a pipe to the host. Everything here is opened before the flash
# folder is mounted at "/", because the host file system is hidden after that;
# open file objects keep working.
import os

_state = os.getenv("FERRY_BOARD_STATE")
_ctl = open("/dev/fd/" + os.getenv("FERRY_BOARD_CTL"), "ab")


def _read(name, default=b""):
    try:
        with open(_state + "/" + name, "rb") as f:
            return f.read()
    except OSError:
        return default


uid = _read("uid", b"\x24\x0a\xc4\x00\x00\x01")
reset_cause = int(_read("reset_cause", b"1"))
sensor_seed = int(_read("sensor_seed", b"1"))
chip = _read("chip", b"esp32").decode()
boot_wall_s = float(_read("boot_wall_s", b"0"))
clock_synced_offset_s = _read("clock_offset_s", b"")
rtc_file = open(_state + "/rtc.bin", "r+b" if _read("rtc.bin", None) is not None else "w+b")
wlan_file = open(_state + "/wlan", "rb")
faults_file = open(_state + "/sensor_faults", "r+b" if _read("sensor_faults", None) is not None else "w+b")
uarts = _read("uarts")  # b"<UART id>:<descriptor> ...": the host's ptys (VirtualBoard.attach_uart), inherited


def control(line):
    """Tell the host supervisor something: b"F" feed, b"W<ms>" watchdog, b"S<ms>" deep sleep, b"R" reset."""
    _ctl.write(line + b"\n")
clock_file = open(_state + "/clock", "r+b" if _read("clock", None) is not None else "w+b")


def clock_offset_s():
    """Board clock minus host clock, in seconds; kept by the host across resets and deep sleep."""
    clock_file.seek(0)
    text = clock_file.read()
    return float(text) if text else 0.0


def set_clock_offset_s(offset):
    clock_file.seek(0)
    clock_file.write(b"%24.6f" % offset)  # fixed width: the file cannot be truncated


def fault(name):
    """True while the host has unplugged (or broken) this sensor: VirtualBoard.set_sensor_faults
    writes the names ("sht31", "bme280", "ds18b20", "ds18b20_crc") in place, read on every use."""
    faults_file.seek(0)
    return name.encode() in faults_file.read().split()
