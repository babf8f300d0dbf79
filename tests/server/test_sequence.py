"""Dedupe by (boot, seq) and gap tracking, against a brute-force model."""

from __future__ import annotations

import json
import random

import pytest

from ferry.server.sequence import ClosedBoots, SeqTracker


def test_in_order_seqs_are_new_once() -> None:
    t = SeqTracker(8)
    assert [t.observe(s) for s in range(20)] == [True] * 20
    assert [t.observe(s) for s in range(20)] == [False] * 20
    assert t.missing == 0 and t.gaps() == []


def test_a_boot_that_starts_above_zero_misses_the_first_seqs() -> None:
    t = SeqTracker(8)
    assert t.observe(3)
    assert t.missing == 3 and t.gaps() == [[0, 2]]


def test_gap_heals_inside_the_window() -> None:
    t = SeqTracker(8)
    for s in (0, 1, 4, 5):
        t.observe(s)
    assert t.gaps() == [[2, 3]] and t.missing == 2
    assert t.observe(3) and not t.observe(3)
    assert t.gaps() == [[2, 2]]
    assert t.observe(2)
    assert t.missing == 0


def test_gap_below_the_window_is_kept_and_heals() -> None:
    t = SeqTracker(4)
    t.observe(0)
    t.observe(100)  # 1..99 skipped: all below the new window 97..100
    assert t.old_gaps == [[1, 96]] and t.missing == 99
    assert t.gaps() == [[1, 96], [97, 99]]
    assert t.observe(50) and not t.observe(50) and not t.observe(0)
    assert t.old_gaps == [[1, 49], [51, 96]]
    assert t.missing == 98


def test_window_holes_slide_into_ranges() -> None:
    t = SeqTracker(4)
    for s in (0, 2, 3, 4, 5, 6, 7):
        t.observe(s)
    assert t.old_gaps == [[1, 1]] and t.missing == 1
    assert t.observe(1) and t.missing == 0 and t.old_gaps == []


@pytest.mark.parametrize("window", [1, 3, 16, 64])
def test_matches_a_set_model_under_random_orders(window: int) -> None:
    rng = random.Random(window)
    for _ in range(30):
        t, seen = SeqTracker(window), set()
        arrivals = [rng.randrange(0, 200) for _ in range(300)]
        for seq in arrivals:
            assert t.observe(seq) == (seq not in seen)
            seen.add(seq)
            high = max(seen)
            assert t.missing == high + 1 - len(seen)
        missing = sorted(set(range(max(seen) + 1)) - seen)
        flat = [s for first, last in t.gaps(limit=10_000) for s in range(first, last + 1)]
        assert flat == missing
        assert SeqTracker.from_dict(t.to_dict(), window).to_dict() == t.to_dict()


@pytest.mark.parametrize("old,new", [(64, 4), (4, 64), (8, 8)])
def test_state_survives_a_change_of_window(old: int, new: int) -> None:
    rng = random.Random(old * new)
    t, seen = SeqTracker(old), set()
    for _ in range(200):
        seq = rng.randrange(0, 150)
        t.observe(seq)
        seen.add(seq)
    refit = SeqTracker.from_dict(t.to_dict(), new)
    assert refit.window == new and refit.missing == t.missing
    for seq in range(160):
        assert refit.observe(seq) == (seq not in seen)


def test_closed_boots_keep_their_numbers_as_ranges_and_heal_their_gaps() -> None:
    closed = ClosedBoots()
    for boot in (3, 1, 5, 2, 7, 4):
        tracker = SeqTracker(8)
        for seq in (0, 1, 3) if boot == 4 else (0, 1, 2):
            tracker.observe(seq)
        tracker.observe(1)
        closed.close(boot, tracker)
    assert closed.numbers == [[1, 5], [7, 7]]
    assert [b for b in range(9) if closed.holds(b)] == [1, 2, 3, 4, 5, 7]
    assert (closed.newest, closed.gaps, closed.missing) == (7, {4: [[2, 2]]}, 1)
    assert (closed.boots, closed.received, closed.duplicates) == (6, 18, 6)
    assert [closed.observe(4, 2), closed.observe(4, 2), closed.observe(5, 0)] == [True, False, False]
    assert (closed.gaps, closed.received, closed.duplicates) == ({}, 19, 8)
    assert ClosedBoots.from_dict(json.loads(json.dumps(closed.to_dict()))) == closed
    assert closed.start_again() == 0 and (closed.numbers, closed.boots) == ([], 6)


def test_a_tracker_without_gaps_holds_no_list_of_them() -> None:
    """An empty tuple until the first gap leaves the window (a deep-sleep device keeps a tracker per
    boot of the last hour); stored and read back as the empty list it was."""
    t = SeqTracker(4)
    for seq in range(10):
        t.observe(seq)
    assert t.old_gaps == () and t.to_dict()["old_gaps"] == []
    assert SeqTracker.from_dict(t.to_dict(), 4).old_gaps == ()
    t.observe(20)
    assert t.old_gaps == [[10, 16]] and t.missing == 10
