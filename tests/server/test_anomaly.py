"""Per-device, per-metric anomaly detection (server.anomaly): deviations, flat lines, episodes."""

from __future__ import annotations

import json
import random
import time

import pytest

from ferry.server.alerts import Alert
from ferry.server.anomaly import AnomalySettings, DeviceDetectors

S = AnomalySettings()
T0 = 1_767_225_600_000
STEP = 10_000


def noisy(rng: random.Random, level: float = 20.0) -> float:
    """±0.1 of noise at a resolution of 0.001, so equal neighbours are rare (a chance flat line
    is the scoring test's business, tests/server/test_anomaly_scoring.py)."""
    return round(level + rng.uniform(-0.1, 0.1), 3)


def feed(det: DeviceDetectors, values: list[dict[str, float]], start: int = 0) -> list[tuple[int, Alert]]:
    """Readings at STEP spacing from index `start`; (index, alert) for each alert."""
    out = []
    for i, m in enumerate(values, start):
        out += [(i, a) for a in det.observe(T0 + i * STEP, m)]
    return out


def baseline(n: int = 60, seed: int = 1) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{"temp_c": noisy(rng), "rh_pct": round(45 + rng.uniform(-0.5, 0.5), 3)} for _ in range(n)]


def test_a_spike_raises_one_alert_per_episode() -> None:
    rng = random.Random(2)
    det = DeviceDetectors("d1", S)
    values = baseline() + [{"temp_c": noisy(rng, 32.0)} for _ in range(3)] + baseline(10, seed=3) \
        + [{"temp_c": noisy(rng, 26.0)} for _ in range(2)] + baseline(5, seed=4)
    alerts = feed(det, values)
    assert [(i, a.kind, a.metric) for i, a in alerts] == [(60, "anomaly", "temp_c"), (73, "anomaly", "temp_c")]
    first = alerts[0][1]
    assert first.device == "d1" and first.ts_ms == T0 + 60 * STEP and first.value == values[60]["temp_c"]
    assert first.score > 30 and "robust z above the median 20" in first.reason
    assert "of the last 60 readings" in first.reason


def test_a_drop_says_below() -> None:
    det = DeviceDetectors("d", S)
    alerts = feed(det, baseline() + [{"temp_c": 14.0}])
    assert len(alerts) == 1 and "below the median" in alerts[0][1].reason


def test_anomalous_readings_stay_out_of_the_baseline() -> None:
    det = DeviceDetectors("d", S)
    feed(det, baseline())
    window_before = det.to_dict()["metrics"]["temp_c"]["w"]
    alerts = feed(det, [{"temp_c": 26.0 + i * 0.01} for i in range(20)], start=60)
    assert len(alerts) == 1  # one episode, 20 readings long
    assert det.to_dict()["metrics"]["temp_c"]["w"] == window_before
    # still open: back to normal, a second excursion one reading later belongs to the same episode
    assert feed(det, baseline(2, seed=9) + [{"temp_c": 26.0}], start=80) == []
    # normal for `clear_readings` readings: closed, and the next excursion is a new episode
    assert feed(det, baseline(S.clear_readings, seed=10), start=83) == []
    assert len(feed(det, [{"temp_c": 26.0}], start=83 + S.clear_readings)) == 1


def test_a_lasting_shift_becomes_the_new_level() -> None:
    det = DeviceDetectors("d", S)
    feed(det, baseline())
    shifted = [{"temp_c": v["temp_c"] + 5} for v in baseline(S.relearn_readings + S.min_baseline + 10, seed=5)]
    alerts = feed(det, shifted, start=60)
    assert [i for i, _ in alerts] == [60]  # relearned after relearn_readings, no second alert
    assert all(abs(v - 25) < 0.2 for v in det.to_dict()["metrics"]["temp_c"]["w"])
    assert len(feed(det, [{"temp_c": 31.0}], start=60 + len(shifted))) == 1  # against the new level


def test_a_stuck_sensor_is_one_stuck_alert() -> None:
    det = DeviceDetectors("d", S)
    feed(det, baseline())
    frozen = det.to_dict()["metrics"]["temp_c"]["w"][-1]
    learned = det.to_dict()["metrics"]["temp_c"]["w"].count(frozen)
    stuck = [{"temp_c": frozen, "rh_pct": 45.0 + i / 10} for i in range(12)]
    alerts = feed(det, stuck, start=60)
    # the run started with the last baseline reading, so it spans 20 s at the second frozen reading
    assert [(i, a.kind, a.metric) for i, a in alerts] == [(61, "stuck", "temp_c")]
    a = alerts[0][1]
    assert a.value == frozen and a.score == 3.0 and "3 times in a row over 20 s" in a.reason
    # the flat line left the baseline (its first reading too); moving again closes the episode
    assert det.to_dict()["metrics"]["temp_c"]["w"].count(frozen) == learned - 1
    assert feed(det, [{"temp_c": 20.011}, {"temp_c": 19.982}, {"temp_c": 20.034}], start=72) == []
    assert det.to_dict()["metrics"]["temp_c"]["ep"] is None


def test_a_short_run_or_a_fast_run_is_not_stuck() -> None:
    """Two equal readings happen by chance; at 1 s sampling, 3 equal ones too (only 2 s)."""
    det = DeviceDetectors("d", S)
    feed(det, baseline())
    last = det.to_dict()["metrics"]["temp_c"]["w"][-1]
    assert feed(det, [{"temp_c": last}, {"temp_c": 20.2}], start=60) == []
    fast = DeviceDetectors("f", S)
    for i, m in enumerate(baseline()):
        fast.observe(T0 + i * 1000, m)
    assert [fast.observe(T0 + (60 + i) * 1000, {"temp_c": last}) for i in range(3)] == [[], [], []]


