# Ferry firmware: the one module that touches hardware (MicroPython, ESP32 v1.22+ and
# the unix port with hw-sim's shims). Sensors (SHT31 on I2C, battery on an ADC pin),
# Wi-Fi, RTC memory, deep sleep, the watchdog, the unique id, the reset cause, the
# clock and NTP, and the console log. Everything else in the firmware imports this
# module instead of machine/network/ntptime, so it runs unchanged on the simulator;
# only main.py and crashlog.py use `machine` themselves (the watchdog and the reset
# must work when the firmware's modules cannot be imported).
#
# Heap: sample() and now() allocate nothing (preallocated buffers, small ints only:
# no float and no int >= 2**30, which would be a heap object on the ESP32).
import time

import machine
from micropython import const

SHT31_ADDR = const(0x44)
_SHT31_MEASURE = b"\x24\x00"  # single shot, high repeatability, no clock stretching
_SHT31_WAIT_MS = const(16)  # datasheet: 15.5 ms max for high repeatability
BATTERY_PIN = const(35)
_BATTERY_DIVIDER = const(2)  # 1:1 divider: the ADC sees half the cell
_EPOCH_2000_UNIX = const(946684800)
_MIN_VALID_YEAR = const(2024)  # an RTC before this was never set (power-on starts at 2000)
_REANCHOR_MS = const(3600000)  # re-read the RTC hourly, so tick arithmetic stays small

_RESET_NAMES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "wdt",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}
if hasattr(machine, "BROWNOUT_RESET"):
    _RESET_NAMES[machine.BROWNOUT_RESET] = "brownout"


def log(msg):
    """One console line: "ferry <ticks_ms> <msg>" (events only, never per reading)."""
    print("ferry %d %s" % (time.ticks_ms(), msg))


