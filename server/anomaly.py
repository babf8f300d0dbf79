"""Anomaly detection per device and metric: pure, no Faust, no clock.

Two checks run on every new reading of a metric, in event-time order:

* **deviation** (kind "anomaly"): the robust z-score |x - median| / (1.4826 MAD) against a
  baseline of the metric's last `window` normal readings; z >= `z_open` opens an episode.
  (When over half the baseline is one value, MAD is 0 and says nothing: the standard deviation
  around the median stands in.)
* **flat line** (kind "stuck"): a frozen sensor reports a normal value, which no z-score sees.
  A run of L identical readings is stuck when L >= `stuck_min_readings`, it spans at least
  `stuck_min_s`, and it is improbable for this metric: p_eq ** (L - 1) <= `stuck_max_chance`,
  with p_eq the share of identical neighbours in the baseline (the run's own left out). Metrics
  that repeat themselves often (p_eq > `stuck_max_repeat`: coarse, binary, constant) are not
  checked for flat lines at all.

Why median/MAD rather than an EWMA z-score (mean and variance, alpha 0.05), measured on
hw-sim's sensor model, 20 seeds x 12 h at 10 s: on the clean model both find every spike and
step with no false deviation (+6 and +12 °C stand far out of ±0.1 °C of noise on a 0.3 °C
five-minute wave). With 5 % of readings glitched by 0.5-1.5 °C, the EWMA raised 245 false
deviations and the median/MAD 40: every glitch inflates the EWMA's variance and drags its
mean, while a bounded window's median and MAD ignore up to half of it being odd. The EWMA is
cheaper (about 2 µs against 5-7 µs per metric and reading here) and smaller, but the budget is
20 µs, and a 60-value window is about 550 bytes of JSON.

Episodes: an alert is raised on the first anomalous reading only. While an episode is open,
readings with z >= `z_close` (hysteresis) or still in the flat run keep it open and stay out of
the baseline, so the anomaly cannot poison it (a flat run's readings learned before it was
recognised are taken back out); `clear_readings` normal readings in a row close it. A deviation
lasting `relearn_readings` is the metric's new level: the baseline restarts from there (no
second alert). A gap in event time longer than `stale_after_intervals` sample intervals (a
device off for hours) restarts every baseline of the device: the old one no longer describes
the signal.

Kinds: "stuck" for a flat line, "anomaly" for a deviation (the reason says above or below).
Spikes and level shifts are not told apart: at the first reading, when the alert is raised,
they look alike (hw-sim's spike and step are both 30 s plateaus, of +12 and +6 °C), and telling
them apart by size alone would be tuning to the simulator.

Limit: a flat line of 3 readings is all a 30 s freeze leaves at the default 10 s interval, and
with 0.01 °C resolution against ±0.1 °C of noise, 3 equal readings in a row also happen by
chance about once in two hours per device; so at 10 s about half the "stuck" alerts are false
(docs/anomaly.md has the numbers; the slope before the run does not separate them either).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping
from dataclasses import dataclass

from ferry.server.alerts import Alert
from ferry.server.doubles import pack, unpack

_MAD_TO_SIGMA = 1.4826
"""MAD x this estimates the standard deviation of normal noise."""


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    window: int = 60
    """Baseline: the metric's last N normal readings (10 minutes at the default 10 s interval)."""
    min_baseline: int = 20
    """No check until the baseline holds this many readings (after a start, a gap or a relearn)."""
    z_open: float = 6.0
    """Robust z that opens a deviation episode. Normal readings of hw-sim's model reach 3.3 at 10 s
    sampling and 5.1 at 1 s (the 60-reading baseline then spans a minute); its anomalies score 17-47."""
    z_close: float = 3.0
    """Within an episode, readings at or above this robust z still count as anomalous."""
    clear_readings: int = 3
    """An episode closes after this many normal readings in a row."""
    relearn_readings: int = 30
    """A deviation lasting this many readings is the new level: the baseline restarts from it."""
    stuck_min_readings: int = 3
    """A flat run must be at least this many readings (two equal ones are common)..."""
    stuck_min_s: float = 15.0
    """...span at least this long (3 readings at 10 s, 16 at 1 s)..."""
    stuck_max_chance: float = 0.03
    """...and be at most this probable by chance, p_eq ** (run - 1)."""
    stuck_max_repeat: float = 0.2
    """Only metrics whose neighbours repeat at most this often (p_eq) are checked for flat lines:
    in a coarse, binary or constant metric a run of equal values says nothing."""
    min_scale: float = 1e-3
    """Floor of the robust sigma, in the metric's unit: a constant metric still gets a finite z."""
    stale_after_intervals: float = 10.0
    """A gap longer than this many sample intervals restarts the device's baselines."""

    def __post_init__(self) -> None:
        if not 3 <= self.min_baseline <= self.window:
            raise ValueError("anomaly settings: need 3 <= min_baseline <= window")
        if not 0 < self.z_close <= self.z_open:
            raise ValueError("anomaly settings: need 0 < z_close <= z_open")
        if self.clear_readings < 1 or self.relearn_readings < 1:
            raise ValueError("anomaly settings: clear_readings and relearn_readings must be >= 1")


