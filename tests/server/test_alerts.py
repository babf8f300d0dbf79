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
