"""Device health from what a device sends and when: pure, no Faust; time is always an argument.

Per device a `DeviceHealth` fed by its readings and status messages (with the gateway's receive
time, `ferry-received-ms`) and by a periodic `check(now)`:

* **offline**: at once on an "offline" status (the retained last will), unless the device
  sleeps (see below); or when nothing arrived for `offline_after_intervals` sample intervals.
  The interval is the median spacing of the device's recent arrivals, ignoring arrivals closer
  than `burst_gap_ms` (an outbox draining after an outage, a wake's birth and reading), and is
  never taken below `interval_floor_ms`. Any reading or status received after the device went
  offline brings it back ("online" alert).
* **sleeping devices**: a duty-cycle device boots on every wake (reset cause "deepsleep") and
  says "offline" each time it goes back to sleep. When its latest birth says "deepsleep", that
  "offline" means asleep: it goes offline only when silent for too long, like any device. Its
  first cycle after a power-on cannot be told from a crash: one offline/online pair then.
* **battery_low**: the median of the last `battery_samples` battery readings below
  `battery_low_mv`; clears `battery_hysteresis_mv` above it.
* **rssi_poor**: the median of the last `rssi_samples` RSSI values below `rssi_poor_dbm`;
  clears `rssi_hysteresis_db` above it.
* **reboot_loop**: at least `reboot_loop_boots` boots within `reboot_loop_window_ms`, not counting
  deep-sleep wakes. A boot is counted once, when first seen: from a birth whose reset cause is
  not "deepsleep", or from a reading whose boot is above every boot seen (unless the device
  sleeps; its birth, when it comes, corrects the count either way). The first boot a fresh
  `DeviceHealth` sees is not counted: it may be long past.

Alerts mark transitions only, once per episode: "offline", "online", "battery_low",
"rssi_poor", "reboot_loop"; a battery, signal or reboot problem that clears raises nothing.
`flags()` and `change()` tell any change of the health, clearings too (the `ferry.health` topic).
Receive times order the evidence: a status or reading received before the latest state change
does not undo it (the two agents see readings and statuses in no common order).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from ferry.worker_records import HealthChange, health_state
from ferry.server.alerts import Alert

DEEP_SLEEP = "deepsleep"
_MAX_BOOTS_KEPT = 32


@dataclass(frozen=True, slots=True)
class HealthSettings:
    offline_after_intervals: float = 3
    """Offline after this many sample intervals without any message."""
    interval_floor_ms: int = 10_000
    """The interval used is never shorter (so offline takes at least 30 s of silence by default)."""
    burst_gap_ms: int = 1_000
    """Arrivals closer than this are one burst, not a sample interval."""
    interval_samples: int = 8
    """Recent arrival gaps whose median is the interval."""
    battery_low_mv: int = 3400
    """Low when the recent median battery voltage is below this (a LiPo near empty)."""
    battery_hysteresis_mv: int = 50
    """...and no longer low from this much above it, so a reading near the line does not flap."""
    battery_samples: int = 5
    """Battery readings in the median."""
    rssi_poor_dbm: int = -80
    """Poor when the recent median RSSI is below this."""
    rssi_hysteresis_db: int = 3
    rssi_samples: int = 10
    """RSSI values in the median (readings without `rssi` are skipped)."""
    reboot_loop_boots: int = 3
    """A reboot loop: at least this many boots, deep-sleep wakes excluded..."""
    reboot_loop_window_ms: int = 600_000
    """...within this long."""

    def __post_init__(self) -> None:
        if self.offline_after_intervals <= 0 or self.interval_floor_ms <= 0:
            raise ValueError("health settings: offline_after_intervals and interval_floor_ms must be > 0")
        if min(self.interval_samples, self.battery_samples, self.rssi_samples, self.reboot_loop_boots) < 1:
            raise ValueError("health settings: sample counts and reboot_loop_boots must be >= 1")


def _median(values: array) -> float:
    s = sorted(values)
    h = len(s) // 2
    return s[h] if len(s) & 1 else (s[h - 1] + s[h]) / 2


def _push(values: list | array, value, keep: int) -> None:
    values.append(value)
    del values[:-keep]


@dataclass(slots=True)
class DeviceHealth:
    device: str
    last_seen_ms: int | None = None
    """Receive time of the newest reading or birth."""
    offline: bool = False
    offline_reason: str | None = None
    """"lwt" (an offline status) or "silent"."""
    offline_since_ms: int = 0
    """Receive time of the offline status, or of the last message before the silence."""
    # Arrays of integers, not lists: no boxed int per value (the worker keeps every device's health live,
    # docs/server.md "Memory per device").
    gaps_ms: array = field(default_factory=lambda: array("q"))
    battery: array = field(default_factory=lambda: array("q"))
    battery_low: bool = False
    rssi: array = field(default_factory=lambda: array("q"))
    rssi_poor: bool = False
    max_boot: int = 0
    """Highest boot seen (0: none yet)."""
    first_boot: int = 0
    """The first boot seen, never counted."""
    boot_cause: str | None = None
    """Reset cause of `max_boot`, once its birth arrived."""
    sleeper: bool = False
    """The latest birth was a wake from deep sleep."""
    boots: list[list[int]] = field(default_factory=list)
    """[boot, receive_ms] of the counted boots, oldest first."""
    reboot_loop: bool = False
    boot_failures: int = 0
    """Failed starts the newest birth reported (the firmware's crash counter; 0 after a clean start)."""
    faults: tuple[str, ...] = ()
    """Sensors the newest birth said the board runs without."""
    start_boot: int = 0
    """The boot whose birth `boot_failures` and `faults` come from (a birth read again raises nothing)."""
    sensor_errors: dict[str, int] = field(default_factory=dict)
    """Each sensor's failed reads since `sensor_boot` began, as the newest status of that boot said."""
    sensor_boot: int = 0
    sensors_failing: tuple[str, ...] = ()
    """Sensors whose failed reads grew in the newest status (above 0 in a boot's first status)."""

    # ---- inputs -----------------------------------------------------------

    def observe_reading(self, receive_ms: int, boot: int, bat_mv: int | None, rssi_dbm: int | None,
                        settings: HealthSettings) -> list[Alert]:
        """One new reading: the device is alive; its boot, battery and signal."""
        alerts = self._seen(receive_ms, settings)
        if boot > self.max_boot:
            if self.max_boot == 0:
                self.first_boot = boot
            elif not self.sleeper:
                self._count_boot(boot, receive_ms, settings, alerts)
            self.max_boot, self.boot_cause = boot, None
        if bat_mv is not None:
            _push(self.battery, bat_mv, settings.battery_samples)
            level = _median(self.battery)
            if not self.battery_low and level < settings.battery_low_mv:
                self.battery_low = True
                alerts.append(Alert(self.device, "battery_low",
                                    f"battery {level:.0f} mV (median of the last {len(self.battery)} readings) "
                                    f"is below {settings.battery_low_mv} mV", receive_ms, value=float(level)))
            elif self.battery_low and level >= settings.battery_low_mv + settings.battery_hysteresis_mv:
                self.battery_low = False
        if rssi_dbm is not None:
            _push(self.rssi, rssi_dbm, settings.rssi_samples)
            level = _median(self.rssi)
            if not self.rssi_poor and level < settings.rssi_poor_dbm:
                self.rssi_poor = True
                alerts.append(Alert(self.device, "rssi_poor",
                                    f"Wi-Fi signal {level:.0f} dBm (median of the last {len(self.rssi)} "
                                    f"readings) is below {settings.rssi_poor_dbm} dBm", receive_ms,
                                    value=float(level)))
            elif self.rssi_poor and level >= settings.rssi_poor_dbm + settings.rssi_hysteresis_db:
                self.rssi_poor = False
        return alerts

    def observe_status(self, receive_ms: int, state: str, boot: int, reset: str | None,
                       settings: HealthSettings, boot_failures: int = 0,
                       faults: tuple[str, ...] = (), sensor_errors: tuple[tuple[str, int], ...] = ()) -> list[Alert]:
        """A birth ("online", with its reset cause, failed starts and missing sensors) or an
        "offline" (last will, or a sleeper going to sleep)."""
        if state == "offline":
            stale = (boot < self.max_boot or (self.last_seen_ms is not None and receive_ms < self.last_seen_ms)
                     or (self.offline and receive_ms <= self.offline_since_ms))
            if stale or (self.sleeper and boot >= self.max_boot):
                return []  # an old boot's will, older news, or a sleeper going to sleep
            was = self.offline
            self.offline, self.offline_reason, self.offline_since_ms = True, "lwt", receive_ms
            if was:
                return []
            return [Alert(self.device, "offline", f"offline: the device's last will (boot {boot}) arrived",
                          receive_ms)]
        # a birth below max_boot that is newer than anything else: the boot counter started again
        restarted = boot < self.max_boot and (self.last_seen_ms is None or receive_ms >= self.last_seen_ms)
        alerts = self._seen(receive_ms, settings)
        if boot > self.max_boot or restarted:
            self.sleeper = reset == DEEP_SLEEP
            if self.max_boot == 0:
                self.first_boot = boot
            elif not self.sleeper:
                self._count_boot(boot, receive_ms, settings, alerts)
            self.max_boot, self.boot_cause = boot, reset
        elif boot == self.max_boot and self.boot_cause is None:
            # its readings came first: the birth says whether the boot was a wake from deep sleep
            self.sleeper = reset == DEEP_SLEEP
            self.boot_cause = reset
            counted = any(b == boot for b, _ in self.boots)
            if counted and self.sleeper:
                self.boots = [e for e in self.boots if e[0] != boot]
            elif not counted and not self.sleeper and boot != self.first_boot:
                self._count_boot(boot, receive_ms, settings, alerts)
        if boot >= self.max_boot:  # the newest birth says how the board started and how its sensors do
            self._observe_start(receive_ms, boot, boot_failures, faults, alerts)
            self._observe_sensors(receive_ms, boot, dict(sensor_errors), alerts)
        return alerts

    def _observe_sensors(self, receive_ms: int, boot: int, errors: dict[str, int], alerts: list[Alert]) -> None:
        """A sensor fails while its count of failed reads grows from one status of a boot to the next
        (the firmware sends a status when a sensor starts or stops failing); at a boot's first status,
        while it is above 0."""
        before = self.sensor_errors if boot == self.sensor_boot else {}
        failing = tuple(name for name, n in errors.items() if n > before.get(name, 0))
        for name in failing:
            if name not in self.sensors_failing:
                alerts.append(Alert(self.device, "sensor_errors", f"sensor {name} is failing: {errors[name]} failed "
                                    f"read(s) since boot {boot}", receive_ms, value=float(errors[name])))
        self.sensor_errors, self.sensor_boot, self.sensors_failing = errors, boot, failing

    def _observe_start(self, receive_ms: int, boot: int, boot_failures: int, faults: tuple[str, ...],
                       alerts: list[Alert]) -> None:
        if boot == self.start_boot and boot_failures == self.boot_failures and tuple(faults) == self.faults:
            return  # the same birth again (a retained status read once more)
        if boot_failures:
            alerts.append(Alert(self.device, "boot_failures",
                                f"boot {boot} came after {boot_failures} failed start(s) in a row (the "
                                "board's crash file says why)", receive_ms, value=float(boot_failures)))
        new = [name for name in faults if name not in self.faults]  # not again at every wake of a sleeper
        if new:
            alerts.append(Alert(self.device, "faults", "runs without: " + ", ".join(new), receive_ms,
                                value=float(len(faults))))
        self.boot_failures, self.faults, self.start_boot = boot_failures, tuple(faults), boot

    def check(self, now_ms: int, settings: HealthSettings) -> list[Alert]:
        """The timer: a device silent for too long goes offline; old boots leave the reboot window."""
        self._prune(now_ms, settings)
        if self.reboot_loop and len(self.boots) < settings.reboot_loop_boots:
            self.reboot_loop = False
        if self.offline or self.last_seen_ms is None:
            return []
        limit = self.silence_limit_ms(settings)
        silent = now_ms - self.last_seen_ms
        if silent <= limit:
            return []
        self.offline, self.offline_reason, self.offline_since_ms = True, "silent", self.last_seen_ms
        return [Alert(self.device, "offline",
                      f"offline: nothing received for {silent / 1000:.0f} s, more than "
                      f"{settings.offline_after_intervals:g} intervals of {self.interval_ms(settings) / 1000:.0f} s",
                      now_ms)]

    # ---- derived ----------------------------------------------------------

    def flags(self) -> tuple | None:
        """(offline reason or None, battery_low, rssi_poor, reboot_loop, boot_failures, faults): what a
        health record says, compared before and after each input to tell a change. None while
        nothing is known."""
        if self.last_seen_ms is None and not self.offline:
            return None
        return (self.offline_reason if self.offline else None, self.battery_low, self.rssi_poor, self.reboot_loop,
                self.boot_failures, self.faults, self.sensors_failing)

    def change(self, before: tuple | None, ts_ms: int) -> HealthChange | None:
        """The health record to publish when `flags()` differs from `before` (taken before the input), else None."""
        after = self.flags()
        if after is None or after == before:
            return None
        reason, battery_low, rssi_poor, reboot_loop, boot_failures, faults, sensors_failing = after
        return HealthChange(self.device, ts_ms, health_state(*after),
                            "unknown" if before is None else health_state(*before), reason, battery_low,
                            rssi_poor, reboot_loop, last_seen_ms=self.last_seen_ms,
                            battery_mv=round(_median(self.battery)) if self.battery else None,
                            rssi_dbm=round(_median(self.rssi)) if self.rssi else None,
                            boot_failures=boot_failures, faults=faults, sensors_failing=sensors_failing)

    def interval_ms(self, settings: HealthSettings) -> float:
        """The device's sample interval as its arrivals show it (at least the floor)."""
        if not self.gaps_ms:
            return settings.interval_floor_ms
        return max(_median(self.gaps_ms), settings.interval_floor_ms)

    def silence_limit_ms(self, settings: HealthSettings) -> float:
        return settings.offline_after_intervals * self.interval_ms(settings)

    def offline_at(self, now_ms: int, settings: HealthSettings) -> bool:
        """Offline as of `now_ms`, as `view` says it (a silence past the limit counts before `check` runs)."""
        last = self.last_seen_ms
        return self.offline or (last is not None and now_ms - last > self.silence_limit_ms(settings))

    def view(self, now_ms: int, settings: HealthSettings) -> dict:
        """What the dashboard shows, as of `now_ms` (a silence past the limit shows before `check` runs)."""
        offline, reason = self.offline, self.offline_reason
        last = self.last_seen_ms
        if not offline and self.offline_at(now_ms, settings):
            offline, reason = True, "silent"
        recent = sum(1 for _, ms in self.boots if ms > now_ms - settings.reboot_loop_window_ms)
        battery = self.battery[-1] if self.battery else None
        rssi = round(_median(self.rssi)) if self.rssi else None
        problems = []
        if offline:
            problems.append("offline: last will" if reason == "lwt" else
                            "offline: silent for %s" % _ago(now_ms - (last or now_ms)))
        if self.battery_low:
            problems.append(f"battery {battery} mV")
        if self.rssi_poor:
            problems.append(f"weak Wi-Fi {rssi} dBm")
        if self.reboot_loop:
            problems.append(f"reboot loop: {recent} boots in {_ago(settings.reboot_loop_window_ms)}")
        if self.boot_failures:
            problems.append(f"{self.boot_failures} failed start(s) before this boot")
        if self.faults:
            problems.append("runs without " + ", ".join(self.faults))
        if self.sensors_failing:
            problems.append("failing: " + ", ".join(self.sensors_failing))
        if offline:
            state = "offline"
        elif self.last_seen_ms is None:
            state = "unknown"
        else:
            state = "warning" if problems else "ok"
        return {"state": state, "last_seen_ms": self.last_seen_ms, "offline": offline,
                "offline_reason": reason if offline else None, "battery_mv": battery,
                "battery_low": self.battery_low, "rssi_dbm": rssi, "rssi_poor": self.rssi_poor,
                "reboots_recent": recent, "reboot_loop": self.reboot_loop, "boot_failures": self.boot_failures,
                "faults": list(self.faults), "sensors_failing": list(self.sensors_failing), "problems": problems}

    # ---- internals --------------------------------------------------------

    def _seen(self, receive_ms: int, settings: HealthSettings) -> list[Alert]:
        """Evidence the device was up at `receive_ms`: the arrival spacing, and back online."""
        last = self.last_seen_ms
        if last is None or receive_ms > last:
            if last is not None and receive_ms - last >= settings.burst_gap_ms:
                _push(self.gaps_ms, receive_ms - last, settings.interval_samples)
            self.last_seen_ms = receive_ms
        if self.offline and receive_ms > self.offline_since_ms:
            self.offline, self.offline_reason = False, None
            return [Alert(self.device, "online", "back online", receive_ms)]
        return []

    def _count_boot(self, boot: int, receive_ms: int, settings: HealthSettings, alerts: list[Alert]) -> None:
        _push(self.boots, [boot, receive_ms], _MAX_BOOTS_KEPT)
        self._prune(receive_ms, settings)
        n = len(self.boots)
        if not self.reboot_loop and n >= settings.reboot_loop_boots:
            self.reboot_loop = True
            alerts.append(Alert(self.device, "reboot_loop",
                                f"reboot loop: {n} boots in {_ago(settings.reboot_loop_window_ms)} "
                                f"(boots {', '.join(str(b) for b, _ in self.boots)}), none from deep sleep",
                                receive_ms, value=float(boot), score=float(n)))

    def _prune(self, now_ms: int, settings: HealthSettings) -> None:
        start = now_ms - settings.reboot_loop_window_ms
        self.boots = [e for e in self.boots if e[1] > start]

    def to_dict(self) -> dict:
        return {"device": self.device, "last_seen_ms": self.last_seen_ms,
                "offline": [self.offline, self.offline_reason, self.offline_since_ms], "gaps_ms": self.gaps_ms.tolist(),
                "battery": [self.battery.tolist(), self.battery_low], "rssi": [self.rssi.tolist(), self.rssi_poor],
                "boot": [self.max_boot, self.boot_cause, self.sleeper, self.first_boot], "boots": self.boots,
                "reboot_loop": self.reboot_loop, "start": [self.start_boot, self.boot_failures, list(self.faults)],
                "sensors": [self.sensor_boot, self.sensor_errors, list(self.sensors_failing)]}

    @classmethod
    def from_dict(cls, device: str, data: dict) -> "DeviceHealth":
        h = cls(device, data["last_seen_ms"])
        h.offline, h.offline_reason, h.offline_since_ms = data["offline"]
        h.gaps_ms = array("q", data["gaps_ms"])
        h.battery, h.battery_low = array("q", data["battery"][0]), data["battery"][1]
        h.rssi, h.rssi_poor = array("q", data["rssi"][0]), data["rssi"][1]
        h.max_boot, h.boot_cause, h.sleeper, h.first_boot = data["boot"]
        h.boots = [list(e) for e in data["boots"]]
        h.reboot_loop = data["reboot_loop"]
        h.start_boot, h.boot_failures, faults = data.get("start", (0, 0, ()))  # absent in older state
        h.faults = tuple(faults)
        h.sensor_boot, errors, failing = data.get("sensors", (0, {}, ()))
        h.sensor_errors, h.sensors_failing = dict(errors), tuple(failing)
        return h


def _ago(ms: float) -> str:
    """A duration the way a person says it: 45 s, 10 min, 2 h."""
    s = ms / 1000
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.0f} h"
