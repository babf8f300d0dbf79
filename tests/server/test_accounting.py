"""Boots through a device's life: closed boots folded into a summary, and a boot counter that starts again.

Fed through `apply_reading`/`apply_status` with the gateway's receive times, as the worker feeds
them, and a JSON round trip of the state between records (the table value is what survives).
"""

from __future__ import annotations

import json
import random

import pytest

from ferry.server.accounting import detail, summary
from ferry.server.config import ServerConfig
from ferry.server.logic import Settings, apply_reading, apply_status
from ferry.server.state import DeviceState

from tests.server.helpers import T0, asleep, reading, status

HOUR = 3_600_000
SETTINGS = Settings.from_config(ServerConfig(broker="127.0.0.1:1", dedupe_window=16, boot_grace_s=3600))


class Device:
    """One device's table value, fed one record at a time."""

    def __init__(self) -> None:
        self.value = SETTINGS.new_state("dev-01").to_dict()

    def _state(self) -> DeviceState:
        return SETTINGS.load_state("dev-01", json.loads(json.dumps(self.value)))

    def reading(self, seq: int, boot: int, received_ms: int) -> str:
        state = self._state()
        verdict = apply_reading(state, reading(seq, boot=boot, ts_ms=received_ms - 500), received_ms, received_ms,
                                SETTINGS).verdict
        self.value = state.to_dict()
        return verdict

    def birth(self, boot: int, received_ms: int, reset: str = "power_on") -> None:
        state = self._state()
        apply_status(state, status(0, boot=boot, reset=reset), received_ms, SETTINGS)
        self.value = state.to_dict()

    @property
    def numbers(self) -> dict:
        state = self._state()
        return summary(state.account, state.status)

    @property
    def detail(self) -> dict:
        state = self._state()
        return detail("dev-01", state.account, state.status)


def test_closed_boots_are_folded_and_still_dedupe_and_heal() -> None:
    d = Device()
    d.birth(1, T0)
    verdicts = [d.reading(s, 1, T0 + s * 1000) for s in (0, 1, 2, 3, 5, 6, 2, 7)]  # 4 missing, 2 twice
    assert verdicts == ["new"] * 6 + ["duplicate", "new"]
    d.birth(2, T0 + HOUR)
    d.reading(0, 2, T0 + HOUR + 1000)
    assert set(d.detail["boots"]) == {"1", "2"}  # boot 1 is still within the grace period
    d.reading(1, 2, T0 + 2 * HOUR + 8000)
    info = d.detail
    assert info["boots"]["1"] == {"high": None, "missing": 1, "gaps": [[4, 4]], "closed": True}
    assert info["boots"]["2"] == {"high": 1, "missing": 0, "gaps": [], "closed": False}
    assert info["closed_boots"] == {"boots": 1, "received": 7, "duplicates": 1, "missing": 1}
    assert d.numbers["gaps"] == 1 and d.numbers["received"] == 9
    # A late reading of a closed boot heals its gap; anything else of it was received already.
    assert [d.reading(4, 1, T0 + 2 * HOUR + 9000), d.reading(4, 1, T0 + 2 * HOUR + 9500),
            d.reading(6, 1, T0 + 2 * HOUR + 9600)] == ["new", "duplicate", "duplicate"]
    assert d.detail["boots"].keys() == {"2"}
    assert d.detail["closed_boots"] == {"boots": 1, "received": 8, "duplicates": 3, "missing": 0}
    assert {k: d.numbers[k] for k in ("received", "duplicates", "gaps")} == {"received": 10, "duplicates": 3,
                                                                          "gaps": 0}


def test_the_newest_boot_stays_open_however_long_the_device_is_silent() -> None:
    d = Device()
    for s in range(3):
        d.reading(s, 1, T0 + s)
    d.reading(5, 1, T0 + 48 * HOUR)
    assert d.detail["boots"]["1"] == {"high": 5, "missing": 2, "gaps": [[3, 4]], "closed": False}
    assert d.reading(4, 1, T0 + 48 * HOUR + 1) == "new"


@pytest.mark.parametrize("seed", range(6))
def test_closing_boots_keeps_the_numbers_of_a_set_model(seed: int) -> None:
    """Random losses, reorderings within a boot, re-deliveries and late arrivals, with boots
    closing all along; readings come in outbox order (a device sends a boot's readings before
    the next boot's), so whatever arrives of a closed boot is a gap healing or a re-delivery."""
    rng = random.Random(seed)
    d = Device()
    seen: set[tuple[int, int]] = set()
    arrivals = 0
    now = T0
    held: list[tuple[int, int]] = []  # lost on the way, delivered long after (below their boot's high)
    for boot in range(1, 41):
        now += rng.choice([60_000, 300_000, 2 * HOUR])
        d.birth(boot, now, reset="deepsleep")
        seqs = list(range(rng.randrange(1, 30)))
        for i in range(len(seqs) - 1):
            if rng.random() < 0.2:
                seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
        sent = []
        for seq in seqs:
            if rng.random() < 0.1:
                held.append((boot, seq))
                continue
            sent.append(seq)
            if rng.random() < 0.1 and sent:
                sent.append(rng.choice(sent))  # the gateway delivered one again
        for seq in sent:
            now += 1000
            d.reading(seq, boot, now)
            seen.add((boot, seq))
            arrivals += 1
    high = {b: max(s for bb, s in seen if bb == b) for b, _ in seen}
    for boot, seq in held:
        if seq < high.get(boot, -1):
            now += 1000
            assert d.reading(seq, boot, now) == "new"
            seen.add((boot, seq))
            arrivals += 1
    missing = sum(high[b] + 1 - sum(1 for bb, _ in seen if bb == b) for b in high)
    numbers = d.numbers
    assert (numbers["received"], numbers["duplicates"], numbers["gaps"]) == (len(seen), arrivals - len(seen), missing)
    assert len(d.detail["boots"]) < 40


