"""hwsim.ground_truth: the sensor model's anomalies, enumerated exactly."""

from __future__ import annotations

from collections import Counter

from ferry.hwsim import ground_truth
from ferry.hwsim.shims import sensor_model

T0 = 1_767_225_600.0


def test_enumeration_matches_the_model_second_by_second() -> None:
    """Every instant the model says is anomalous lies in exactly the episode listed, and no other."""
    for seed in (1, 100001, 100002, 4242):
        t0, t1 = T0 + seed % 977, T0 + seed % 977 + 6 * 3600
        episodes = ground_truth.anomalies(seed, t0, t1)
        assert episodes and episodes == sorted(episodes, key=lambda e: e[1])
        t = t0
        while t < t1:
            truth = sensor_model.anomaly_at(seed, t)
            inside = [(k, s) for k, s, e in episodes if s <= t < e]
            assert inside == ([] if truth is None else [truth]), (seed, t)
            t += 0.5
        for kind, start, end in episodes:
            assert end - start == sensor_model.ANOMALY_LENGTH_S
            assert sensor_model.anomaly_at(seed, start - 0.001) is None
            assert sensor_model.anomaly_at(seed, end) is None
            assert sensor_model.anomaly_at(seed, end - 0.001) == (kind, start)


def test_edges_overlap_and_order() -> None:
    seed = 100001
    kind, start, end = ground_truth.anomalies(seed, T0, T0 + 86400)[0]
    assert ground_truth.anomalies(seed, start + 10, start + 11) == [(kind, start, end)]  # overlapping t0
    assert ground_truth.anomalies(seed, start - 5, start) == []  # [t0, t1): t1 = start excluded
    assert ground_truth.anomalies(seed, end, end + 1) == []  # end exclusive


def test_what_each_kind_does_to_temperature() -> None:
    seed = 100001
    counts = Counter()
    for kind, start, end in ground_truth.anomalies(seed, T0, T0 + 7 * 86400):
        counts[kind] += 1
        t = start + 12.3
        if kind == "stuck":
            assert sensor_model.temperature_c(seed, t) == sensor_model.temperature_c(seed, start + 25.7)
        else:
            jump = sensor_model.temperature_c(seed, t) - sensor_model.temperature_c(seed, start - 0.5)
            assert abs(jump - (12.0 if kind == "spike" else 6.0)) < 0.5
    # one 10-minute slot in four holds an episode: about 36 a day, each kind a third
    assert 200 < sum(counts.values()) < 300 and set(counts) == {"spike", "step", "stuck"}