def test_coarse_or_constant_metrics_are_not_stuck() -> None:
    """A metric that repeats itself half the time needs a much longer run; a constant one never alerts."""
    rng = random.Random(7)
    det = DeviceDetectors("d", S)
    coarse = [{"door": float(rng.random() < 0.1), "level_pct": float(rng.choice((40, 41)))} for _ in range(200)]
    constant = [{"fw_major": 1.0} for _ in range(200)]
    assert feed(det, coarse) == []
    assert feed(DeviceDetectors("c", S), constant) == []


def test_warm_up_then_detection() -> None:
    det = DeviceDetectors("d", S)
    values = baseline(S.min_baseline)
    values[5] = {"temp_c": 40.0}  # during warm-up: learned, not checked
    assert feed(det, values) == []
    assert len(feed(det, [{"temp_c": 40.0}], start=S.min_baseline)) == 1


def test_older_readings_are_ignored() -> None:
    det = DeviceDetectors("d", S)
    feed(det, baseline())
    state = json.dumps(det.to_dict())
    assert det.observe(T0 + 30 * STEP, {"temp_c": 99.0}) == []
    assert json.dumps(det.to_dict()) == state
    assert det.observe(T0 + 59 * STEP, {"temp_c": 20.0}) == []  # same time as the newest: observed


def test_a_long_gap_restarts_the_baselines() -> None:
    """A device off for hours comes back where its slow signal has moved: no alert, a fresh baseline."""
    det = DeviceDetectors("d", S)
    feed(det, baseline())
    later = 59 * STEP + S.stale_after_intervals * STEP + 1
    assert det.observe(int(T0 + later), {"temp_c": 26.0}) == []
    assert det.to_dict()["metrics"]["temp_c"]["w"] == [26.0]
    assert det.interval_ms is None


def test_json_round_trip_mid_stream_changes_nothing() -> None:
    rng = random.Random(11)
    values = []
    for i in range(400):
        v = noisy(rng)
        if 100 <= i < 103:
            v += 12
        if 200 <= i < 203:
            v = values[199]["temp_c"]
        values.append({"temp_c": v, "rh_pct": round(45 + rng.uniform(-0.5, 0.5), 3)})
    whole = DeviceDetectors("d", S)
    expected = feed(whole, values)
    assert [(i, a.kind) for i, a in expected] == [(100, "anomaly"), (201, "stuck")]
    got, det = [], DeviceDetectors("d", S)
    for i, m in enumerate(values):
        text = json.dumps(det.to_dict())
        det = DeviceDetectors.from_dict("d", json.loads(text), S)
        got += [(i, a) for a in det.observe(T0 + i * STEP, m)]
    assert got == expected
    assert json.dumps(det.to_dict()) == json.dumps(whole.to_dict())
    per_metric = max(len(json.dumps(m)) for m in det.to_dict()["metrics"].values())
    print(f"\nstate per metric: {per_metric} bytes of JSON (window {S.window})")
    assert per_metric < 2048


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        AnomalySettings(window=10, min_baseline=20)
    with pytest.raises(ValueError):
        AnomalySettings(z_open=3, z_close=4)


def test_cost_per_metric_and_reading() -> None:
    """Printed with -s; the worker's budget is about 20 µs per metric per reading."""
    rng = random.Random(3)
    values = [{"temp_c": noisy(rng), "rh_pct": round(45 + rng.uniform(-0.5, 0.5), 2),
               "vib_g": round(rng.gauss(0, 0.02), 3)} for _ in range(20_000)]
    det = DeviceDetectors("d", S)
    t = time.perf_counter()
    for i, m in enumerate(values):
        det.observe(T0 + i * STEP, m)
    per = (time.perf_counter() - t) / (len(values) * 3)
    t = time.perf_counter()
    for _ in range(1000):
        DeviceDetectors.from_dict("d", json.loads(json.dumps(det.to_dict())), S)
    rt = (time.perf_counter() - t) / 1000
    print(f"\nanomaly: {per * 1e6:.1f} µs per metric per reading; state JSON round trip {rt * 1e6:.0f} µs "
          f"for 3 metrics")


def test_the_baselines_median_and_mad_are_those_of_every_deviation_sorted() -> None:
    """`_Metric.baseline` finds the MAD without sorting every deviation: the same figures as doing
    so, on baselines of every size, with ties and values equal to the median."""
    import random
    from array import array

    from ferry.server.anomaly import _MAD_TO_SIGMA, _Metric

    rng = random.Random(3)
    for _ in range(5000):
        m = _Metric()
        values = [rng.choice((round(rng.gauss(0, 1), 1), 0.0, 1.0, 2.5)) for _ in range(rng.randrange(1, 61))]
        m.ordered = array("d", sorted(values))
        o, n = sorted(values), len(values)
        med = o[n // 2] if n & 1 else (o[n // 2 - 1] + o[n // 2]) * 0.5
        devs = sorted(abs(v - med) for v in o)
        mad = devs[n // 2] if n & 1 else (devs[n // 2 - 1] + devs[n // 2]) * 0.5
        sigma = mad * _MAD_TO_SIGMA if mad > 0 else (sum(d * d for d in devs) / n) ** 0.5
        assert m.baseline(1e-3) == (med, max(sigma, 1e-3)), values
