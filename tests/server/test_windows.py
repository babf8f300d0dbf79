"""Event-time windows with a per-device watermark."""

from __future__ import annotations

import random

import pytest

from ferry.server.windows import DeviceWindows, History, WindowKind, series

M1 = WindowKind("1m", 60_000, 60_000)
M5 = WindowKind("5m", 300_000, 60_000)
KINDS = (M1, M5)


def test_window_starts() -> None:
    assert M1.starts(125_000) == [120_000]
    assert M5.starts(125_000) == [-120_000, -60_000, 0, 60_000, 120_000]
    assert M5.starts(300_000) == [60_000, 120_000, 180_000, 240_000, 300_000]


def test_aggregates_and_hopping_windows() -> None:
    w, h = DeviceWindows("d"), History()
    for ts, v in ((600_000, 1.0), (630_000, 3.0), (660_000, 2.0)):
        h.extend(w.add(ts, {"x": v}, KINDS, lateness_ms=0), keep=10)
    rows = series("x", KINDS, w, h)
    closed_1m = [r for r in rows["1m"] if r["closed"]]
    assert [(r["start_ms"], r["count"], r["min"], r["max"], r["mean"], r["last"]) for r in closed_1m] == \
        [(600_000, 2, 1.0, 3.0, 2.0, 3.0)]
    by_start = {r["start_ms"]: r for r in rows["5m"]}
    assert by_start[600_000]["count"] == 3 and not by_start[600_000]["closed"]
    assert by_start[360_000]["count"] == 2 and by_start[360_000]["closed"]


def test_late_events_are_counted_and_not_applied() -> None:
    w = DeviceWindows("d")
    assert w.add(1_000_000, {"x": 1.0}, KINDS, lateness_ms=10_000) == []
    assert w.add(989_999, {"x": 5.0}, KINDS, lateness_ms=10_000) is None
    assert w.add(990_000, {"x": 2.0}, KINDS, lateness_ms=10_000) == []
    assert w.late == 1
    assert [r["max"] for r in series("x", (M1,), w, None)["1m"]] == [2.0]


def test_out_of_order_within_lateness_matches_in_order_result() -> None:
    rng = random.Random(7)
    events = [(i * 7_000, {"x": float(rng.randrange(100))}) for i in range(200)]
    shuffled = events[:]
    i = 0
    while i < len(shuffled) - 1:  # swap disjoint neighbours: at most 7 s out of order
        if rng.random() < 0.3:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
            i += 1
        i += 1
    a, b = DeviceWindows("d"), DeviceWindows("d")
    pa = [c for ts, m in events for c in a.add(ts, m, KINDS, 10_000)]
    pb = [c for ts, m in shuffled for c in b.add(ts, m, KINDS, 10_000)]
    assert b.late == 0
    assert sorted(pa, key=repr) == sorted(pb, key=repr)
    assert series("x", KINDS, a, None) == series("x", KINDS, b, None)
    assert DeviceWindows.from_dict(b.to_dict()).to_dict() == b.to_dict()
    h = History()
    h.extend(pb, keep=5)
    assert History.from_dict(h.to_dict()) == h


def test_every_window_closes_exactly_once() -> None:
    w, h = DeviceWindows("d"), History()
    published = []
    for ts in range(0, 1_000_000, 13_000):
        closed = w.add(ts, {"x": 1.0, "y": 2.0}, KINDS, 0)
        published += closed
        h.extend(closed, keep=3)
    keys = [(c.kind, c.metric, c.start_ms) for c in published]
    assert len(keys) == len(set(keys))
    assert len(h.rows["1m"]["x"]) == 3  # keep
    assert [r["start_ms"] for r in h.views("x", M1)] == [780_000, 840_000, 900_000]