def crc8_sht31(buf, off):
    """Sensirion CRC-8 (poly 0x31, init 0xFF) of buf[off:off+2]."""
    crc = 0xFF
    for i in range(off, off + 2):
        crc ^= buf[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def sht31_convert(buf, values):
    """Raw SHT31 words in buf[0:6] -> values[0] = centi-degC, values[1] = centi-%RH.

    175 * raw / 65535 = 3500 * raw / 13107 (65535 = 5 * 13107): the products stay below 2**30.
    False when a CRC does not match.
    """
    if crc8_sht31(buf, 0) != buf[2] or crc8_sht31(buf, 3) != buf[5]:
        return False
    values[0] = (buf[0] << 8 | buf[1]) * 3500 // 13107 - 4500
    values[1] = (buf[3] << 8 | buf[4]) * 2000 // 13107
    return True


class Hardware:
    """The board: create one at start-up and pass it down.

    A sensor whose bus or pin this board lacks (no ADC on pin 35 of an ESP32-S3 or -C3, I2C
    pins the chip does not have) is not fatal: the firmware runs without it, and `faults`
    names it for the status message.
    """

    def __init__(self, scl_pin=22, sda_pin=21):
        self.boot_ticks = time.ticks_ms()
        self.faults = []  # "sht31", "battery": sensors this board runs without
        self._i2c = self._adc = None
        try:
            self._i2c = machine.I2C(0, scl=machine.Pin(scl_pin), sda=machine.Pin(sda_pin), freq=100000)
        except Exception as e:  # ValueError("invalid pin") on the ESP32 ports
            self._fault("sht31", e)
        try:
            self._adc = machine.ADC(machine.Pin(BATTERY_PIN))
        except Exception as e:
            self._fault("battery", e)
        if self._adc is not None:
            try:
                self._adc.atten(machine.ADC.ATTN_11DB)  # full 0-3.3 V range
            except (AttributeError, ValueError):
                pass
        self._raw = bytearray(6)
        self.sensor_errors = 0
        self._wlan = self._net = None
        self._wdt = None
        self._rtc = machine.RTC()
        # Clock: sample times come from ticks_ms against an anchor read from the RTC.
        self._epoch_shift = 0 if time.gmtime(0)[0] == 2000 else _EPOCH_2000_UNIX
        self.synced = False
        self._a_secs = self._a_ms = 0
        self._a_ticks = self.boot_ticks
        self._up_ticks = self.boot_ticks
        self._up_s = self._up_ms = 0
        self.check_clock()

    def _fault(self, name, e):
        self.faults.append(name)
        log("hw: no %s (%r): running without it" % (name, e))

    # ---- identity and reset ---------------------------------------------
    @staticmethod
    def unique_id_hex():
        import binascii
        return binascii.hexlify(machine.unique_id()).decode()

    @staticmethod
    def reset_cause():
        """One of power_on hard wdt deepsleep soft brownout unknown (the status payload's `reset`)."""
        return _RESET_NAMES.get(machine.reset_cause(), "unknown")

    # ---- sensors --------------------------------------------------------
    def sample(self, values):
        """Measure temperature and humidity into values[0:2] (centi-units); False on a bus or CRC
        error, or when the board has no SHT31 bus."""
        if self._i2c is None:
            return False
        try:
            self._i2c.writeto(SHT31_ADDR, _SHT31_MEASURE)
            time.sleep_ms(_SHT31_WAIT_MS)
            self._i2c.readfrom_into(SHT31_ADDR, self._raw)
        except OSError:
            self.sensor_errors += 1
            return False
        if sht31_convert(self._raw, values):
            return True
        self.sensor_errors += 1
        return False

    def battery_mv(self):
        """The cell's voltage, or None on a board without the battery's ADC pin."""
        if self._adc is None:
            return None
        return self._adc.read_uv() * _BATTERY_DIVIDER // 1000

    # ---- Wi-Fi ----------------------------------------------------------
    def _sta(self):
        if self._wlan is None:
            import network
            self._net = network
            self._wlan = network.WLAN(network.STA_IF)
            self._wlan.active(True)
        return self._wlan

    def wifi_connect(self, ssid, password, timeout_ms, feed):
        """Associate (if not already); True when up. Waits up to timeout_ms in sleep_ms steps,
        feeding the watchdog; the ESP32 goes on associating in the background after that."""
        w = self._sta()
        if w.isconnected():
            return True
        try:
            if w.status() != self._net.STAT_CONNECTING:  # the ESP32 refuses connect() meanwhile
                w.connect(ssid, password)
        except OSError as e:
            log("wifi: connect failed: %r" % (e,))
            return False
        t0 = time.ticks_ms()
        while not w.isconnected():
            if time.ticks_diff(time.ticks_ms(), t0) >= timeout_ms:
                log("wifi: not associated yet (status %s)" % w.status())
                return False
            feed()
            time.sleep_ms(100)
        return True

    def rssi(self):
        """dBm while associated, else None."""
        w = self._wlan
        if w is None or not w.isconnected():
            return None
        r = w.status("rssi")
        return r if -200 <= r <= 0 else None

    # ---- RTC memory, watchdog, deep sleep ---------------------------------
    def rtc_memory(self):
        """An object with memory() / memory(buf) surviving reset and deep sleep (the outbox's)."""
        return self._rtc

    def watchdog(self, timeout_ms):
        """Start the watchdog or give it a new timeout (main.py started it; it cannot be stopped)."""
        self._wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    @staticmethod
    def deepsleep(ms):
        machine.deepsleep(ms)

    # ---- clock ----------------------------------------------------------
    def check_clock(self):
        """Anchor sample times to the RTC; synced when the RTC has been set (NTP, now or before a wake)."""
        self.synced = time.gmtime()[0] >= _MIN_VALID_YEAR
        if self.synced:
            self._anchor()
        return self.synced

    def _anchor(self):
        try:
            ns = time.time_ns()
            secs, ms = ns // 1000000000, ns // 1000000 % 1000
        except AttributeError:
            secs, ms = time.time(), 0
        self._a_secs = secs - self._epoch_shift
        self._a_ms = ms
        self._a_ticks = time.ticks_ms()

    def ntp_sync(self, host):
        """Set the RTC from NTP; True on success (needs Wi-Fi). Blocks up to the ntptime timeout."""
        try:
            import ntptime
        except ImportError:
            return False
        ntptime.host = host
        try:
            ntptime.settime()
        except (OSError, OverflowError, IndexError):
            return False
        return self.check_clock()

    def now(self, out):
        """Sample time into out[0] (s), out[1] (ms), out[2] (1: synced).

        Synced: seconds since 2000-01-01 (what ReadingEncoder turns into Unix ms);
        else seconds since this boot began (the contract's "ms since boot").
        """
        t = time.ticks_ms()
        self._uptime(t)
        if not self.synced:
            out[0] = self._up_s
            out[1] = self._up_ms
            out[2] = 0
            return
        el = time.ticks_diff(t, self._a_ticks)
        if el >= _REANCHOR_MS:
            self._anchor()
            el = time.ticks_diff(t, self._a_ticks)
        el += self._a_ms
        out[0] = self._a_secs + el // 1000
        out[1] = el % 1000
        out[2] = 1

    def _uptime(self, t):
        d = time.ticks_diff(t, self._up_ticks)
        self._up_ticks = t
        ms = self._up_ms + d
        self._up_s += ms // 1000
        self._up_ms = ms % 1000