def test_a_boot_counter_that_starts_again_begins_a_new_run_of_boots() -> None:
    """Flash wiped: the device counts boots from 1 again, and says so in its birth first."""
    d = Device()
    for boot in (1, 2, 3):
        d.birth(boot, T0 + boot * 60_000)
        for s in range(10):
            d.reading(s, boot, T0 + boot * 60_000 + s * 1000)
    d.birth(1, T0 + 10 * 60_000)
    assert [d.reading(s, 1, T0 + 10 * 60_000 + s * 1000) for s in range(10)] == ["new"] * 10
    assert {k: d.numbers[k] for k in ("received", "duplicates", "gaps")} == {"received": 40, "duplicates": 0,
                                                                          "gaps": 0}
    info = d.detail
    assert info["restarts"] == 1 and info["boots"]["1"]["high"] == 9
    assert info["last"]["boot"] == 1 and info["last"]["seq"] == 9


def test_a_restarted_boot_counter_is_recognised_from_readings_that_come_before_the_birth() -> None:
    d = Device()
    for boot in (1, 2, 3):
        for s in range(10):
            d.reading(s, boot, T0 + boot * 2 * HOUR + s * 1000)  # boots 1 and 2 close
    later = T0 + 10 * HOUR
    verdicts = [d.reading(s, 1, later + s * 1000) for s in range(5)]
    d.birth(1, later + 5_500)
    verdicts += [d.reading(s, 1, later + s * 1000) for s in range(5, 10)]
    assert verdicts == ["new"] * 10
    assert d.detail["restarts"] == 1
    assert {k: d.numbers[k] for k in ("received", "duplicates", "gaps")} == {"received": 40, "duplicates": 0,
                                                                          "gaps": 0}


def test_old_news_of_old_boots_is_not_a_restart() -> None:
    d = Device()
    for boot in (1, 2, 3):
        for s in range(10):
            d.reading(s, boot, T0 + boot * 2 * HOUR + s * 1000)
    d.birth(2, T0 + 4 * HOUR + 500)  # a birth the gateway received before boot 3 began
    assert d.reading(3, 1, T0 + 2 * HOUR + 5000) == "duplicate"  # a re-delivery received back then
    d.birth(3, T0 + 9 * HOUR)  # the current boot's retained birth, again
    assert d.reading(9, 3, T0 + 9 * HOUR) == "duplicate"
    assert d.detail["restarts"] == 0
    assert (d.numbers["received"], d.numbers["duplicates"]) == (30, 2)


def test_the_births_update_state_is_in_the_device_detail_and_survives_the_table() -> None:
    """What the dashboard shows per device (docs/ota.md): the newest birth's `ota`, kept while the
    device is asleep, gone when a birth leaves it out; state stored before the field reads back."""
    d = Device()
    d.birth(1, T0)
    assert d.detail["status"]["ota"] is None
    state = d._state()
    trial = status(0, boot=2).replace(b',"outbox"', b',"ota":{"slot":"a","state":"trial","ver":"0.2.0",'
                                                       b'"last":"installed 0.2.0"},"outbox"')
    apply_status(state, trial, T0 + 1000, SETTINGS)
    apply_status(state, asleep(boot=2), T0 + 2000, SETTINGS)
    d.value = state.to_dict()
    assert d.detail["status"]["ota"] == {"slot": "a", "state": "trial", "ver": "0.2.0", "last": "installed 0.2.0"}
    old = json.loads(json.dumps(d.value))
    del old["status"]["ota"]
    d.value = old
    assert d.detail["status"]["ota"] is None and d.detail["status"]["fw"] == "0.1.0"
    d.birth(3, T0 + 3000)
    assert d.detail["status"]["ota"] is None


def test_a_late_status_of_an_older_boot_does_not_count_the_devices_losses_again() -> None:
    """A device that reboots into another site while the first site's gateway still holds a status
    of its old boot: that status arrives after the new birth. Its outbox counter (cumulative, lower
    than the newest) looked like an outbox made anew: its drops counted twice (the 30-minute chaos
    soak: the server learnt 130 lost where the devices had dropped 119)."""
    d = Device()
    state = d._state()
    apply_status(state, status(5, boot=1), T0, SETTINGS)
    apply_status(state, status(7, boot=2), T0 + 1000, SETTINGS)  # the birth at the new site
    apply_status(state, status(6, boot=1), T0 + 2000, SETTINGS)  # the old site's, late
    apply_status(state, asleep(boot=1), T0 + 2500, SETTINGS)
    assert (state.status.lost_at_device, state.status.boot, state.status.state) == (7, 2, "online")
    apply_status(state, status(9, boot=2), T0 + 3000, SETTINGS)
    assert state.status.lost_at_device == 9
    d.value = state.to_dict()
    # The boot counter starts again (flash wiped: a new outbox): boot 1's birth after every reading counts.
    d.reading(0, 2, T0 + 4000)
    state = d._state()
    apply_status(state, status(0, boot=1, reset="power_on"), T0 + 5000, SETTINGS)
    apply_status(state, status(3, boot=1), T0 + 6000, SETTINGS)
    assert state.account.restarts == 1 and state.status.lost_at_device == 12
