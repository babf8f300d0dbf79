# Ferry firmware: the one module that touches hardware (MicroPython, ESP32 v1.22+ and
# the unix port with hw-sim's shims). Sensors (the drivers named in settings, each in its
# own device/sensor_<type>.py, imported only when named; the battery on an ADC pin),
# Wi-Fi, RTC memory, deep sleep, the watchdog, the unique id, the reset cause, the
# clock and NTP, and the console log. Everything else in the firmware imports this
# module instead of machine/network/ntptime, so it runs unchanged on the simulator;
# only main.py and crashlog.py use `machine` themselves (the watchdog and the reset
# must work when the firmware's modules cannot be imported).
#
# Heap: sample() and now() allocate nothing (preallocated buffers, small ints only:
# no float and no int >= 2**30, which would be a heap object on the ESP32).
import sys
import time

import machine
from micropython import const

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


class Hardware:
    """The board: create one at start-up and pass it down.

    `sensors` is settings' list (None: the SHT31 on scl_pin/sda_pin). A sensor whose bus or pin
    this board lacks (no ADC on pin 35 of an ESP32-S3 or -C3, I2C pins the chip does not have)
    is not fatal: the firmware runs without it, and `faults` names it for the status message.
    A sensor that fails to answer is counted in its driver's `errors` (the status'
    `sensor_errors`) and its metrics are left out of that reading.
    """

    def __init__(self, scl_pin=22, sda_pin=21, sensors=None):
        self.boot_ticks = time.ticks_ms()
        self.faults = []  # labels ("sht31", "battery", ...) of sensors this board runs without
        if sensors is None:
            sensors = [{"type": "sht31", "prefix": "", "i2c": 0, "scl": scl_pin, "sda": sda_pin, "addr": 0x44}]
        self.labels = []  # per sensor: prefix + type
        self.drivers = []  # per sensor: its driver, or None when its bus could not be made
        self.names = []  # per metric, for App's MetricSet (which drops them): bytes
        self.decimals = []
        self.owner = bytearray()  # per metric: the index of its sensor
        self.offsets = bytearray()  # per sensor: the index of its first metric
        self.failed = 0  # bit i: sensor i gave no value at the last sample()
        self.erroring = 0  # bit i: sensor i failed (an error, not "no value yet") at the last sample()
        self._was = 0  # erroring before this sample()
        import sensor_setup  # start-up only: dropped after, so its code holds no heap while running

        sensor_setup.open_all(self, sensors)
        del sys.modules["sensor_setup"]
        self._adc = None
        try:
            self._adc = machine.ADC(machine.Pin(BATTERY_PIN))
        except Exception as e:
            self._fault("battery", e)
        if self._adc is not None:
            try:
                self._adc.atten(machine.ADC.ATTN_11DB)  # full 0-3.3 V range
            except (AttributeError, ValueError):
                pass
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
        """Read every sensor into values (its metrics at their place in `names`); True when at
        least one gave its values. `failed` gets a bit set for each sensor that gave none,
        `erroring` for each that failed (a bus, CRC or checksum error, silence)."""
        self._was = self.erroring
        self.failed = self.erroring = 0
        for i in range(len(self.drivers)):
            self._read(i, values)
        return self.failed != (1 << len(self.drivers)) - 1

    def _read(self, i, values):
        driver = self.drivers[i]
        if driver is None:  # a fault (no bus or pin): in `faults`, not counted per reading
            self.failed |= 1 << i
            return
        try:
            r = driver.read(values, self.offsets[i])
        except Exception as e:  # OSError from the bus, onewire's CRC error, ...
            r = e
        if r is not True:
            self.failed |= 1 << i
            if r is not None:
                self.erroring |= 1 << i
                driver.errors += 1
                if not self._was >> i & 1:  # logged when it starts failing, not at every sample
                    log("sensor %s: %s" % (self.labels[i], "no value" if r is False else repr(r)))

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

    @staticmethod
    def reset():
        machine.reset()

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
