"""Event-time window aggregates per device and metric, with a watermark: pure, no Faust, no clock.

Faust's windowed tables have no watermark and expire by wall-clock time, so
the worker keeps its windows itself, in a plain table keyed by device id (the
records' key, so no repartition). Per device:

* `max_event_ms`: the newest event time accepted;
* watermark = `max_event_ms - allowed_lateness_ms`;
* an event older than the watermark is *late*: counted, not applied;
* a window [start, start + size) is *closed* once watermark >= its end. No later event can
  reach it (every accepted event is >= the watermark), so a closed window is final and is
  returned exactly once by `add` - that is when it is published (`ferry.series.1m`, `.5m`).

Closed windows are kept apart (`History`: the newest `keep` per kind and metric, for at most
`MAX_METRICS` metrics) for the HTTP API, so the per-reading state stays small.
"""

from __future__ import annotations

import functools
import math
from array import array
from dataclasses import dataclass, field

from ferry.contract import MAX_METRICS
from ferry.worker_records import SeriesPoint
from ferry.server.doubles import pack, unpack


@dataclass(frozen=True, slots=True)
class WindowKind:
    """Windows of `size_ms` starting every `step_ms` (tumbling when equal), aligned to the epoch.

    `size_ms` must be a multiple of `step_ms` (the config checks it).
    """

    name: str
    size_ms: int
    step_ms: int

    def starts(self, ts_ms: int) -> list[int]:
        """Starts of every window that contains `ts_ms`, oldest first."""
        last = ts_ms - ts_ms % self.step_ms
        first = last - self.size_ms + self.step_ms
        return list(range(first, last + 1, self.step_ms))


@dataclass(slots=True)
class Aggregate:
    count: int
    min: float
    max: float
    sum: float
    last: float
    last_ms: int

    @classmethod
    def first(cls, value: float, ts_ms: int) -> "Aggregate":
        return cls(1, value, value, value, value, ts_ms)

    def add(self, value: float, ts_ms: int) -> None:
        self.count += 1
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.sum += value
        if ts_ms >= self.last_ms:  # equal times: the later arrival wins
            self.last, self.last_ms = value, ts_ms

    @property
    def mean(self) -> float:
        """sum / count, kept within [min, max]: rounding can put it just outside (three readings of 0.1
        sum to 0.30000000000000004), and a sum of huge values can overflow to infinity."""
        mean = self.sum / self.count
        if not math.isfinite(mean):
            return self.min / 2 + self.max / 2
        return min(max(mean, self.min), self.max)

    def to_list(self) -> list:
        return [self.count, self.min, self.max, self.sum, self.last, self.last_ms]

    def view(self, kind: WindowKind, start: int, closed: bool) -> dict:
        return {"start_ms": start, "end_ms": start + kind.size_ms, "count": self.count, "min": self.min,
                "max": self.max, "mean": self.mean, "last": self.last, "closed": closed}


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A final window, as published."""

    device: str
    kind: str
    metric: str
    start_ms: int
    end_ms: int
    count: int
    min: float
    max: float
    mean: float
    last: float

    def to_record(self) -> SeriesPoint:
        """The record published to the kind's series topic (docs/contract.md)."""
        return SeriesPoint(self.device, self.kind, self.metric, self.start_ms, self.end_ms, self.count,
                           self.min, self.max, self.mean, self.last)


@functools.lru_cache(maxsize=16)
def pane_ms(kinds: tuple[WindowKind, ...]) -> int:
    """The pane every kind's windows are made of: the greatest common divisor of their steps (each
    size is a multiple of its step, so of the pane too)."""
    return functools.reduce(math.gcd, (kind.step_ms for kind in kinds))


ROW = 7
"""Doubles per pane in `DeviceWindows.panes`: start_ms, count, min, max, sum, last, last_ms (every
integer in it is far below 2**53, so exact as a double)."""


def _row(start: int, value: float, ts_ms: int) -> array:
    return array("d", (start, 1, value, value, value, value, ts_ms))


def _combine_rows(rows: array, lo: int, hi: int) -> Aggregate | None:
    """One aggregate of the panes in `rows` starting in [lo, hi), None when none does: their readings'
    count, min, max and sum, and the last value of the pane with the newest one (panes do not overlap
    in time)."""
    total = None
    for i in range(0, len(rows), ROW):
        start = rows[i]
        if start < lo:
            continue
        if start >= hi:
            break
        if total is None:
            total = Aggregate(int(rows[i + 1]), rows[i + 2], rows[i + 3], rows[i + 4], rows[i + 5], int(rows[i + 6]))
            continue
        total.count += int(rows[i + 1])
        total.min = min(total.min, rows[i + 2])
        total.max = max(total.max, rows[i + 3])
        total.sum += rows[i + 4]
        if rows[i + 6] >= total.last_ms:
            total.last, total.last_ms = rows[i + 5], int(rows[i + 6])
    return total


