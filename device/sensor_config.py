# Ferry firmware: the `sensors` setting, checked (MicroPython; settings.py imports this module
# only for a configuration that has the key, and drops it after: a board without it never
# pays its heap). Every bad or unknown key is named in the error, as for the other settings.
from settings import SettingsError, check as check_value

# Each sensor type: its metric names (device/sensor_<type>.py yields them in this order) and
# its keys besides "type" and "prefix" as key: (low, high, default); default None: required,
# -1: the board-wide i2c_scl_pin / i2c_sda_pin. "prefix" (a-z 0-9 _, 1-16 characters) goes in
# front of its metric names, so two sensors that measure the same thing stay apart
# ({"type": "ds18b20", "pin": 4, "prefix": "water_"} gives water_temp_c).
_I2C = {"i2c": (0, 1, 0), "scl": (0, 48, -1), "sda": (0, 48, -1)}
SENSOR_KEYS = {
    "sht31": ("temp_c rh_pct", dict(_I2C, addr=(0x44, 0x45, 0x44))),
    "bme280": ("temp_c rh_pct pressure_hpa", dict(_I2C, addr=(0x76, 0x77, 0x76))),
    "ds18b20": ("temp_c", {"pin": (0, 48, None)}),
    "pms5003": ("pm1_0_ugm3 pm2_5_ugm3 pm10_ugm3", {"uart": (1, 2, 2), "rx": (0, 48, None), "tx": (0, 48, None)}),
}


def _is_prefix(v):
    if not isinstance(v, str) or not 1 <= len(v) <= 16 or not "a" <= v[0] <= "z":
        return False
    for c in v:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "_"):
            return False
    return True


def check(value, cfg, path):
    """The validated sensor list: each a dict with every key of its type (defaults filled in)."""
    if not isinstance(value, list) or not 1 <= len(value) <= 8:
        raise SettingsError("%s: sensors: must be a list of 1-8 objects" % path)
    out = []
    names = []
    buses = {}
    for n, spec in enumerate(value):
        where = "%s: sensors[%d]" % (path, n)
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in SENSOR_KEYS:
            raise SettingsError("%s.type: must be one of %s" % (where, " ".join(sorted(SENSOR_KEYS))))
        metrics, keys = SENSOR_KEYS[kind]
        one = {"type": kind, "prefix": spec.get("prefix", "")}
        for key in spec:
            if key not in keys and key not in one:
                raise SettingsError("%s.%s: unknown key for %s" % (where, key, kind))
        prefix = one["prefix"]
        if prefix != "" and not _is_prefix(prefix):
            raise SettingsError("%s.prefix: must be 1-16 characters of a-z 0-9 _, from a letter" % where)
        for key in keys:
            low, high, default = keys[key]
            if key in spec:
                err = check_value(key, "int", spec[key], low, high)
                if err:
                    raise SettingsError("%s.%s: %s" % (where, key, err))
                one[key] = spec[key]
            elif default is None:
                raise SettingsError("%s.%s: missing (required for %s)" % (where, key, kind))
            else:
                one[key] = getattr(cfg, "i2c_%s_pin" % key) if default == -1 else default
        if "i2c" in one:  # one bus, one pair of pins
            pins = buses.setdefault(one["i2c"], (one["scl"], one["sda"]))
            if pins != (one["scl"], one["sda"]):
                raise SettingsError("%s.scl: i2c %d is on pins %d/%d already" % (where, one["i2c"], pins[0], pins[1]))
        for name in metrics.split():
            if prefix + name in names:
                raise SettingsError("%s.prefix: metric %s twice (give one sensor a prefix)" % (where, prefix + name))
            names.append(prefix + name)
        out.append(one)
    if len(names) > 16:
        raise SettingsError("%s: sensors: %d metrics, at most 16 fit a reading" % (path, len(names)))
    return out
