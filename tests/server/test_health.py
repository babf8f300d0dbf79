"""Device health (server.health): offline, back online, battery, signal, reboot loops, sleepers."""

from __future__ import annotations

import json

import pytest

from ferry.server.health import DeviceHealth, HealthSettings

S = HealthSettings()
T = 1_767_225_600_000
VIEW_KEYS = {"state", "last_seen_ms", "offline", "offline_reason", "battery_mv", "battery_low", "rssi_dbm",
             "rssi_poor", "reboots_recent", "reboot_loop", "boot_failures", "faults", "sensors_failing",
             "problems"}


def kinds(alerts) -> list[str]:
    return [a.kind for a in alerts]


def readings(h: DeviceHealth, n: int, start_ms: int = T, step_ms: int = 10_000, boot: int = 1,
             bat: int | None = 3900, rssi: int | None = -60) -> list:
    out = []
    for i in range(n):
        out += h.observe_reading(start_ms + i * step_ms, boot, bat, rssi, S)
    return out


def round_trip(h: DeviceHealth) -> DeviceHealth:
    back = DeviceHealth.from_dict(h.device, json.loads(json.dumps(h.to_dict())))
    assert back == h
    return back


def test_a_fresh_device_is_unknown_then_ok() -> None:
    h = DeviceHealth("d")
    v = h.view(T, S)
    assert set(v) == VIEW_KEYS
    assert v["state"] == "unknown" and v["last_seen_ms"] is None and v["problems"] == []
    assert readings(h, 5) == []
    v = round_trip(h).view(T + 45_000, S)
    assert v == {"state": "ok", "last_seen_ms": T + 40_000, "offline": False, "offline_reason": None,
                 "battery_mv": 3900, "battery_low": False, "rssi_dbm": -60, "rssi_poor": False,
                 "reboots_recent": 0, "reboot_loop": False, "boot_failures": 0, "faults": [], "sensors_failing": [],
                 "problems": []}


def test_last_will_is_offline_at_once_and_a_reading_brings_it_back() -> None:
    h = DeviceHealth("d")
    readings(h, 3)
    alerts = h.observe_status(T + 25_000, "offline", 1, None, S)
    assert kinds(alerts) == ["offline"] and alerts[0].ts_ms == T + 25_000
    assert h.observe_status(T + 26_000, "offline", 1, None, S) == []  # once per episode
    v = h.view(T + 27_000, S)
    assert (v["state"], v["offline"], v["offline_reason"], v["problems"]) == \
        ("offline", True, "lwt", ["offline: last will"])
    assert h.check(T + 900_000, S) == []  # already offline: the timer adds nothing
    # a reading the gateway received before the will (the other agent was behind) changes nothing
    assert h.observe_reading(T + 24_000, 1, 3900, -60, S) == []
    assert h.offline
    alerts = h.observe_reading(T + 60_000, 1, 3900, -60, S)
    assert kinds(alerts) == ["online"] and not h.offline and h.view(T + 60_000, S)["state"] == "ok"


def test_stale_wills_are_ignored() -> None:
    h = DeviceHealth("d")
    readings(h, 3, boot=4)
    h.observe_status(T + 30_000, "online", 5, "wdt", S)
    assert h.observe_status(T + 31_000, "offline", 4, None, S) == []  # the old connection's will
    assert h.observe_status(T + 15_000, "offline", 5, None, S) == []  # older than what came since
    assert not h.offline


def test_silence_is_offline_after_three_intervals() -> None:
    h = DeviceHealth("d")
    readings(h, 10)  # every 10 s; last at T + 90 s
    assert h.interval_ms(S) == 10_000
    assert h.check(T + 120_000, S) == []  # 30 s silent: not more than 3 intervals yet
    assert h.view(T + 120_000, S)["state"] == "ok"
    assert h.view(T + 121_000, S)["offline_reason"] == "silent"  # the view sees it before the timer
    alerts = h.check(T + 121_000, S)
    assert kinds(alerts) == ["offline"] and "nothing received for 31 s" in alerts[0].reason
    assert h.check(T + 200_000, S) == []
    v = round_trip(h).view(T + 200_000, S)
    assert (v["state"], v["offline_reason"], v["problems"]) == ("offline", "silent", ["offline: silent for 110 s"])
    # a reading received during the silence but processed late ends it too
    assert kinds(h.observe_reading(T + 95_000, 1, 3900, -60, S)) == ["online"]