class _Metric:
    """One metric's baseline, current flat run and open episode."""

    __slots__ = ("window", "ordered", "eq", "last", "run", "run_ms", "run_learned", "episode", "calm", "length")

    def __init__(self) -> None:
        # Arrays of doubles, not lists of float objects: 8 bytes a reading instead of 32 (the
        # worker keeps every device's detectors live, docs/server.md "Memory per device").
        self.window = array("d")  # normal readings, oldest first
        self.ordered = array("d")  # the same, sorted
        self.eq = 0  # neighbours in `window` that are identical
        self.last: float | None = None
        self.run = 0  # identical readings in a row, ending with `last`
        self.run_ms = 0  # event time of the run's first reading
        self.run_learned = 0  # readings of the run in the baseline (the newest ones there)
        self.episode: str | None = None  # kind of the open episode
        self.calm = 0  # normal readings in a row within the episode
        self.length = 0  # anomalous readings of the episode

    def learn(self, x: float, size: int) -> None:
        w = self.window
        if w and w[-1] == x:
            self.eq += 1
        w.append(x)
        insort(self.ordered, x)
        if len(w) > size:
            old = w.pop(0)
            if w[0] == old:
                self.eq -= 1
            del self.ordered[bisect_left(self.ordered, old)]

    def unlearn_run(self) -> None:
        """Take the current run's readings back out of the baseline: they were a flat line."""
        w = self.window
        for _ in range(min(self.run_learned, len(w))):
            x = w.pop()
            if w and w[-1] == x:
                self.eq -= 1
            del self.ordered[bisect_left(self.ordered, x)]
        self.run_learned = 0

    def forget(self) -> None:
        """Drop the baseline and the run (an episode cannot outlive its baseline)."""
        del self.window[:]
        del self.ordered[:]
        self.eq = self.run = self.run_learned = self.calm = self.length = 0
        self.last = self.episode = None

    def baseline(self, min_scale: float) -> tuple[float, float]:
        """(median, robust sigma) of the baseline."""
        o = self.ordered
        n = len(o)
        h = n // 2
        med = o[h] if n & 1 else (o[h - 1] + o[h]) * 0.5
        cut = bisect_right(o, med)
        if n & 1:
            mad = _deviation(o, cut, med, h)[0]
        else:
            below, above = _deviation(o, cut, med, h - 1)
            mad = (below + above) * 0.5
        if mad > 0:
            return med, max(mad * _MAD_TO_SIGMA, min_scale)
        # more than half the baseline is one value (a coarse metric): MAD says nothing, take the
        # standard deviation around the median
        devs = sorted([v - med if v > med else med - v for v in o])
        return med, max((sum(d * d for d in devs) / n) ** 0.5, min_scale)

    def to_dict(self, packed: bool = False) -> dict:
        return {"w": pack(self.window) if packed else self.window.tolist(), "last": self.last, "run": [self.run, self.run_ms, self.run_learned],
                "ep": None if self.episode is None else [self.episode, self.calm, self.length]}

    @classmethod
    def from_dict(cls, data: dict, size: int) -> "_Metric":
        m = cls()
        w = unpack(data["w"])[-size:]
        m.window = w
        m.ordered = array("d", sorted(w))
        m.eq = sum(1 for a, b in zip(w, w[1:]) if a == b)
        m.last = data["last"]
        m.run, m.run_ms, m.run_learned = data["run"]
        if data["ep"] is not None:
            m.episode, m.calm, m.length = data["ep"]
        return m


def _deviation(o: array, cut: int, med: float, k: int) -> tuple[float, float]:
    """The k-th and (k+1)-th smallest (0-based; the second inf when there is none) of |v - med| over
    the sorted `o`, of which o[:cut] are <= med: without computing and sorting every deviation (that
    was a third of the detectors' time).

    The deviations of o[:cut] read backwards (med - v) and of o[cut:] (v - med) are two sorted runs;
    a binary search finds how many of the k+1 smallest come from the first.
    """
    below, above = cut, len(o) - cut
    lo, hi = max(0, k + 1 - above), min(k + 1, below)
    while lo < hi:
        i = (lo + hi) >> 1
        if med - o[cut - 1 - i] < o[cut + k - i] - med:
            lo = i + 1
        else:
            hi = i
    j = k + 1 - lo  # the k+1 smallest: lo from the first run, j from the second
    a = med - o[cut - lo] if lo else -1.0
    b = o[cut + j - 1] - med if j else -1.0
    na = med - o[cut - 1 - lo] if lo < below else math.inf
    nb = o[cut + j] - med if j < above else math.inf
    return (a if a > b else b), (na if na < nb else nb)


