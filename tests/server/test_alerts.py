"""`Alert`: the one record for anomalies and device trouble, JSON round trips."""

from __future__ import annotations

import json

import pytest

from ferry.server.alerts import Alert


@pytest.mark.parametrize("alert", [
    Alert("esp32-a1", "anomaly", "temp_c 33.4 is 9.8 robust z above the median 21.3 of the last 60 readings",
          1_732_480_000_123, "temp_c", 33.4, 9.8),
    Alert("esp32-a1", "offline", "offline: the device's last will (boot 3) arrived", 1_732_480_000_000),
])
def test_json_round_trip(alert: Alert) -> None:
    data = json.loads(json.dumps(alert.to_dict()))
    assert set(data) == {"device", "kind", "metric", "reason", "ts_ms", "value", "score"}
    assert Alert.from_dict(data) == alert


def test_alerts_are_frozen_values() -> None:
    a = Alert("d", "stuck", "r", 1, "temp_c", 21.0, 3.0)
    with pytest.raises(AttributeError):
        a.kind = "anomaly"  # type: ignore[misc]
    assert a == Alert.from_dict(a.to_dict()) and hash(a) == hash(Alert.from_dict(a.to_dict()))


def test_the_alert_log_keeps_the_newest_in_order_whatever_the_arrival() -> None:
    from ferry.server.alerts import AlertLog

    log = AlertLog()
    log.add([Alert("b", "offline", "r", 30), Alert("a", "offline", "r", 10)], keep=3)
    log.add([Alert("c", "anomaly", "r", 20, "x"), Alert("a", "anomaly", "r", 30, "y"),
             Alert("a", "anomaly", "r", 30, "x")], keep=3)
    assert [(a.device, a.ts_ms, a.metric) for a in log.alerts] == [("a", 30, "x"), ("a", 30, "y"), ("b", 30, None)]
    assert [(a.device, a.metric) for a in log.newest(2)] == [("b", None), ("a", "y")]
    assert log.newest(5, since_ms=31) == [] and len(log.newest(5, since_ms=30)) == 3
    assert AlertLog.from_list(log.to_list()) == log
