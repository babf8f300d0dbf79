# Deterministic simulated sensor signals, shared by the virtual boards (MicroPython) and the
# host (CPython) so injected anomalies are known exactly: the host computes the same
# `anomaly_at` as the board and records it as ground truth for scoring the server.
# Written in the subset both interpreters run: no f-strings with '=', no dataclasses.
import math

ANOMALY_SLOT_S = 600
ANOMALY_LENGTH_S = 30
ANOMALY_KINDS = ("spike", "step", "stuck")
_MASK = 0xFFFFFFFF


def _mix(seed, n):
    """A 32-bit hash of (seed, n): xorshift rounds, identical on both interpreters."""
    x = (seed * 0x9E3779B1 + n * 0x85EBCA77 + 0x165667B1) & _MASK
    for _ in range(3):
        x ^= (x << 13) & _MASK
        x ^= x >> 17
        x ^= (x << 5) & _MASK
    return x


def anomaly_at(seed, t_s):
    """(kind, start_s) of the anomaly active at host time t_s, or None; one slot in four has one."""
    slot = int(t_s // ANOMALY_SLOT_S)
    h = _mix(seed, slot)
    if h % 4:
        return None
    start = slot * ANOMALY_SLOT_S + (h >> 8) % (ANOMALY_SLOT_S - ANOMALY_LENGTH_S)
    if not start <= t_s < start + ANOMALY_LENGTH_S:
        return None
    return ANOMALY_KINDS[(h >> 20) % len(ANOMALY_KINDS)], start


def _noise(seed, t_s, scale):
    return ((_mix(seed, int(t_s * 10)) & 0xFFFF) / 65535.0 - 0.5) * scale


def temperature_c(seed, t_s):
    phase = (seed % 360) * math.pi / 180
    value = 21.0 + 3.0 * math.sin(2 * math.pi * t_s / 86400 + phase) + 0.3 * math.sin(2 * math.pi * t_s / 300)
    anomaly = anomaly_at(seed, t_s)
    if anomaly is not None:
        kind, start = anomaly
        if kind == "spike":
            value += 12.0
        elif kind == "step":
            value += 6.0
        else:
            return temperature_c(seed, start - 1) if start - 1 < t_s else value
    return value + _noise(seed, t_s, 0.2)


def humidity_pct(seed, t_s):
    value = 45.0 - 8.0 * math.sin(2 * math.pi * t_s / 86400 + (seed % 90) * math.pi / 180)
    return max(0.0, min(100.0, value + _noise(seed + 1, t_s, 1.0)))


def battery_mv(seed, t_s, boot_t_s):
    """A LiPo cell discharging slowly from 4150 mV, recharged at every power-on."""
    return int(4150 - (t_s - boot_t_s) * 0.01 + _noise(seed + 2, t_s, 6.0))
