"""The Kafka bridge cannot stall: poison records, a full librdkafka queue and a QoS 0 flood.

Real gateway processes, real paho devices, real Tansu (behind a link simulator
where a test needs an outage), as in `test_bridge.py`, whose helpers these
tests share.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from ferry.local_kafka import LocalKafka
from ferry.process import free_port, wait_until
from ferry.gateway.process import GatewayProcess
from tests.gateway.paho_client import TestClient
from tests.gateway.test_bridge import (
    TIMEOUT_S, Uplink, assert_all_arrived_in_order, bridge_toml, consume, create_topics, gateways, metrics,
    naming, publish_all, reading, uplink,
)

__all__ = ["gateways", "uplink"]  # fixtures shared with test_bridge.py

REJECTED_TOO_LARGE = 'ferry_bridge_rejected_total{reason="too_large"}'


def rejected_lines(gateway: GatewayProcess) -> list[dict]:
    """Every entry of the gateway's dead-letter files, oldest first (the documented JSON lines)."""
    files = sorted((gateway.data_dir / "rejected").glob("rejected-*.jsonl"))
    return [json.loads(line) for path in files for line in path.read_bytes().splitlines()]


def test_poison_records_go_to_the_dead_letter_file_and_the_rest_flows(kafka: LocalKafka, tmp_path: Path,
                                                                       gateways: list) -> None:
    names = naming()
    create_topics(kafka.bootstrap_servers, names)
    gateway = GatewayProcess(tmp_path / "gw", config_text=bridge_toml(names, kafka.bootstrap_servers, "inflight = 2\n"),
                             metrics_port=free_port())
    gateways.append(gateway.start())
    # Larger than librdkafka's message.max.bytes (1,000,000 with the headers): MSG_SIZE_TOO_LARGE,
    # which no retry can cure. With inflight = 2 they hold every slot unless they leave the spool.
    poison = [("ferry/s1/x/reply", b"a" * 1_000_000), ("ferry/s1/x/reply", b"b" * 1_000_000)]
    device = TestClient(gateway.port, "x")
    try:
        publish_all(device, poison + [("ferry/s1/x/telemetry", reading("x", seq)) for seq in range(200)])
    finally:
        device.client.disconnect()

    records = consume(kafka.bootstrap_servers, [names.telemetry_topic], lambda r: len(r) >= 200, linger_s=1.0)
    assert assert_all_arrived_in_order(records, {"x": 200}) == 0
    assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, 10)

    entries = rejected_lines(gateway)
    assert [(e["mqtt_topic"], base64.b64decode(e["payload_base64"])) for e in entries] == poison
    for entry in entries:
        assert entry["reason"] == "too_large"
        assert entry["error"].startswith("MSG_SIZE_TOO_LARGE")
        assert entry["kafka_topic"] == names.reply_topic
        assert entry["qos"] == 1 and entry["attempts"] == 1
        assert entry["time_ms"] >= entry["received_ms"] > 0
    values = metrics(gateway)
    assert values[REJECTED_TOO_LARGE] == 2
    assert values["ferry_bridge_acked_total"] == 200
    assert "dead-letter file" in gateway.log_text()

    # They left the spool: a restart produces nothing again, from the spool or from the file.
    assert gateway.stop() == 0
    gateway.start()
    assert metrics(gateway)["ferry_bridge_spool_messages"] == 0
    assert wait_until(lambda: metrics(gateway)["ferry_bridge_kafka_connected"] == 1, 15)
    assert consume(kafka.bootstrap_servers, [names.reply_topic], lambda r: False, timeout_s=3.0) == []
    values = metrics(gateway)
    assert values["ferry_bridge_produced_total"] == 0
    assert values[REJECTED_TOO_LARGE] == 0
    assert len(rejected_lines(gateway)) == 2