def test_history_keeps_at_most_keep_windows_of_at_most_16_metrics() -> None:
    """A device whose metric names keep changing (16 a reading at most, by the contract) does not grow its
    history without bound: the metrics whose windows closed last are kept, `keep` windows each."""
    w, h = DeviceWindows("d"), History()
    for minute in range(40):
        metrics = {f"m{(minute + i) % 24}": float(minute) for i in range(16)}  # the names rotate
        h.extend(w.add(minute * 60_000, metrics, KINDS, lateness_ms=0), keep=5)
    for kind in ("1m", "5m"):
        assert len(h.rows[kind]) == 16
        assert all(len(rows) <= 5 for rows in h.rows[kind].values())
    # The last reading (minute 39) closed minute 38, whose names were m14..m23, m0..m5.
    assert sorted(h.rows["1m"]) == sorted(f"m{(38 + i) % 24}" for i in range(16))


def test_the_mean_stays_within_min_and_max() -> None:
    w, h = DeviceWindows("d"), History()
    for ts in (0, 1000, 2000):
        h.extend(w.add(ts, {"x": 0.1}, (M1,), lateness_ms=0), keep=5)
    for ts in (3000, 4000):
        h.extend(w.add(ts, {"y": 1e308}, (M1,), lateness_ms=0), keep=5)
    h.extend(w.add(60_000, {"x": 1.0}, (M1,), lateness_ms=0), keep=5)
    x, y = series("x", (M1,), w, h)["1m"][0], series("y", (M1,), w, h)["1m"][0]
    assert 0.1 + 0.1 + 0.1 != 0.3 and x["mean"] == 0.1  # a plain sum / count is 0.10000000000000002
    assert y["mean"] == 1e308  # the sum overflows to infinity


# ---- panes against the windows they replace ---------------------------------------------------

