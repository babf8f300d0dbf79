# Ferry firmware: the device's configuration (MicroPython). `ferry flash` writes
# /ferry_config.json; it is read and validated once at start-up, every bad or unknown
# key named in the error, and passed down as one Settings object. Commands from the
# cmd topic change a few keys at run time; those changes are written back to the same
# file (tmp + rename), so they survive resets, deep sleep and power cuts.
import json
import os
import sys

from flashfs import replace

CONFIG_PATH = "/ferry_config.json"
CA_PATH = "/ferry_ca.der"
MODES = ("always_on", "duty_cycle")

# Keys: (key, kind, default, low, high). kind: "id" (1-64 of A-Z a-z 0-9 _ -; "id?": may
# also be empty), "str" (low..high characters), "int" (low..high), "bool", "mode". A
# default of None means required. What each key means:
#   site                       site id: ferry/<site>/<device>/...
#   device_id                  device id; empty: esp32-<machine.unique_id() hex>
#   wifi_ssid                  access point to join
#   wifi_password              its WPA2 passphrase
#   broker_host                gateway host name or address
#   broker_port                gateway MQTT port without TLS (tls false)
#   broker_tls_port            gateway MQTT port with TLS
#   tls                        true: MQTT over TLS, the gateway's certificate checked against
#                              tls_ca_file alone (pinned) and for broker_host; false: plain MQTT
#                              (said explicitly: true, the default, needs the CA file on flash)
#   tls_ca_file                the gateway's CA certificate on flash, DER (`ferry flash --ca`)
#   mqtt_password              MQTT password; the user name is the device id. Empty: neither is
#                              sent (only a gateway with anonymous clients allowed accepts that)
#   sample_ms                  sample interval (always_on) / wake period (duty_cycle)
#   mode                       always_on or duty_cycle
#   wake_budget_ms             duty_cycle: time awake per wake to connect and send
#   keepalive_s                MQTT keepalive; the device pings after half of it idle
#   ack_timeout_ms             a PUBACK, PINGRESP or SUBACK later than this: link dead
#   connect_timeout_ms         TCP connect and CONNACK, each
#   wifi_timeout_ms            Wi-Fi association
#   backoff_min_ms             first reconnect delay (then doubled, with jitter)
#   backoff_max_ms             reconnect delay cap
#   inflight                   readings published and not yet PUBACKed, at most
#   wdt_timeout_ms             watchdog: reset when not fed for this long
#   outbox_capacity            readings kept unacknowledged before the oldest are dropped
#   outbox_flush_every         readings per flash write
#   outbox_flush_interval_ms   a reading waits at most this long for its flash write
#   ntp_host                   NTP server
#   ntp_resync_s               re-read NTP this often while running
#   ntp_retry_s                first retry after a failed NTP sync; doubles to ntp_resync_s
#   i2c_scl_pin                I2C clock pin of the sensors that give none (`scl`)
#   i2c_sda_pin                I2C data pin of the sensors that give none (`sda`)
#   sensors                    the board's sensors, a list of objects (sensor_config.py);
#                              absent: the SHT31 at 0x44 on i2c_scl_pin/i2c_sda_pin
#   log_stats_every            log heap and counters every this many readings (0: never)
#   ota_confirm_s              an update's first start must pass its health check within this, else it
#                              is rolled back (docs/ota.md; the ESP32's machine.Timer backstop stays 600 s)
FIELDS = (
    ("site", "id", None, 0, 0),
    ("device_id", "id?", "", 0, 0),
    ("wifi_ssid", "str", None, 1, 32),
    ("wifi_password", "str", "", 0, 64),
    ("broker_host", "str", None, 1, 253),
    ("broker_port", "int", 1883, 1, 65535),
    ("broker_tls_port", "int", 8883, 1, 65535),
    ("tls", "bool", True, 0, 0),
    ("tls_ca_file", "str", CA_PATH, 1, 128),
    ("mqtt_password", "str", "", 0, 128),
    ("sample_ms", "int", 10000, 100, 86400000),
    ("mode", "mode", "always_on", 0, 0),
    ("wake_budget_ms", "int", 15000, 500, 600000),
    ("keepalive_s", "int", 60, 2, 3600),
    ("ack_timeout_ms", "int", 5000, 100, 60000),
    ("connect_timeout_ms", "int", 5000, 100, 60000),
    ("wifi_timeout_ms", "int", 10000, 100, 120000),
    ("backoff_min_ms", "int", 1000, 10, 600000),
    ("backoff_max_ms", "int", 60000, 10, 3600000),
    ("inflight", "int", 4, 1, 16),
    ("wdt_timeout_ms", "int", 30000, 1000, 600000),
    ("outbox_capacity", "int", 1000, 10, 100000),
    ("outbox_flush_every", "int", 10, 1, 64),
    ("outbox_flush_interval_ms", "int", 5000, 0, 3600000),
    ("ntp_host", "str", "pool.ntp.org", 1, 253),
    ("ntp_resync_s", "int", 21600, 60, 604800),
    ("ntp_retry_s", "int", 60, 1, 86400),
    ("i2c_scl_pin", "int", 22, 0, 39),
    ("i2c_sda_pin", "int", 21, 0, 39),
    ("log_stats_every", "int", 0, 0, 1000000),
    ("ota_confirm_s", "int", 600, 10, 86400),
)
_KNOWN = [f[0] for f in FIELDS] + ["sample_s", "sensors"]