def test_the_interval_follows_the_device_with_a_floor_and_ignores_bursts() -> None:
    slow = DeviceHealth("slow")
    readings(slow, 6, step_ms=60_000)
    assert slow.interval_ms(S) == 60_000
    assert slow.check(T + 5 * 60_000 + 180_000, S) == []
    assert kinds(slow.check(T + 5 * 60_000 + 180_001, S)) == ["offline"]
    fast = DeviceHealth("fast")
    readings(fast, 20, step_ms=1_000)
    assert fast.interval_ms(S) == S.interval_floor_ms  # 1 s samples: offline after 30 s, not 3 s
    drained = DeviceHealth("drained")
    readings(drained, 5)
    readings(drained, 200, start_ms=T + 300_000, step_ms=5)  # an outbox draining after an outage
    assert drained.interval_ms(S) == 10_000


def test_battery_low_once_per_episode_with_hysteresis() -> None:
    h = DeviceHealth("d")
    assert readings(h, 5, bat=3500) == []
    out = readings(h, 2, start_ms=T + 50_000, bat=3310)
    assert out == []  # the median of the last 5 is still 3500
    out = readings(h, 1, start_ms=T + 70_000, bat=3310)
    assert kinds(out) == ["battery_low"] and out[0].value == 3310.0
    assert readings(h, 10, start_ms=T + 80_000, bat=3420) == []  # above 3400, below 3450: still low
    v = h.view(T + 180_000, S)
    assert (v["state"], v["battery_low"], v["battery_mv"], v["problems"]) == \
        ("warning", True, 3420, ["battery 3420 mV"])
    readings(h, 5, start_ms=T + 200_000, bat=3460)  # recharged: clears silently
    assert not h.battery_low and h.view(T + 250_000, S)["state"] == "ok"
    assert kinds(readings(h, 5, start_ms=T + 300_000, bat=3300)) == ["battery_low"]


def test_poor_signal_from_the_median_and_missing_rssi_is_skipped() -> None:
    h = DeviceHealth("d")
    readings(h, 10, rssi=-70)
    readings(h, 4, start_ms=T + 100_000, rssi=-90)
    assert not h.rssi_poor  # 4 of the last 10 bad: the median is fine
    assert readings(h, 1, start_ms=T + 140_000, rssi=-91) == []  # median -80: not below
    out = readings(h, 1, start_ms=T + 150_000, rssi=-91) + readings(h, 3, start_ms=T + 160_000, rssi=None)
    assert kinds(out) == ["rssi_poor"] and round_trip(h).rssi_poor
    assert h.view(T + 190_000, S)["problems"] == ["weak Wi-Fi -90 dBm"]
    readings(h, 10, start_ms=T + 200_000, rssi=-76)
    assert not h.rssi_poor and h.view(T + 300_000, S)["rssi_dbm"] == -76


def test_reboot_loop_from_births() -> None:
    h = DeviceHealth("d")
    assert h.observe_status(T, "online", 7, "power_on", S) == []  # the first boot seen is not counted
    out = []
    for i, boot in enumerate((8, 9, 10, 11)):
        out += h.observe_status(T + (i + 1) * 60_000, "online", boot, "wdt", S)
        out += h.observe_reading(T + (i + 1) * 60_000 + 500, boot, 3900, -60, S)
    assert kinds(out) == ["reboot_loop"] and out[0].ts_ms == T + 180_000 and out[0].score == 3.0
    assert h.observe_status(T + 240_500, "online", 11, "wdt", S) == []  # a re-delivered birth counts once
    v = round_trip(h).view(T + 250_000, S)
    assert (v["state"], v["reboots_recent"], v["reboot_loop"], v["problems"]) == \
        ("warning", 4, True, ["reboot loop: 4 boots in 10 min"])
    # the window passes without boots: the loop is over (no alert), the device is fine
    readings(h, 60, start_ms=T + 250_000, boot=11)
    assert h.check(T + 60_000 + 600_000 + 1, S) == [] and h.reboot_loop  # 3 boots still inside
    assert h.check(T + 240_000 + 600_001, S) == [] and not h.reboot_loop
    assert h.view(T + 840_001, S)["reboots_recent"] == 0


