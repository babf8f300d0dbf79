"""The agents' pure logic: dedupe, loss accounting, late events, windows, round trips through JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.accounting import DeviceAccount, DeviceStatus, detail, summary, totals
from server.config import ServerConfig
from server.logic import Settings, handle_reading, handle_status

from tests.server.helpers import T0, reading, status

VECTORS = Path(__file__).parents[1] / "vectors" / "contract"
SETTINGS = Settings.from_config(ServerConfig(broker="127.0.0.1:1", allowed_lateness_s=30, dedupe_window=16))


class Device:
    """One device's table values, fed through the logic as the agents do (with a JSON round trip)."""

    def __init__(self) -> None:
        self.account: dict | None = None
        self.status_value: dict | None = None
        self.windows: dict | None = None
        self.history: dict | None = None
        self.published: list = []

    def reading(self, payload: bytes, key: str = "dev-01", record_ms: int = 0) -> str:
        out = handle_reading(self.account, self.windows, key.encode(), payload, record_ms, SETTINGS,
                             lambda: self.history)
        self.account = json.loads(json.dumps(out.account))
        if out.windows is not None:
            self.windows = json.loads(json.dumps(out.windows))
        if out.history is not None:
            self.history = json.loads(json.dumps(out.history))
        self.published += out.publish
        return out.verdict

    def status(self, payload: bytes) -> str:
        _, verdict, self.status_value = handle_status(self.status_value, b"dev-01", payload)
        self.status_value = json.loads(json.dumps(self.status_value))
        return verdict

    @property
    def summary(self) -> dict:
        account = DeviceAccount.from_dict(self.account, SETTINGS.dedupe_window) if self.account else None
        status = DeviceStatus.from_dict(self.status_value) if self.status_value else None
        return summary(account, status)


def test_duplicates_are_counted_not_received() -> None:
    d = Device()
    assert [d.reading(reading(s)) for s in (0, 1, 1, 2, 0)] == ["new", "new", "duplicate", "new", "duplicate"]
    assert d.summary == {"received": 3, "duplicates": 2, "gaps": 0, "lost_at_device": 0, "invalid": 0, "late": 0}


def test_a_gap_is_reported_until_the_late_reading_heals_it() -> None:
    d = Device()
    for s in (0, 1, 4, 5):
        d.reading(reading(s))
    assert d.summary["gaps"] == 2
    info = detail("dev-01", DeviceAccount.from_dict(d.account, 16), None)
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
    info = detail("dev-01", None, DeviceStatus.from_dict(d.status_value))
    assert info["status"] == {"state": "offline", "boot": 3, "fw": "0.1.0", "reset": "power_on", "outbox_dropped": 2}
    assert (info["lost_at_device"], info["invalid"], info["received"]) == (7, 1, 0)


def test_contract_breakers_are_counted_invalid() -> None:
    d = Device()
    assert d.reading(b"not json") == "invalid"
    assert d.reading(reading(0, dev="other")) == "invalid"  # dev differs from the key
    assert d.summary["invalid"] == 2 and d.summary["received"] == 0


@pytest.mark.parametrize("case", json.loads((VECTORS / "readings.json").read_text())["valid"],
                         ids=lambda c: c["name"])
def test_every_valid_contract_vector_is_accepted_once(case: dict) -> None:
    d = Device()
    key = case["reading"]["device"]
    assert d.reading(case["payload"].encode(), key=key, record_ms=T0) == "new"
    assert d.reading(case["payload"].encode(), key=key, record_ms=T0) == "duplicate"


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
