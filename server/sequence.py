"""Dedupe and gap tracking for one (device, boot): pure, no Faust, no clock.

A boot's state is its high-water mark (the highest seq accepted), a bitmap of
which of the `window` seqs at and below the high-water mark were seen, and the
gaps that slid out of the bitmap kept as exact ranges. So a seq is:

* above the high-water mark: new (the seqs skipped on the way become gaps);
* inside the window: new if its bit is clear, else a duplicate;
* below the window: new if it is in a kept gap range (a late arrival heals it), else a duplicate.

Dedupe is therefore exact at any age, and the state is bounded by the window
plus one range per gap that is still open: open gaps are what the contract
says must be reported until they arrive, so they are kept anyway.

A device that sleeps between samples starts a boot on every wake (288 a day at
5 minutes), so a tracker per boot forever would grow without bound. Once a boot
is over (`ClosedBoots`) its bitmap goes: what stays is its number, folded into
ranges of boot numbers, and its missing seqs while any are missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SeqTracker:
    """Seen sequence numbers of one boot."""

    window: int
    high: int = -1
    """Highest seq accepted, -1 before the first."""
    bits: int = 0
    """Bit i set: seq `high - i` was seen (0 <= i < window)."""
    old_gaps: list[list[int]] | tuple = ()
    """Missing seqs below the window, as sorted, disjoint inclusive [first, last] ranges (an empty
    tuple until the first: a deep-sleep device keeps a tracker per boot of the last hour, most with
    no gap, and an empty list each was ~60 bytes)."""
    duplicates: int = 0
    """Readings of this boot whose seq had been seen already."""
    last_receive_ms: int = 0
    """When the gateway received this boot's newest reading (0: not known): when it may close."""

    @property
    def window_low(self) -> int:
        """The lowest seq the bitmap covers."""
        return max(0, self.high - self.window + 1)

    def observe(self, seq: int) -> bool:
        """Record `seq`; True when it is new, False when it is a duplicate."""
        if seq < 0:
            raise ValueError(f"seq {seq} is negative")
        if seq > self.high:
            self._advance(seq)
            return True
        if seq >= self.window_low:
            bit = 1 << (self.high - seq)
            if self.bits & bit:
                self.duplicates += 1
                return False
            self.bits |= bit
            return True
        if self._heal_old(seq):
            return True
        self.duplicates += 1
        return False

    def _advance(self, seq: int) -> None:
        old_low, old_high = self.window_low, self.high
        new_low = max(0, seq - self.window + 1)
        # Unseen seqs of the old window that fall out of the new one become ranges.
        if old_high >= 0:
            for s in range(old_low, min(old_high, new_low - 1) + 1):
                if not self.bits >> (old_high - s) & 1:
                    self._add_old_gap(s, s)
        # Seqs skipped over that are already below the new window.
        skipped_last = min(seq - 1, new_low - 1)
        if old_high + 1 <= skipped_last:
            self._add_old_gap(old_high + 1, skipped_last)
        shift = seq - old_high
        mask = (1 << self.window) - 1
        self.bits = ((self.bits << shift) | 1) & mask if shift < self.window else 1
        self.high = seq

    def _add_old_gap(self, first: int, last: int) -> None:
        # Gaps leave the window in increasing order, so they append (or extend the last range).
        if not self.old_gaps:
            self.old_gaps = [[first, last]]
        elif self.old_gaps[-1][1] + 1 == first:
            self.old_gaps[-1][1] = last
        else:
            self.old_gaps.append([first, last])

    def _heal_old(self, seq: int) -> bool:
        for i, (first, last) in enumerate(self.old_gaps):
            if first <= seq <= last:
                pieces = [[first, seq - 1]] if first < seq else []
                if seq < last:
                    pieces.append([seq + 1, last])
                self.old_gaps[i:i + 1] = pieces
                return True
            if seq < first:
                break
        return False

    @property
    def missing(self) -> int:
        """How many seqs in 0..high have not arrived."""
        if self.high < 0:
            return 0
        covered = self.high - self.window_low + 1
        in_window = covered - (self.bits & ((1 << covered) - 1)).bit_count()
        if not self.old_gaps:
            return in_window
        return in_window + sum(last - first + 1 for first, last in self.old_gaps)

    @property
    def received(self) -> int:
        """How many distinct seqs arrived."""
        return self.high + 1 - self.missing

    def all_gaps(self) -> list[list[int]]:
        """Every missing range, oldest first."""
        return self.gaps(limit=len(self.old_gaps) + self.window)

    def gaps(self, limit: int = 100) -> list[list[int]]:
        """The first `limit` missing ranges, inclusive, oldest first."""
        ranges = [list(r) for r in self.old_gaps[:limit]]
        if self.high < 0:
            return ranges
        start = None
        for s in range(self.window_low, self.high + 1):
            seen = self.bits >> (self.high - s) & 1
            if not seen and start is None:
                start = s
            elif seen and start is not None:
                ranges.append([start, s - 1])
                start = None
            if len(ranges) >= limit:
                break
        return ranges[:limit]

    def to_dict(self) -> dict:
        """JSON-safe (the bitmap as hex, so no JSON library has to handle huge integers)."""
        return {"w": self.window, "high": self.high, "bits": format(self.bits, "x"), "old_gaps": list(self.old_gaps),
                "dup": self.duplicates, "ms": self.last_receive_ms}

    @classmethod
    def from_dict(cls, data: dict, window: int) -> "SeqTracker":
        # "dup" and "ms" came with closing boots: states written before have neither.
        tracker = cls(data["w"], data["high"], int(data["bits"], 16), [list(r) for r in data["old_gaps"]] or (),
                      data.get("dup", 0), data.get("ms", 0))
        return tracker if tracker.window == window else _refit(tracker, window)