def test_reboot_loop_from_boot_jumps_in_readings() -> None:
    """Births can be late or missing: a reading of a new boot counts it; its birth does not count it again."""
    h = DeviceHealth("d")
    out = []
    for i, boot in enumerate((3, 4, 5)):
        out += readings(h, 2, start_ms=T + i * 100_000, boot=boot)
    assert out == [] and h.view(T + 300_000, S)["reboots_recent"] == 2
    out = h.observe_status(T + 200_100, "online", 5, "hard", S)
    assert out == [] and h.view(T + 300_000, S)["reboots_recent"] == 2
    out = readings(h, 1, start_ms=T + 300_000, boot=6)
    assert kinds(out) == ["reboot_loop"]


def test_deep_sleep_wakes_are_not_a_reboot_loop_nor_offline() -> None:
    """A duty-cycle device: a boot per wake (reset deepsleep), "offline" each time it sleeps."""
    h = DeviceHealth("d")
    wake = 60_000
    out = h.observe_status(T, "online", 1, "power_on", S)
    out += h.observe_reading(T + 200, 1, 4100, -60, S)
    out += h.observe_status(T + 400, "offline", 1, None, S)
    assert kinds(out) == ["offline"]  # the first sleep looks like a crash: one offline/online pair
    out = []
    for i in range(2, 40):
        t = T + (i - 1) * wake
        if i % 2:  # both orders: the two agents see readings and statuses in no common order
            out += h.observe_status(t, "online", i, "deepsleep", S)
            out += h.observe_reading(t + 200, i, 4100, -60, S)
        else:
            out += h.observe_reading(t + 200, i, 4100, -60, S)
            out += h.observe_status(t, "online", i, "deepsleep", S)
        out += h.observe_status(t + 400, "offline", i, None, S)
        out += h.check(t + 30_000, S)
        h = round_trip(h)
    assert kinds(out) == ["online"]
    v = h.view(T + 38 * wake + 30_000, S)
    assert (v["state"], v["reboots_recent"], v["reboot_loop"], v["offline"]) == ("ok", 0, False, False)
    # asleep is fine; silent for more than three wake periods is offline
    assert h.check(T + 38 * wake + 3 * wake - 1_000, S) == []
    assert kinds(h.check(T + 38 * wake + 3 * wake + 1_000, S)) == ["offline"]


def test_a_sleeper_that_resets_counts_again() -> None:
    h = DeviceHealth("d")
    for i in range(1, 5):
        h.observe_status(T + i * 60_000, "online", i, "deepsleep", S)
    out = []
    for i in range(5, 8):  # readings first, then births saying the boots were watchdog resets
        out += h.observe_reading(T + i * 60_000, i, 4000, -60, S)
        out += h.observe_status(T + i * 60_000 + 1, "online", i, "wdt", S)
    assert kinds(out) == ["reboot_loop"] and h.view(T + 8 * 60_000, S)["reboots_recent"] == 3


def test_a_restarted_boot_counter_is_followed() -> None:
    h = DeviceHealth("d")
    readings(h, 3, boot=40)
    assert h.observe_status(T + 100_000, "online", 1, "power_on", S) == []
    assert h.max_boot == 1 and h.view(T + 100_000, S)["reboots_recent"] == 1
    assert kinds(h.observe_status(T + 110_000, "offline", 1, None, S)) == ["offline"]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        HealthSettings(offline_after_intervals=0)
    with pytest.raises(ValueError):
        HealthSettings(rssi_samples=0)


# ---- health changes (the ferry.health topic) ------------------------------------------------------