def _num(x: float) -> str:
    return f"{x:.6g}"


class DeviceDetectors:
    """The detectors of one device, one per metric it reports; its table value via to_dict()."""

    __slots__ = ("device", "settings", "metrics", "last_ms", "interval_ms")

    def __init__(self, device: str, settings: AnomalySettings) -> None:
        self.device = device
        self.settings = settings
        self.metrics: dict[str, _Metric] = {}
        self.last_ms: int | None = None
        """Event time of the newest reading observed."""
        self.interval_ms: int | None = None
        """The device's sample interval, a running average of event-time spacing."""

    def observe(self, ts_ms: int, metrics: Mapping[str, float]) -> list[Alert]:
        """Check one new (deduplicated) reading; [] for one older than the newest observed."""
        last = self.last_ms
        if last is not None:
            if ts_ms < last:
                return []
            gap = ts_ms - last
            iv = self.interval_ms
            if iv is not None and gap > self.settings.stale_after_intervals * max(iv, 1):
                for m in self.metrics.values():
                    m.forget()
                self.interval_ms = None  # the next spacing sets it again
            else:
                self.interval_ms = gap if iv is None else iv + (gap - iv) // 8
        self.last_ms = ts_ms
        alerts = []
        for name, x in metrics.items():
            m = self.metrics.get(name)
            if m is None:
                m = self.metrics[name] = _Metric()
            alert = self._check(name, m, ts_ms, x)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _check(self, name: str, m: _Metric, ts_ms: int, x: float) -> Alert | None:
        s = self.settings
        if x == m.last:
            m.run += 1
        else:
            m.last, m.run, m.run_ms, m.run_learned = x, 1, ts_ms, 0
        n = len(m.window)
        if n < s.min_baseline and m.episode is None:  # (an open episode keeps checking what is left)
            m.learn(x, s.window)
            m.run_learned += 1
            return None
        med, sigma = m.baseline(s.min_scale)
        z = (x - med if x > med else med - x) / sigma
        # share of identical neighbours in the baseline, without the current run's own pairs,
        # with one pseudo-count each way
        k = max(0, min(m.run_learned, n) - 1)
        p_eq = (m.eq - k + 1) / (n - k + 1)
        chance = p_eq ** (m.run - 1)
        stuck = (m.run >= s.stuck_min_readings and ts_ms - m.run_ms >= s.stuck_min_s * 1000
                 and p_eq <= s.stuck_max_repeat and chance <= s.stuck_max_chance)
        if m.episode is None and z >= s.z_open:
            m.episode, m.calm, m.length = "anomaly", 0, 1
            side = "above" if x > med else "below"
            return Alert(self.device, "anomaly",
                         f"{name} {_num(x)} is {z:.1f} robust z {side} the median {_num(med)} "
                         f"of the last {n} readings", ts_ms, name, float(x), round(z, 2))
        if m.episode is None:
            if stuck:
                m.episode, m.calm, m.length = "stuck", 0, 0
                m.unlearn_run()
                return Alert(self.device, "stuck",
                             f"{name} has read {_num(x)} {m.run} times in a row over "
                             f"{(ts_ms - m.run_ms) / 1000:.0f} s; by chance a run this long "
                             f"has p = {chance:.2g} here", ts_ms, name, float(x), float(m.run))
            m.learn(x, s.window)
            m.run_learned += 1
            return None
        if z >= s.z_close:
            m.calm = 0
            m.length += 1
            if m.length >= s.relearn_readings:  # not an episode any more: the metric's new level
                m.forget()
                m.last, m.run, m.run_ms, m.run_learned = x, 1, ts_ms, 1
                m.learn(x, s.window)
            return None
        if stuck:
            m.calm = 0
            return None
        m.learn(x, s.window)
        m.run_learned += 1
        m.calm += 1
        if m.calm >= s.clear_readings:
            m.episode = None
        return None

    def to_dict(self, packed: bool = False) -> dict:
        """The baselines as lists of numbers, or as bytes when `packed` (`ferry.server.doubles`)."""
        return {"device": self.device, "last_ms": self.last_ms, "interval_ms": self.interval_ms,
                "metrics": {name: m.to_dict(packed) for name, m in self.metrics.items()}}

    @classmethod
    def from_dict(cls, device: str, data: dict, settings: AnomalySettings) -> "DeviceDetectors":
        d = cls(device, settings)
        d.last_ms, d.interval_ms = data["last_ms"], data["interval_ms"]
        d.metrics = {name: _Metric.from_dict(m, settings.window) for name, m in data["metrics"].items()}
        return d