def _refit(old: SeqTracker, window: int) -> SeqTracker:
    """The same seen set with a different bitmap size (the configured window changed)."""
    new = SeqTracker(window, old.high, duplicates=old.duplicates, last_receive_ms=old.last_receive_ms)
    missing = old.all_gaps()
    if old.high < 0:
        return new
    low = new.window_low
    covered = old.high - low + 1
    new.bits = (1 << covered) - 1
    for first, last in missing:
        if first < low:
            new._add_old_gap(first, min(last, low - 1))
        for s in range(max(first, low), last + 1):
            new.bits &= ~(1 << (old.high - s))
    return new


@dataclass(slots=True)
class ClosedBoots:
    """The boots of one device that are over, folded into one summary.

    A boot is over once a newer boot has begun and nothing of it was received for a grace
    period (`DeviceAccount.close_boots`). A device sends a boot's readings before the next
    boot's (its outbox is first in, first out), so after that only re-deliveries and the
    readings of its gaps, late, can still arrive: a seq of a closed boot is new exactly when
    it fills one of the boot's kept gaps. Its bitmap is dropped; what stays is its number
    (in ranges: a run of boots costs one pair), its missing seqs while any are missing, and sums.
    """

    numbers: list[list[int]] = field(default_factory=list)
    """The closed boots' numbers, as sorted, disjoint inclusive [first, last] ranges."""
    gaps: dict[int, list[list[int]]] = field(default_factory=dict)
    """Per closed boot with seqs still missing: the missing ranges."""
    boots: int = 0
    received: int = 0
    duplicates: int = 0

    def holds(self, boot: int) -> bool:
        return any(first <= boot <= last for first, last in self.numbers)

    @property
    def newest(self) -> int | None:
        return self.numbers[-1][1] if self.numbers else None

    @property
    def missing(self) -> int:
        return sum(last - first + 1 for ranges in self.gaps.values() for first, last in ranges)

    def close(self, boot: int, tracker: SeqTracker) -> None:
        """Fold a boot's tracker in."""
        self.boots += 1
        self.received += tracker.received
        self.duplicates += tracker.duplicates
        missing = tracker.all_gaps()
        if missing:
            self.gaps[boot] = missing
        _add_number(self.numbers, boot)

    def observe(self, boot: int, seq: int) -> bool:
        """A reading of closed boot `boot`: True when it fills a gap (new), False for a duplicate."""
        ranges = self.gaps.get(boot, [])
        for i, (first, last) in enumerate(ranges):
            if first <= seq <= last:
                ranges[i:i + 1] = [r for r in ([first, seq - 1], [seq + 1, last]) if r[0] <= r[1]]
                if not ranges:
                    del self.gaps[boot]
                self.received += 1
                return True
        self.duplicates += 1
        return False

    def start_again(self) -> int:
        """The device counts boots from 1 again: forget the closed boots' numbers and gaps (the sums
        stay); returns how many seqs were still missing (their readings went with the device's flash)."""
        missing = self.missing
        self.numbers, self.gaps = [], {}
        return missing

    def to_dict(self) -> dict:
        return {"numbers": self.numbers, "gaps": {str(b): r for b, r in self.gaps.items()}, "boots": self.boots,
                "received": self.received, "duplicates": self.duplicates}

    @classmethod
    def from_dict(cls, data: dict) -> "ClosedBoots":
        gaps = {int(b): [list(r) for r in ranges] for b, ranges in data["gaps"].items()}
        return cls([list(r) for r in data["numbers"]], gaps, data["boots"], data["received"], data["duplicates"])


def _add_number(ranges: list[list[int]], n: int) -> None:
    """Add `n` to sorted, disjoint inclusive ranges, merging neighbours (boots close mostly in order)."""
    i = len(ranges)
    while i > 0 and ranges[i - 1][0] > n:
        i -= 1
    if i > 0 and ranges[i - 1][1] >= n:
        return
    if i > 0 and ranges[i - 1][1] == n - 1:
        ranges[i - 1][1] = n
        if i < len(ranges) and ranges[i][0] == n + 1:
            ranges[i - 1][1] = ranges.pop(i)[1]
    elif i < len(ranges) and ranges[i][0] == n + 1:
        ranges[i][0] = n
    else:
        ranges.insert(i, [n, n])