def changes(h: DeviceHealth, inputs) -> list[tuple]:
    """Feed (ts_ms, input) pairs; (previous, state, offline_reason, battery_low, rssi_poor, reboot_loop) of each
    change, in order. An input is a callable taking the health."""
    out = []
    for ts_ms, feed in inputs:
        before = h.flags()
        feed(h)
        change = h.change(before, ts_ms)
        if change is not None:
            assert (change.device, change.ts_ms, change.last_seen_ms) == (h.device, ts_ms, h.last_seen_ms)
            out.append((change.previous, change.state, change.offline_reason, change.battery_low, change.rssi_poor,
                        change.reboot_loop))
    return out


def test_every_change_of_health_and_nothing_else_is_a_change() -> None:
    """Known (ok), battery low (warning) and back (ok, which raises no alert), offline by last will, back,
    silent; repeated readings of the same health change nothing."""
    h = DeviceHealth("d")

    def reading(bat: int):
        return lambda h: h.observe_reading(h.last_seen_ms + 10_000 if h.last_seen_ms else T, 1, bat, -60, S)

    inputs = [(T, reading(3900))] + [(0, reading(3900))] * 3
    inputs += [(0, reading(3300))] * 5 + [(0, reading(3900))] * 5
    inputs += [(1, lambda h: h.observe_status(h.last_seen_ms + 1, "offline", 1, None, S)),
               (2, lambda h: h.observe_status(h.last_seen_ms + 2, "offline", 1, None, S)),
               (3, reading(3900)), (4, reading(3900)),
               (5, lambda h: h.check(h.last_seen_ms + 10_000, S)),  # not silent long enough
               (6, lambda h: h.check(h.last_seen_ms + 3_600_000, S)),
               (7, lambda h: h.check(h.last_seen_ms + 3_700_000, S))]
    assert changes(h, inputs) == [
        ("unknown", "ok", None, False, False, False),
        ("ok", "warning", None, True, False, False),  # the median of the last 5 fell below 3400 mV
        ("warning", "ok", None, False, False, False),  # ...and rose 50 mV above it: no alert, a change
        ("ok", "offline", "lwt", False, False, False),
        ("offline", "ok", None, False, False, False),
        ("ok", "offline", "silent", False, False, False),
    ]


def test_a_change_carries_the_medians_and_an_offline_device_keeps_its_flags() -> None:
    h = DeviceHealth("d")
    readings(h, 5, bat=3300, rssi=-85)
    before = h.flags()
    assert before == (None, True, True, False, 0, (), ())
    h.observe_status(T + 60_000, "offline", 1, None, S)
    change = h.change(before, T + 60_000)
    assert (change.state, change.previous, change.offline_reason, change.battery_low, change.rssi_poor) == \
        ("offline", "warning", "lwt", True, True)
    assert (change.battery_mv, change.rssi_dbm, change.last_seen_ms) == (3300, -85, T + 40_000)
    assert h.change(h.flags(), T + 61_000) is None
    # A device first heard of by its last will is offline, never "unknown".
    fresh = DeviceHealth("e")
    fresh.observe_status(T, "offline", 1, None, S)
    change = fresh.change(None, T)
    assert (change.previous, change.state, change.last_seen_ms, change.battery_mv) == ("unknown", "offline", None, None)


