"""The agents' pure logic: dedupe, loss accounting, late events, windows, round trips through JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferry.server.alerts import AlertLog
from ferry.server.accounting import DeviceAccount, DeviceStatus, detail, summary, totals
from ferry.server.config import ServerConfig
from ferry.server.logic import STATUS, TELEMETRY, Record, Settings, apply_batch, apply_reading, apply_status
from ferry.server.state import decode_value, encode_state
from ferry.server.windows import History

from tests.server.helpers import T0, reading, status

VECTORS = Path(__file__).parents[1] / "vectors" / "contract"
SETTINGS = Settings.from_config(ServerConfig(broker="127.0.0.1:1", allowed_lateness_s=30, dedupe_window=16))


def round_trip(value: dict | bytes | None) -> dict | None:
    """A value as the table holds it, read back (a batch's values are stored bytes already)."""
    if isinstance(value, bytes):
        return decode_value(value)
    return None if value is None else json.loads(json.dumps(value))


class Device:
    """One device's table values, fed through the logic one record at a time (with a JSON round trip)."""

    def __init__(self, device: str = "dev-01") -> None:
        self.device = device
        self.value: dict | None = None
        self.history: dict | None = None
        self.published: list = []

    def reading(self, payload: bytes, record_ms: int = 0) -> str:
        state = SETTINGS.load_state(self.device, round_trip(self.value))
        out = apply_reading(state, payload, record_ms, record_ms, SETTINGS)
        self.value = round_trip(state.to_dict())
        if out.closed:
            kept = History.from_dict(round_trip(self.history) or {})
            kept.extend(out.closed, SETTINGS.keep)
            self.history = round_trip(kept.to_dict())
            self.published += [w for w in out.closed if w.kind == "1m"]
        return out.verdict

    def status(self, payload: bytes) -> str:
        state = SETTINGS.load_state(self.device, round_trip(self.value))
        verdict = apply_status(state, payload, T0, SETTINGS).verdict
        self.value = round_trip(state.to_dict())
        return verdict

    @property
    def account(self) -> DeviceAccount:
        return DeviceAccount.from_dict(self.value["account"], SETTINGS.dedupe_window)

    @property
    def windows(self) -> dict:
        return self.value["windows"]

    @property
    def summary(self) -> dict:
        return summary(self.account, DeviceStatus.from_dict(self.value["status"]))


def test_duplicates_are_counted_not_received() -> None:
    d = Device()
    assert [d.reading(reading(s)) for s in (0, 1, 1, 2, 0)] == ["new", "new", "duplicate", "new", "duplicate"]
    assert d.summary == {"received": 3, "duplicates": 2, "gaps": 0, "lost_at_device": 0, "invalid": 0, "late": 0}


def test_a_gap_is_reported_until_the_late_reading_heals_it() -> None:
    d = Device()
    for s in (0, 1, 4, 5):
        d.reading(reading(s))
    assert d.summary["gaps"] == 2
    info = detail("dev-01", d.account, None)
    assert info["boots"]["1"]["gaps"] == [[2, 3]] and info["status"] is None
    d.reading(reading(2))
    d.reading(reading(3))
    d.reading(reading(3))
    assert d.summary["gaps"] == 0 and d.summary["received"] == 6 and d.summary["duplicates"] == 1


def test_each_boot_has_its_own_seqs() -> None:
    d = Device()
    for s in range(3):
        d.reading(reading(s, boot=1))
    for s in (0, 1):
        assert d.reading(reading(s, boot=2)) == "new"
    assert d.reading(reading(2, boot=2, ts_ms=T0 + 10_000)) == "new"
    assert d.reading(reading(1, boot=1)) == "duplicate"
    assert d.reading(reading(5, boot=2, ts_ms=T0 + 11_000)) == "new"
    assert d.summary["gaps"] == 2  # boot 2, seqs 3 and 4
    assert d.summary["received"] == 7


def test_device_reported_losses_are_a_running_total() -> None:
    d = Device()
    assert d.status(status(0)) == "new"
    d.status(status(3))
    d.status(status(3))  # the same counter again (retained birth re-delivered)
    d.status(status(5, boot=2))
    assert d.summary["lost_at_device"] == 5
    d.status(status(2, boot=3))  # counter went down: the outbox was re-created
    assert d.summary["lost_at_device"] == 7
    assert d.status(b'{"v":1,"dev":"dev-01","state":"offline","boot":3}') == "new"
    assert d.status(b'{"v":1,"dev":"dev-01","state":"online","boot":3}') == "invalid"  # birth needs fw etc.
    info = detail("dev-01", None, DeviceStatus.from_dict(d.value["status"]))
    assert info["status"] == {"state": "offline", "boot": 3, "fw": "0.1.0", "reset": "power_on", "outbox_dropped": 2,
                              "ota": None}
    assert (info["lost_at_device"], info["invalid"], info["received"]) == (7, 1, 0)


def test_contract_breakers_are_counted_invalid() -> None:
    d = Device()
    assert d.reading(b"not json") == "invalid"
    assert d.reading(reading(0, dev="other")) == "invalid"  # dev differs from the key
    assert d.summary["invalid"] == 2 and d.summary["received"] == 0


@pytest.mark.parametrize("case", json.loads((VECTORS / "readings.json").read_text())["valid"],
                         ids=lambda c: c["name"])
def test_every_valid_contract_vector_is_accepted_once(case: dict) -> None:
    d = Device(case["reading"]["device"])
    assert d.reading(case["payload"].encode(), record_ms=T0) == "new"
    assert d.reading(case["payload"].encode(), record_ms=T0) == "duplicate"


@pytest.mark.parametrize("case", json.loads((VECTORS / "readings.json").read_text())["invalid"],
                         ids=lambda c: c["name"])
def test_every_invalid_contract_vector_is_counted_invalid(case: dict) -> None:
    d = Device()
    payload = case["payload"].encode() if isinstance(case["payload"], str) else bytes(case["payload"])
    assert d.reading(payload) == "invalid"


def test_late_readings_are_accounted_but_not_windowed() -> None:
    d = Device()
    assert d.reading(reading(0, ts_ms=T0)) == "new"
    assert d.reading(reading(1, ts_ms=T0 + 100_000)) == "new"  # watermark: T0 + 70 s
    assert d.reading(reading(2, ts_ms=T0 + 60_000)) == "late"
    assert d.reading(reading(2, ts_ms=T0 + 60_000)) == "duplicate"
    assert d.summary["late"] == 1 and d.summary["received"] == 3


def test_unsynced_readings_use_the_record_timestamp() -> None:
    d = Device()
    d.reading(reading(0, ts_ms=5, synced=False), record_ms=T0)
    assert d.windows["max_event_ms"] == T0


def test_closed_one_minute_windows_are_published_once() -> None:
    d = Device()
    base = T0 - T0 % 60_000
    for i, offset in enumerate((0, 10_000, 59_999, 89_999)):
        d.reading(reading(i, ts_ms=base + offset, metrics={"temp_c": float(i)}))
    assert d.published == []  # watermark base + 59.999 s: the first minute is still open
    d.reading(reading(4, ts_ms=base + 90_000, metrics={"temp_c": 9.0}))
    assert len(d.published) == 1
    w = d.published[0]
    assert (w.metric, w.start_ms, w.end_ms, w.count, w.min, w.max, w.mean, w.last) == \
        ("temp_c", base, base + 60_000, 3, 0.0, 2.0, 1.0, 2.0)
    d.reading(reading(5, ts_ms=base + 95_000))
    assert len(d.published) == 1
    assert d.history["1m"]["temp_c"] == [[base, base + 60_000, 3, 0.0, 2.0, 1.0, 2.0]]


def test_totals_sum_devices() -> None:
    a = {"received": 3, "duplicates": 1, "gaps": 2, "lost_at_device": 0, "invalid": 0, "late": 1}
    b = {"received": 1, "duplicates": 0, "gaps": 0, "lost_at_device": 4, "invalid": 1, "late": 0}
    assert totals([a, b]) == {"received": 4, "duplicates": 1, "gaps": 2, "lost_at_device": 4, "invalid": 1,
                              "late": 1, "devices": 2}


def test_a_batch_gives_the_same_tables_as_one_record_at_a_time() -> None:
    base = T0 - T0 % 60_000
    records = []
    for dev in ("dev-a", "dev-b"):
        for seq in (0, 1, 1, 3, 2, 5):
            records.append(Record(dev, TELEMETRY, reading(seq, dev=dev, ts_ms=base + seq * 40_000), 0,
                                  base + seq * 40_000 + 500, 1))
        records.append(Record(dev, STATUS, status(4, dev=dev), 0, T0, 1))
    records.append(Record("dev-a", TELEMETRY, b"not json", 0, T0, 1))
    singles: dict[str, dict] = {}
    kept: dict[str, dict] = {}
    published: list = []
    health: list = []
    for record in records:
        one = apply_batch([record], lambda d: SETTINGS.load_state(d, singles.get(d)),
                          lambda d: History.from_dict(kept.get(d) or {}), SETTINGS, lambda p: AlertLog())
        singles.update({d: round_trip(encode_state(v)) for d, (_, v) in one.states.items()})
        kept.update({d: round_trip(v) for d, (_, v) in one.history.items()})
        published += one.publish
        health += one.health
    whole = apply_batch(records, SETTINGS.new_state, lambda d: History(), SETTINGS, lambda p: AlertLog())
    assert {d: round_trip(encode_state(v)) for d, (_, v) in whole.states.items()} == singles
    assert {d: round_trip(v) for d, (_, v) in whole.history.items()} == kept
    # Per device: seq 3 (120 s) closes the first minute (seqs 0 and 1); seq 2 (80 s) is then late.
    assert whole.publish == published
    assert [(w.device, w.kind) for w in whole.publish if w.kind == "1m"] == [("dev-a", "1m"), ("dev-b", "1m")]
    # Both kinds are published: seq 3 also closes the 5-minute windows that ended by then.
    assert {w.kind for w in whole.publish} == {"1m", "5m"}
    # One health record per device: it became known (ok), nothing changed after.
    assert whole.health == health and [(h.device, h.previous, h.state) for h in health] == \
        [("dev-a", "unknown", "ok"), ("dev-b", "unknown", "ok")]
    assert whole.verdicts == {"telemetry.new": 8, "telemetry.late": 2, "telemetry.duplicate": 2,
                              "status.new": 2, "telemetry.invalid": 1}
    assert {p for p, _ in whole.states.values()} == {1}


def test_records_kafka_delivers_again_are_skipped_not_counted_as_duplicates() -> None:
    """After a restart or a rebalance Kafka delivers records again from the last committed offset;
    the device's state says which it holds already, so the numbers are those of one delivery."""
    base = T0 - T0 % 60_000
    records = [Record("dev-a", TELEMETRY, reading(s, dev="dev-a", ts_ms=base + s * 40_000), 0, base + s * 40_000, 2,
                      100 + i) for i, s in enumerate((0, 1, 1, 3))]
    records.append(Record("dev-a", STATUS, status(0, dev="dev-a"), 0, T0, 2, 7))
    saved: dict[str, dict] = {}

    def run(batch: list[Record]):
        result = apply_batch(batch, lambda d: SETTINGS.load_state(d, saved.get(d)), lambda d: History(), SETTINGS)
        saved.update({d: round_trip(encode_state(v)) for d, (_, v) in result.states.items()})
        return result

    once = run(records)
    first = saved["dev-a"]
    assert once.verdicts == {"telemetry.new": 3, "telemetry.duplicate": 1, "status.new": 1}
    # Delivered again in full (a crash before the offsets were committed), then with one new record.
    again = run(records)
    assert again.verdicts == {"telemetry.replayed": 4, "status.replayed": 1}
    assert saved["dev-a"] == first and again.publish == [] and again.health == []
    more = run(records[2:] + [Record("dev-a", TELEMETRY, reading(2, dev="dev-a", ts_ms=base + 80_000), 0,
                                     base + 130_000, 2, 104)])
    assert more.verdicts == {"telemetry.replayed": 2, "status.replayed": 1, "telemetry.late": 1}
    assert saved["dev-a"]["offsets"] == {"telemetry": [2, 104], "status": [2, 7]}
    account = DeviceAccount.from_dict(saved["dev-a"]["account"], SETTINGS.dedupe_window)
    assert (account.received, account.duplicates) == (4, 1)
    # Offsets of another partition (the topic grew) or unknown (-1) say nothing: such records are applied.
    moved = run([Record("dev-a", TELEMETRY, reading(4, dev="dev-a", ts_ms=base + 160_000), 0, base + 160_000, 5, 3),
                 Record("dev-a", TELEMETRY, reading(5, dev="dev-a", ts_ms=base + 200_000), 0, base + 200_000, 5)])
    assert moved.verdicts == {"telemetry.new": 2}
    # A value written before offsets were kept still loads, knowing none.
    old = {k: v for k, v in first.items() if k != "offsets"}
    assert SETTINGS.load_state("dev-a", old).offsets == {}


def test_a_reading_from_the_future_is_kept_flagged_and_poisons_nothing() -> None:
    """A synced clock a year ahead: the reading is received, counted under `future` and windowed at
    its receive time + `max_clock_skew_s`; the device's watermark does not move, so later readings
    are on time."""
    settings = Settings.from_config(ServerConfig(broker="127.0.0.1:1", allowed_lateness_s=30, max_clock_skew_s=60))
    state = settings.new_state("dev-01")
    closed = []

    def feed(seq: int, ts_ms: int) -> str:
        out = apply_reading(state, reading(seq, ts_ms=ts_ms), ts_ms, T0 + seq * 1000 + 50, settings)
        closed.extend(w for w in out.closed if w.kind == "1m")
        return out.verdict

    verdicts = [feed(s, T0 + s * 1000) for s in range(3)]
    verdicts.append(feed(3, T0 + 365 * 86_400_000))
    verdicts += [feed(s, T0 + s * 1000) for s in range(4, 200)]
    assert verdicts == ["new"] * 200
    numbers = summary(state.account, state.status)
    assert (numbers["received"], state.account.future, numbers["late"]) == (200, 1, 0)
    assert state.windows.max_event_ms == T0 + 199_000
    open_count = sum(w["count"] for w in state.windows.open_views("temp_c", settings.kinds[0]))
    assert sum(w.count for w in closed) + open_count == 200
    assert [w.count for w in closed[:2]] == [59, 61]  # the second minute holds it (received at 3 s, + 60 s)
    again = settings.load_state("dev-01", json.loads(json.dumps(state.to_dict())))
    assert again.account.future == 1 and detail("dev-01", again.account, again.status)["future"] == 1


def test_the_sample_time_of_each_clock_synced_reading_counted_once_is_kept_for_the_latency() -> None:
    """The worker's latency histogram (server/latency.py) takes each reading's sample time once: a
    clock-synced reading counted for the first time (new or late), not a duplicate, not a reading
    without a synced clock, not one stamped too far ahead (its clock is wrong)."""
    base = T0 - T0 % 60_000
    records = [Record("dev-a", TELEMETRY, reading(0, dev="dev-a", ts_ms=base), 0, base + 50, 1, 1),
               Record("dev-a", TELEMETRY, reading(0, dev="dev-a", ts_ms=base), 0, base + 60, 1, 2),  # duplicate
               Record("dev-a", TELEMETRY, reading(1, dev="dev-a", ts_ms=5_000, synced=False), 0, base + 70, 1, 3),
               Record("dev-a", TELEMETRY, reading(2, dev="dev-a", ts_ms=base + 10**9), 0, base + 80, base + 80, 4),
               Record("dev-a", TELEMETRY, reading(3, dev="dev-a", ts_ms=base + 1_000), 0, base + 90, 1, 5)]
    states: dict = {}
    result = apply_batch(records, lambda d: states.setdefault(d, SETTINGS.load_state(d, None)), lambda d: History(),
                         SETTINGS)
    assert result.sample_ms == [base, base + 1_000]
