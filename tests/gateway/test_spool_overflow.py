"""`bridge.overflow = "drop_oldest"` with real processes: during an outage a full spool gives up its
oldest messages instead of refusing devices, counts them, and the newest reach Kafka."""

from __future__ import annotations

from pathlib import Path

from ferry.gateway.process import GatewayProcess
from ferry.process import free_port, wait_until
from tests.gateway.paho_client import TestClient
from tests.gateway.test_bridge import (
    Uplink, bridge_toml, consume, create_topics, metrics, naming, publish_all, reading, readings_by_device, uplink,
)

__all__ = ["uplink"]  # the fixture, used below


def test_drop_oldest_keeps_devices_acknowledged_and_the_newest_readings(uplink: Uplink, tmp_path: Path) -> None:
    names = naming()
    create_topics(uplink.bootstrap, names)
    uplink.down()
    config = bridge_toml(names, uplink.bootstrap, 'spool_max_messages = 50\ninflight = 5\noverflow = "drop_oldest"\n')
    gateway = GatewayProcess(tmp_path / "gw", config_text=config, metrics_port=free_port())
    gateway.start()
    try:
        device = TestClient(gateway.port, "dev-a")
        publish_all(device, [("ferry/s/dev-a/telemetry", reading("dev-a", seq)) for seq in range(120)])  # all acked
        device.close()
        values = metrics(gateway)
        assert values["ferry_bridge_spool_refused_total"] == 0
        assert values["ferry_bridge_spool_messages"] <= 50
        dropped = values["ferry_bridge_spool_dropped_total"]
        assert dropped >= 70
        assert "dropped its" in gateway.log_text()

        uplink.up()
        assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, 60, poll_s=0.5)
    finally:
        gateway.stop()
    records = consume(uplink.bootstrap, [names.telemetry_topic], lambda r: len(r) >= 120 - dropped,
                      timeout_s=30, linger_s=1.0)
    arrived = set(readings_by_device(records)["dev-a"])
    assert set(range(120 - 40, 120)) <= arrived  # the newest are kept
    assert len(arrived) >= 120 - dropped  # what was not dropped arrived (dropped ones in flight may too)