def test_a_full_librdkafka_queue_holds_records_back_and_strands_none(uplink: Uplink, tmp_path: Path,
                                                                      gateways: list) -> None:
    names = naming()
    create_topics(uplink.bootstrap, names)
    config = bridge_toml(names, uplink.bootstrap, '[bridge.librdkafka]\n"queue.buffering.max.messages" = 10\n')
    gateway = GatewayProcess(tmp_path / "gw", config_text=config, metrics_port=free_port())
    gateways.append(gateway.start())
    assert wait_until(lambda: metrics(gateway)["ferry_bridge_kafka_connected"] == 1, 15)
    uplink.down()
    assert wait_until(lambda: metrics(gateway)["ferry_bridge_kafka_connected"] == 0, 15)

    device = TestClient(gateway.port, "dev-a")
    try:
        # QoS 0 status messages fill librdkafka's queue (10); every QoS 1 reading after them
        # gets BufferError and must wait for room, not be stranded.
        for n in range(10):
            device.client.publish("ferry/s/dev-a/status", b'{"n":%d}' % n, 0)
        publish_all(device, [("ferry/s/dev-a/telemetry", reading("dev-a", seq)) for seq in range(50)])
        assert wait_until(lambda: metrics(gateway)["ferry_bridge_producer_waiting"] == 50, 10)
        assert metrics(gateway)["ferry_bridge_spool_messages"] == 50
        assert "librdkafka's queue is full" in gateway.log_text()

        uplink.up()
        assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, TIMEOUT_S)
        publish_all(device, [("ferry/s/dev-a/telemetry", reading("dev-a", seq)) for seq in range(50, 60)])
    finally:
        device.client.disconnect()
    records = consume(uplink.bootstrap, [names.telemetry_topic], lambda r: len(r) >= 60, linger_s=1.0)
    assert_all_arrived_in_order(records, {"dev-a": 60})
    status = consume(uplink.bootstrap, [names.status_topic], lambda r: len(r) >= 10)
    assert sorted(r.value() for r in status) == sorted(b'{"n":%d}' % n for n in range(10))
    values = metrics(gateway)
    assert values["ferry_bridge_producer_waiting"] == 0
    assert values["ferry_bridge_produce_errors_total"] == 0


def test_qos0_messages_beyond_the_bound_are_dropped_and_counted(uplink: Uplink, tmp_path: Path,
                                                                 gateways: list) -> None:
    names = naming()
    create_topics(uplink.bootstrap, names)
    uplink.down()  # nothing leaves librdkafka: QoS 0 records pile up in the gateway's memory
    # One device floods 10,300 QoS 0 messages: above the default broker.max_publish_rate.
    gateway = GatewayProcess(tmp_path / "gw", config_text=bridge_toml(names, uplink.bootstrap)
                             + "\n[broker]\nmax_publish_rate = 0\n", metrics_port=free_port())
    gateways.append(gateway.start())
    flood = 10_300  # the default bridge.qos0_max_pending is 10,000
    device = TestClient(gateway.port, "dev-a")
    try:
        for seq in range(flood):
            device.client.publish("ferry/s/dev-a/telemetry", reading("dev-a", seq), 0)
        publish_all(device, [("ferry/s/dev-b/telemetry", reading("dev-b", 0))])  # QoS 1 still spools
    finally:
        device.client.disconnect()
    assert wait_until(lambda: metrics(gateway).get("ferry_bridge_qos0_dropped_total") == flood - 10_000, 15)
    assert metrics(gateway)["ferry_bridge_qos0_pending"] == 10_000
    assert "QoS 0" in gateway.log_text()

    uplink.up()
    assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, TIMEOUT_S)
    records = consume(uplink.bootstrap, [names.telemetry_topic], lambda r: len(r) >= 10_001, linger_s=2.0)
    # The newest were dropped: what was already pending is what reaches Kafka.
    assert_all_arrived_in_order(records, {"dev-a": 10_000, "dev-b": 1})
    assert len(records) == 10_001
    assert wait_until(lambda: metrics(gateway)["ferry_bridge_qos0_pending"] == 0, 10)
