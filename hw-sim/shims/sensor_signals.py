# Deterministic signals of the sensors only some boards have (BME280 pressure, a DS18B20 in a
# water tank, PMS5003 particulates), in the subset both interpreters run: imported by their
# board-side models (bme280_model, onewire) only when a board uses them, and by the host
# (pms5003_model, tests) as ferry.hwsim.shims.sensor_signals. The SHT31's and the battery's
# are in sensor_model.py, which every board loads.
import math

try:
    import sensor_model  # on a board: loaded at its start
except ImportError:
    from ferry.hwsim.shims import sensor_model


def pressure_hpa(seed, t_s):
    """Air pressure: 1013 hPa give or take a slow weather swing, with a little noise."""
    return 1013.0 + 12.0 * math.sin(2 * math.pi * t_s / 172800 + (seed % 180) * math.pi / 90) + \
        sensor_model._noise(seed + 3, t_s, 0.2)


def water_temperature_c(seed, t_s):
    """What a DS18B20 probe in a water tank measures: slower and cooler than the air."""
    return 14.0 + 1.5 * math.sin(2 * math.pi * t_s / 86400 + (seed % 360) * math.pi / 180) + \
        sensor_model._noise(seed + 4, t_s, 0.1)


def particulates_ugm3(seed, t_s):
    """(PM1.0, PM2.5, PM10) in ug/m3 as a PMS5003 reports them (atmospheric), integers."""
    base = 8.0 + 6.0 * math.sin(2 * math.pi * t_s / 43200 + (seed % 360) * math.pi / 180) + \
        sensor_model._noise(seed + 5, t_s, 2.0)
    return max(0, int(base * 0.7)), max(0, int(base)), max(0, int(base * 1.3)) + 1