class ReferenceWindows:
    """Every window of every kind kept apart, each reading added to each window holding it (how the
    worker kept them before panes): the model the pane-based `DeviceWindows` must agree with."""

    def __init__(self) -> None:
        self.max_event_ms = -1
        self.late = 0
        self.open: dict[tuple[str, str, int], list] = {}

    def add(self, ts_ms, metrics, kinds, lateness_ms, advance=True):
        mark = None if self.max_event_ms < 0 else self.max_event_ms - lateness_ms
        if mark is not None and ts_ms < mark:
            self.late += 1
            return None
        for kind in kinds:
            for metric, value in metrics.items():
                for start in kind.starts(ts_ms):
                    w = self.open.setdefault((kind.name, metric, start), [kind, []])
                    w[1].append((ts_ms, float(value)))
        if advance and ts_ms > self.max_event_ms:
            self.max_event_ms = ts_ms
        mark = self.max_event_ms - lateness_ms if self.max_event_ms >= 0 else None
        closed = []
        for key in [k for k, (kind, _) in self.open.items() if mark is not None and k[2] + kind.size_ms <= mark]:
            kind, values = self.open.pop(key)
            last = values[0]
            for v in values[1:]:
                if v[0] >= last[0]:
                    last = v
            closed.append((key[0], key[1], key[2], len(values), min(v for _, v in values),
                           max(v for _, v in values), sum(v for _, v in values) / len(values), last[1]))
        return sorted(closed, key=lambda c: (c[2], c[0], c[1]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kinds", [KINDS, (WindowKind("1m", 45_000, 45_000), WindowKind("5m", 300_000, 60_000))],
                         ids=["1m-5m", "45s-5m-by-1m"])
def test_panes_close_the_same_windows_as_keeping_every_window(seed: int, kinds) -> None:
    """Random streams (out of order, late, untrusted times that do not advance the watermark, gaps of
    hours, metrics coming and going): the same windows close at the same readings, with the same
    count, min, max and last, and the mean to rounding (pane sums are added in another order)."""
    rng = random.Random(seed)
    w, ref = DeviceWindows("d"), ReferenceWindows()
    ts = 1_700_000_000_000
    for _ in range(600):
        ts += rng.choice((1_000, 7_000, 10_000, 30_000, 61_000, 3_600_000 if rng.random() < 0.01 else 5_000))
        when = ts - rng.randrange(0, 40_000)  # up to 40 s out of order; lateness 20 s: some are late
        metrics = {m: float(rng.randrange(-50, 50)) / 4 for m in ("a", "b", "c") if rng.random() < 0.7} or {"a": 1.0}
        advance = rng.random() > 0.05
        got = w.add(when, metrics, kinds, 20_000, advance)
        want = ref.add(when, metrics, kinds, 20_000, advance)
        if want is None:
            assert got is None
            continue
        assert [(c.kind, c.metric, c.start_ms, c.count, c.min, c.max, c.last) for c in got] == \
            [(k, m, s, n, lo, hi, last) for k, m, s, n, lo, hi, _, last in want]
        assert [c.mean for c in got] == pytest.approx([mean for *_, mean, _ in want])
        w = DeviceWindows.from_dict(w.to_dict())  # every reading from the stored state, as the worker does
    assert w.late == ref.late > 0
    for kind in kinds:  # the open windows the API shows
        for metric in ("a", "b", "c"):
            shown = [(v["start_ms"], v["count"]) for v in w.open_views(metric, kind)]
            kept = sorted((s, len(vals)) for (k, m, s), (_, vals) in ref.open.items() if k == kind.name and m == metric)
            assert shown == kept


def test_state_written_before_panes_reads_back() -> None:
    """The open windows per kind of older state: the minute's windows become the panes, nothing already
    published is published again, and the windows still open close with what they hold."""
    old = {"device": "d", "max_event_ms": 630_000, "late": 2,
           "open": {"1m": {"x": {"600000": [2, 1.0, 3.0, 4.0, 3.0, 630_000]}},
                    "5m": {"x": {str(s): [2, 1.0, 3.0, 4.0, 3.0, 630_000] for s in (360_000, 420_000, 480_000, 540_000,
                                                                                     600_000)}}}}
    w = DeviceWindows.from_dict(old)
    assert w.late == 2 and w.metrics() == ["x"]
    closed = w.add(700_000, {"x": 5.0}, KINDS, lateness_ms=0)
    assert [(c.kind, c.start_ms, c.count) for c in closed] == [("5m", 360_000, 2), ("1m", 600_000, 2)]


def test_panes_written_as_aggregates_read_back_as_rows() -> None:
    """States stored before a metric's panes became one array: {start: [count, min, max, sum, last, last_ms]}."""
    old = {"device": "d", "max_event_ms": 630_000, "late": 0, "closed_mark": None,
           "panes": {"x": {"600000": [2, 1.0, 3.0, 4.0, 3.0, 630_000], "540000": [1, 5.0, 5.0, 5.0, 5.0, 550_000]}}}
    w = DeviceWindows.from_dict(old)
    assert [(v["start_ms"], v["count"], v["min"], v["max"], v["last"]) for v in w.open_views("x", M1)] == \
        [(540_000, 1, 5.0, 5.0, 5.0), (600_000, 2, 1.0, 3.0, 3.0)]
    closed = w.add(700_000, {"x": 2.0}, (M1,), lateness_ms=0)
    assert [(c.start_ms, c.count, c.mean, c.last) for c in closed] == [(540_000, 1, 5.0, 5.0), (600_000, 2, 2.0, 3.0)]


def test_a_devices_open_panes_take_little_memory() -> None:
    """Two metrics, a reading every 10 s for 10 minutes (7 panes each open at the end): the windows
    hold < 2,400 bytes of Python memory (~1,960 here; as `Aggregate`s with boxed numbers, 3,504)."""
    import tracemalloc

    def fed() -> DeviceWindows:
        w = DeviceWindows("d")
        for i in range(60):
            w.add(1_700_000_000_000 + i * 10_000, {"temp_c": 20.0 + i % 7 / 10, "rh_pct": 50.0 + i % 5 / 10},
                  KINDS, lateness_ms=120_000)
        return w

    tracemalloc.start()
    try:
        fed()  # caches and free lists filled: what stays allocated after this is the second one's
        before = tracemalloc.take_snapshot()
        w = fed()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # the readings' numbers too: held by the windows as the very objects the test made
    mine = [tracemalloc.Filter(True, "*/server/windows.py"), tracemalloc.Filter(True, __file__)]
    held = sum(s.size_diff for s in after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename"))
    assert sum(len(rows) for rows in w.panes.values()) // 7 == 14
    assert held < 2_400, held