@dataclass(slots=True)
class DeviceWindows:
    """One device's open panes, by metric, and its event-time progress.

    A reading updates one pane per metric (the pane: `pane_ms`, a minute by default); a window of
    any kind is its panes combined when it closes, so a 5-minute window hopping every minute costs
    no more per reading than the 1-minute one (docs/server.md, "Windows"). Rewritten on every
    reading, so it holds only what can still change; closed windows go to `History`, which is
    written only when windows close.

    A metric's panes are one array of doubles, `ROW` per pane, oldest first: ~56 bytes a pane
    instead of ~200 as an `Aggregate` with its boxed numbers (the worker keeps every device's
    windows live, docs/server.md "Memory per device").
    """

    device: str
    max_event_ms: int = -1
    late: int = 0
    panes: dict[str, array] = field(default_factory=dict)
    closed_mark: int | None = None
    """The watermark windows were closed up to: every window ending at or before it was returned."""
    next_end_ms: int | None = None
    """A bound below which no window with data ends (None: not known, scan): until the watermark
    reaches it no window can close, so most readings skip the scan. Derived, not stored."""

    def watermark(self, lateness_ms: int) -> int | None:
        return None if self.max_event_ms < 0 else self.max_event_ms - lateness_ms

    def add(self, ts_ms: int, metrics: dict[str, float], kinds: tuple[WindowKind, ...],
            lateness_ms: int, advance: bool = True) -> list[ClosedWindow] | None:
        """Apply one event; None when it is late, else the windows it closed (oldest first).

        `advance=False` applies it without moving the watermark (an event whose time is not trusted).
        """
        mark = self.watermark(lateness_ms)
        if mark is not None and ts_ms < mark:
            self.late += 1
            return None
        start = ts_ms - ts_ms % pane_ms(kinds)
        panes = self.panes
        for metric, value in metrics.items():
            value = float(value)
            rows = panes.get(metric)
            if rows is None:
                panes[metric] = _row(start, value, ts_ms)
                self.next_end_ms = None
                continue
            i = len(rows) - ROW  # the newest pane first: where almost every reading goes
            while i >= 0 and rows[i] > start:
                i -= ROW
            if i >= 0 and rows[i] == start:
                rows[i + 1] += 1
                if value < rows[i + 2]:
                    rows[i + 2] = value
                if value > rows[i + 3]:
                    rows[i + 3] = value
                rows[i + 4] += value
                if ts_ms >= rows[i + 6]:  # equal times: the later arrival wins
                    rows[i + 5], rows[i + 6] = value, ts_ms
            else:
                rows[i + ROW:i + ROW] = _row(start, value, ts_ms)
                self.next_end_ms = None
        if advance and ts_ms > self.max_event_ms:
            self.max_event_ms = ts_ms
        return self._close(kinds, self.watermark(lateness_ms))

    def _windows(self, kinds: tuple[WindowKind, ...]) -> list[tuple[WindowKind, int]]:
        """Every (kind, start) of a window that holds a pane and has not closed, oldest end first (then
        oldest start, then in the order of `kinds`)."""
        closed = self.closed_mark
        starts = {int(p) for rows in self.panes.values() for p in rows[::ROW]}
        found: set[tuple[int, int, int]] = set()  # (end, start, kind's index): no WindowKind hashing
        for i, kind in enumerate(kinds):
            size, step = kind.size_ms, kind.step_ms
            for pane in starts:
                last = pane - pane % step
                for start in range(last - size + step, last + 1, step):
                    if closed is None or start + size > closed:
                        found.add((start + size, start, i))
        return [(kinds[i], start) for _, start, i in sorted(found)]

    def _close(self, kinds: tuple[WindowKind, ...], mark: int | None) -> list[ClosedWindow]:
        done: list[ClosedWindow] = []
        if mark is None or (self.next_end_ms is not None and mark < self.next_end_ms):
            return done
        panes = self.panes
        next_end = None
        for kind, start in self._windows(kinds):  # oldest end first
            end = start + kind.size_ms
            if end > mark:
                # Still open, and it holds a pane that stays (a pane goes only once every window
                # holding it closed): the first such end is the next one, as a scan after would find.
                if next_end is None:
                    next_end = end
                continue
            for metric, rows in panes.items():
                agg = _combine_rows(rows, start, end)
                if agg is not None:
                    done.append(ClosedWindow(self.device, kind.name, metric, start, end,
                                             agg.count, agg.min, agg.max, agg.mean, agg.last))
        self.closed_mark = mark if self.closed_mark is None else max(self.closed_mark, mark)
        # A pane goes once every window of every kind that holds it has closed: the oldest panes,
        # removed in place. A kind's last window holding pane p starts at p - p % step and has closed
        # when that start + size <= mark, that is when p < (mark - size) // step * step + step.
        bound = min((mark - kind.size_ms) // kind.step_ms * kind.step_ms + kind.step_ms for kind in kinds)
        for metric in list(panes):
            rows = panes[metric]
            gone = 0
            while gone < len(rows) and rows[gone] < bound:
                gone += ROW
            if gone == len(rows):
                del panes[metric]
            elif gone:
                del rows[:gone]
        self.next_end_ms = next_end
        done.sort(key=lambda w: (w.start_ms, w.kind, w.metric))
        return done

    def open_views(self, metric: str, kind: WindowKind, from_ms: int | None = None,
                   to_ms: int | None = None) -> list[dict]:
        views = []
        rows = self.panes.get(metric)
        if rows is None:
            return views
        for window_kind, start in self._windows((kind,)):
            agg = _combine_rows(rows, start, start + window_kind.size_ms)
            if agg is not None and _within(start, from_ms, to_ms):
                views.append(agg.view(kind, start, False))
        return sorted(views, key=lambda v: v["start_ms"])

    def metrics(self) -> list[str]:
        return sorted(self.panes)

    def to_dict(self, packed: bool = False) -> dict:
        """`rows`: per metric, its panes as one flat list (`ROW` numbers a pane, oldest first); as bytes
        when `packed` (`ferry.server.doubles`: how a marshalled state stores them)."""
        return {"device": self.device, "max_event_ms": self.max_event_ms, "late": self.late,
                "rows": {m: pack(rows) if packed else rows.tolist() for m, rows in self.panes.items()},
                "closed_mark": self.closed_mark}

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceWindows":
        """Also reads the two earlier forms: panes as {start: aggregate} per metric, and before panes
        the open windows per kind."""
        if "rows" in data:
            return cls(data["device"], data["max_event_ms"], data["late"],
                       {m: unpack(rows) for m, rows in data["rows"].items()}, data["closed_mark"])
        if "panes" not in data:
            return cls._from_open_windows(data)
        return cls(data["device"], data["max_event_ms"], data["late"], _as_rows(data["panes"]), data["closed_mark"])

    @classmethod
    def _from_open_windows(cls, data: dict) -> "DeviceWindows":
        """State written before panes (open windows per kind): the tumbling minute's open windows
        are the panes; windows ending at or before the watermark were published then. A hopping
        window open at that moment closes with the minutes still held (its earlier minutes were
        dropped with their closed 1-minute windows)."""
        # Every window holding one of these minutes ends after the old watermark: none was published.
        return cls(data["device"], data["max_event_ms"], data["late"], _as_rows(data["open"].get("1m", {})))


def _as_rows(panes: dict[str, dict[str, list]]) -> dict[str, array]:
    """{metric: {start: [count, min, max, sum, last, last_ms]}} (states written before rows) as rows."""
    out = {}
    for metric, by_start in panes.items():
        rows = array("d")
        for start in sorted(by_start, key=int):
            rows.append(int(start))
            rows.extend(by_start[start])
        out[metric] = rows
    return out


@dataclass(slots=True)
class History:
    """The newest `keep` closed windows of one device per kind and metric, oldest first, for at most
    `max_metrics` metrics per kind (a reading holds at most `MAX_METRICS`; a device whose metric names
    change keeps the ones whose windows closed last): at most keep x max_metrics x kinds windows.

    Rows are kept as they are stored, `[start_ms, end_ms, count, min, max, mean, last]`, so
    writing the history back costs a copy, not a conversion.
    """

    rows: dict[str, dict[str, list[list]]] = field(default_factory=dict)

    def extend(self, closed: list[ClosedWindow], keep: int, max_metrics: int = MAX_METRICS) -> None:
        for w in closed:
            per_metric = self.rows.setdefault(w.kind, {})
            kept = per_metric.get(w.metric)
            if kept is None:
                if len(per_metric) >= max_metrics:
                    # The metric whose newest window is oldest goes (on a tie, the first name).
                    del per_metric[min(per_metric, key=lambda m: (per_metric[m][-1][0], m))]
                kept = per_metric[w.metric] = []
            kept.append([w.start_ms, w.end_ms, w.count, w.min, w.max, w.mean, w.last])
            del kept[:-keep]

    def views(self, metric: str, kind: WindowKind, from_ms: int | None = None, to_ms: int | None = None) -> list[dict]:
        return [{"start_ms": r[0], "end_ms": r[1], "count": r[2], "min": r[3], "max": r[4], "mean": r[5],
                 "last": r[6], "closed": True}
                for r in self.rows.get(kind.name, {}).get(metric, []) if _within(r[0], from_ms, to_ms)]

    def metrics(self) -> list[str]:
        return sorted({m for per_metric in self.rows.values() for m in per_metric})

    def to_dict(self) -> dict:
        return {k: {m: [r[:] for r in rows] for m, rows in pm.items()} for k, pm in self.rows.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls({k: {m: [list(r) for r in rows] for m, rows in pm.items()} for k, pm in data.items()})


def _within(start_ms: int, from_ms: int | None, to_ms: int | None) -> bool:
    return (from_ms is None or start_ms >= from_ms) and (to_ms is None or start_ms < to_ms)


def series(metric: str, kinds: tuple[WindowKind, ...], windows: DeviceWindows | None,
           history: History | None, from_ms: int | None = None, to_ms: int | None = None) -> dict:
    """`/devices/{id}/series/{metric}`: per kind, the kept closed windows then the open ones, oldest first;
    only those starting in [from_ms, to_ms) when given."""
    return {kind.name: (history.views(metric, kind, from_ms, to_ms) if history else [])
            + (windows.open_views(metric, kind, from_ms, to_ms) if windows else []) for kind in kinds}
