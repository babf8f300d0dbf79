"""The anomalies hw-sim's sensor model injects, enumerated exactly: the ground truth the server's
anomaly detection is scored against (tests/server/test_anomaly_scoring.py).

Time base: `t_s` is host Unix time in seconds. A virtual board reads its SHT31 at the host's
`utime.time()` (shims/machine.py), and once NTP has run on the board (shims/ntptime.py sets the
board clock to the host's) a reading's `ts` is that same time in ms, a few ms after the I2C read.
So an episode (kind, start_s, end_s) covers the synced readings with start_s * 1000 <= ts <
end_s * 1000. Readings with `"sync": false` carry ms since boot and cannot be placed.

Only `temp_c` carries anomalies; humidity and battery have none.
"""

from __future__ import annotations

from ferry.hwsim.shims import sensor_model

SLOT_S = sensor_model.ANOMALY_SLOT_S
LENGTH_S = sensor_model.ANOMALY_LENGTH_S


def anomalies(seed: int, t0_s: float, t1_s: float) -> list[tuple[str, float, float]]:
    """Every (kind, start_s, end_s) of `seed` overlapping [t0_s, t1_s), oldest first; end is exclusive.

    Kinds are the model's: "spike" (+12 °C), "step" (+6 °C), "stuck" (the value at start - 1 s).
    """
    out: list[tuple[str, float, float]] = []
    for slot in range(int(t0_s // SLOT_S), int(t1_s // SLOT_S) + 1):
        h = sensor_model._mix(seed, slot)  # the model's own draw for this slot, as anomaly_at makes it
        if h % 4:
            continue
        start = slot * SLOT_S + (h >> 8) % (SLOT_S - LENGTH_S)
        end = start + LENGTH_S
        if end <= t0_s or start >= t1_s:
            continue
        kind = sensor_model.ANOMALY_KINDS[(h >> 20) % len(sensor_model.ANOMALY_KINDS)]
        if sensor_model.anomaly_at(seed, start) != (kind, start):
            raise RuntimeError("hwsim.shims.sensor_model no longer draws slots as this module assumes")
        out.append((kind, float(start), float(end)))
    return out