# What the cmd topic's "set" may change, with the contract's ranges.
SETTABLE = {"sample_s": (1, 86400), "sample_ms": (100, 86400000)}


class SettingsError(ValueError):
    """A bad configuration; the message names the key and the problem."""


def _is_id(v):
    if not isinstance(v, str) or not 1 <= len(v) <= 64:
        return False
    for c in v:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "_-"):
            return False
    return True


def check(key, kind, value, low, high):
    """An error message for a bad value, or None."""
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return "must be an integer %d..%d, got %r" % (low, high, value)
    elif kind == "id" or (kind == "id?" and value != ""):
        if not _is_id(value):
            return "must be 1-64 characters of A-Z a-z 0-9 _ -, got %r" % (value,)
    elif kind == "str":
        if not isinstance(value, str) or not low <= len(value) <= high:
            return "must be a string of %d-%d characters" % (low, high)
    elif kind == "bool":
        if not isinstance(value, bool):
            return "must be true or false, got %r" % (value,)
    elif kind == "mode":
        if value not in MODES:
            return "must be one of %s, got %r" % (" ".join(MODES), value)
    return None


class Settings:
    """The validated configuration: one attribute per FIELDS key (units in the names)."""

    def __init__(self, raw, path=CONFIG_PATH):
        self.path = path
        if not isinstance(raw, dict):
            raise SettingsError("%s: must be a JSON object" % path)
        raw = dict(raw)
        for key in raw:
            if key not in _KNOWN:
                raise SettingsError("%s: %s: unknown key" % (path, key))
        if "sample_s" in raw:
            if "sample_ms" in raw:
                raise SettingsError("%s: sample_s: give sample_s or sample_ms, not both" % path)
            err = check("sample_s", "int", raw["sample_s"], 1, 86400)
            if err:
                raise SettingsError("%s: sample_s: %s" % (path, err))
            raw["sample_ms"] = raw.pop("sample_s") * 1000
        for key, kind, default, low, high in FIELDS:
            if key not in raw:
                if default is None:
                    raise SettingsError("%s: %s: missing (required)" % (path, key))
                value = default
            else:
                value = raw[key]
            err = check(key, kind, value, low, high)
            if err:
                raise SettingsError("%s: %s: %s" % (path, key, err))
            setattr(self, key, value)
        self.sensors = None  # hw.Hardware's default: the SHT31 on i2c_scl_pin/i2c_sda_pin
        if "sensors" in raw:  # checked by a module of its own, dropped after: heap for boards that name sensors only
            import sensor_config

            self.sensors = sensor_config.check(raw["sensors"], self, path)
            del sys.modules["sensor_config"]
        if self.backoff_max_ms < self.backoff_min_ms:
            raise SettingsError("%s: backoff_max_ms: must be >= backoff_min_ms" % path)
        # The longest wait between two feeds: TCP connect + CONNACK + SUBACK, and NTP (~1 s).
        if self.wdt_timeout_ms <= 2 * self.connect_timeout_ms + self.ack_timeout_ms + 1000:
            raise SettingsError("%s: wdt_timeout_ms: must exceed 2 x connect_timeout_ms + ack_timeout_ms"
                                " + 1000 (the longest wait between two feeds)" % path)
        self._raw = raw

    @classmethod
    def load(cls, path=CONFIG_PATH):
        text = None
        for name in (path, path + ".tmp"):  # .tmp: a save cut off between remove and rename
            try:
                with open(name) as f:
                    text = f.read()
                break
            except OSError:
                pass
        if text is None:
            raise SettingsError("%s: missing: write it with `ferry flash`" % path)
        try:
            raw = json.loads(text)
        except ValueError:
            raise SettingsError("%s: not valid JSON" % path)
        settings = cls(raw, path)
        settings.check_files()
        return settings

    def check_files(self):
        """What the configuration needs on flash besides itself: the CA certificate when tls is on.

        Never a silent fall-back to plain MQTT: without the CA the board does not connect."""
        if not self.tls:
            return
        try:
            size = os.stat(self.tls_ca_file)[6]
        except OSError:
            size = 0
        if not size:
            raise SettingsError("%s: tls: no CA certificate at %s (ferry flash --ca); \"tls\": false is plain MQTT"
                                % (self.path, self.tls_ca_file))

    def port(self):
        """The gateway port for this transport: broker_tls_port with TLS, else broker_port."""
        return self.broker_tls_port if self.tls else self.broker_port

    def update(self, changes):
        """Validate and apply {key: value} from a command, then persist; raises SettingsError("args.k: ...")."""
        new = {}
        for key in changes:
            if key not in SETTABLE:
                raise SettingsError("args.%s: cannot be set" % key)
            low, high = SETTABLE[key]
            err = check(key, "int", changes[key], low, high)
            if err:
                raise SettingsError("args.%s: must be %d..%d" % (key, low, high))
            new["sample_ms"] = changes[key] * 1000 if key == "sample_s" else changes[key]
        if not new:
            raise SettingsError("args: nothing to set")
        for key in new:
            setattr(self, key, new[key])
            self._raw[key] = new[key]
        self.save()

    def save(self):
        """Write the configuration back: a new file, then rename (atomic on littlefs and POSIX)."""
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(self._raw))
        replace(tmp, self.path)