def test_failed_starts_and_missing_sensors_from_the_birth_are_a_warning() -> None:
    """The firmware's crash counter and the sensors it runs without (the birth's `boot_failures` and
    `faults`) reach the health view, its record and an alert each: once per birth that reports
    them, never again for the same birth read twice or for every wake of a sleeper."""
    h = DeviceHealth("d")
    readings(h, 3)
    before = h.flags()
    alerts = h.observe_status(T + 30_000, "online", 2, "hard", S, boot_failures=2, faults=("battery",))
    assert kinds(alerts) == ["boot_failures", "faults"]
    assert alerts[0].value == 2.0 and "2 failed start(s)" in alerts[0].reason
    assert alerts[1].reason == "runs without: battery"
    change = h.change(before, T + 30_000)
    assert change is not None and (change.state, change.boot_failures, change.faults) == ("warning", 2, ("battery",))
    v = round_trip(h).view(T + 31_000, S)
    assert (v["state"], v["boot_failures"], v["faults"]) == ("warning", 2, ["battery"])
    assert v["problems"] == ["2 failed start(s) before this boot", "runs without battery"]
    # the same birth again (retained, read once more): nothing new
    assert h.observe_status(T + 32_000, "online", 2, "hard", S, boot_failures=2, faults=("battery",)) == []
    # a clean start: the failures clear (a change back to ok is published); the fault stays, unalerted
    before = h.flags()
    assert h.observe_status(T + 40_000, "online", 3, "hard", S, boot_failures=0, faults=("battery",)) == []
    change = h.change(before, T + 40_000)
    assert change is not None and (change.state, change.boot_failures) == ("warning", 0)
    # an older boot's birth, received late, says nothing about how the board starts now
    assert h.observe_status(T + 35_000, "online", 2, "hard", S, boot_failures=5, faults=()) == []
    assert (h.boot_failures, h.faults) == (0, ("battery",))
    # failing again later raises again
    assert "boot_failures" in kinds(h.observe_status(T + 50_000, "online", 5, "wdt", S, boot_failures=1,
                                                     faults=("battery",)))


def test_a_failing_sensor_from_the_status_is_a_warning_until_its_count_stops_growing() -> None:
    """`sensor_errors` counts a sensor's failed reads since the boot; the firmware sends a status when
    one starts or stops failing. Failing: its count grew since the boot's previous status (or is above
    0 in the boot's first). One alert when it starts; the state goes back to ok when it stops."""
    h = DeviceHealth("d")
    readings(h, 3)
    assert h.observe_status(T + 30_000, "online", 2, "hard", S, sensor_errors=(("bme280", 0), ("pms5003", 0))) == []
    before = h.flags()
    alerts = h.observe_status(T + 40_000, "online", 2, "hard", S, sensor_errors=(("bme280", 3), ("pms5003", 0)))
    assert kinds(alerts) == ["sensor_errors"] and alerts[0].reason == "sensor bme280 is failing: 3 failed read(s) since boot 2"
    change = h.change(before, T + 40_000)
    assert change is not None and (change.state, change.sensors_failing) == ("warning", ("bme280",))
    assert round_trip(h).view(T + 41_000, S)["problems"] == ["failing: bme280"]
    # still failing: the count grew again; no second alert
    assert h.observe_status(T + 50_000, "online", 2, "hard", S, sensor_errors=(("bme280", 9), ("pms5003", 0))) == []
    assert h.sensors_failing == ("bme280",)
    # it stopped failing: the firmware's status with the same count
    before = h.flags()
    assert h.observe_status(T + 60_000, "online", 2, "hard", S, sensor_errors=(("bme280", 9), ("pms5003", 0))) == []
    assert h.sensors_failing == ()
    change = h.change(before, T + 60_000)
    assert change is not None and (change.state, change.previous) == ("ok", "warning")
    # a new boot whose first status already counts errors: failing
    assert kinds(h.observe_status(T + 70_000, "online", 3, "wdt", S, sensor_errors=(("pms5003", 2),))) \
        == ["sensor_errors"]


def test_a_devices_health_takes_little_memory() -> None:
    """The recent arrival gaps, battery and RSSI values are arrays of integers, not lists of int objects:
    a device's health after 30 readings holds < 900 bytes of Python memory (~800 here; as lists, 1,324)."""
    import tracemalloc

    def fed() -> DeviceHealth:
        h = DeviceHealth("d")
        for i in range(30):
            h.observe_reading(T + i * 10_000 + i % 3, 1, 4100 + i % 7, -60 - i % 5, S)
        return h

    tracemalloc.start()
    try:
        fed()  # caches and free lists filled: what stays allocated after this is the second one's
        before = tracemalloc.take_snapshot()
        h = fed()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    mine = [tracemalloc.Filter(True, "*/server/health.py"), tracemalloc.Filter(True, __file__)]
    held = sum(s.size_diff for s in after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename"))
    assert len(h.gaps_ms) == S.interval_samples and len(h.battery) == S.battery_samples
    assert held < 900, held
