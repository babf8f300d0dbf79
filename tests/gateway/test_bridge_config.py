"""`[bridge]` in ferry.toml and the producer settings made of it: pure, no Kafka."""

from __future__ import annotations

import json
import socket

import pytest

from ferry.contract import KAFKA_PARTITIONER, BridgeNaming
from ferry.gateway.bridge.config import BridgeConfig
from ferry.gateway.bridge.producer import brokers_up, producer_settings
from ferry.gateway.config import ConfigError, GatewayConfig, parse_config


def test_without_a_bridge_table_the_bridge_is_off() -> None:
    assert not parse_config("").bridge.enabled
    assert GatewayConfig().bridge == BridgeConfig()


def test_defaults_follow_the_contract_and_the_host_name() -> None:
    bridge = parse_config('[bridge]\nkafka = "127.0.0.1:9092"\n').bridge
    assert bridge.enabled
    assert bridge.naming() == BridgeNaming(socket.gethostname())
    assert (bridge.spool_max_messages, bridge.spool_max_bytes, bridge.inflight) == (10_000_000, 2 << 30, 5000)
    assert (bridge.qos0_max_pending, bridge.qos0_max_pending_bytes) == (10_000, 16 << 20)
    assert (bridge.rejected_after_attempts, bridge.rejected_max_file_bytes, bridge.rejected_max_files) == (
        10, 16 << 20, 8)


def test_every_key_is_read() -> None:
    bridge = parse_config("""
[bridge]
kafka = "k1:9092,k2:9093"
gateway_id = "pi-7"
telemetry_topic = "t"
status_topic = "s"
reply_topic = "r"
deadletter_topic = "d"
spool_max_messages = 5
spool_max_bytes = 6
inflight = 7
qos0_max_pending = 0
qos0_max_pending_bytes = 8
rejected_after_attempts = 9
rejected_max_file_bytes = 10
rejected_max_files = 11
[bridge.librdkafka]
"linger.ms" = 20
"security.protocol" = "SASL_SSL"
"enable.ssl.certificate.verification" = true
""").bridge
    assert bridge.naming() == BridgeNaming("pi-7", "t", "s", "r", "d")
    assert (bridge.spool_max_messages, bridge.spool_max_bytes, bridge.inflight) == (5, 6, 7)
    assert (bridge.qos0_max_pending, bridge.qos0_max_pending_bytes) == (0, 8)
    assert (bridge.rejected_after_attempts, bridge.rejected_max_file_bytes, bridge.rejected_max_files) == (9, 10, 11)
    assert bridge.librdkafka == {"linger.ms": 20, "security.protocol": "SASL_SSL",
                                 "enable.ssl.certificate.verification": True}


def test_the_cli_shortcut_sets_kafka_and_keeps_the_rest_of_the_file() -> None:
    assert parse_config("", kafka="127.0.0.1:1").bridge.kafka == "127.0.0.1:1"
    bridge = parse_config('[bridge]\ngateway_id = "g"\n', kafka="h:2").bridge
    assert (bridge.kafka, bridge.gateway_id) == ("h:2", "g")


@pytest.mark.parametrize(("text", "message"), [
    ('[bridge]\ngateway_id = "g"', "bridge.kafka: required"),
    ("[bridge]\nkafka = 9092", "bridge.kafka: expected a string"),
    ('[bridge]\nkafka = "localhost"', "bridge.kafka: 'localhost' is not host:port"),
    ('[bridge]\nkafka = "h:1,h:99999"', "bridge.kafka: 'h:99999' is not host:port"),
    ('[bridge]\nkafka = "h:1"\ngateway_id = ""', "bridge.gateway_id: must not be empty"),
    ('[bridge]\nkafka = "h:1"\ntelemetry_topic = "a/b"', "bridge.telemetry_topic:"),
    ('[bridge]\nkafka = "h:1"\ndeadletter_topic = ""', "bridge.deadletter_topic:"),
    ('[bridge]\nkafka = "h:1"\nspool_max_messages = 0', "bridge.spool_max_messages: must be at least 1"),
    ('[bridge]\nkafka = "h:1"\nspool_max_bytes = -1', "bridge.spool_max_bytes: must not be negative"),
    ('[bridge]\nkafka = "h:1"\ninflight = 65536', "bridge.inflight: must be 1..65535"),
    ('[bridge]\nkafka = "h:1"\nqos0_max_pending = -1', "bridge.qos0_max_pending: must not be negative"),
    ('[bridge]\nkafka = "h:1"\nrejected_after_attempts = 0', "bridge.rejected_after_attempts: must be at least 1"),
    ('[bridge]\nkafka = "h:1"\nrejected_max_file_bytes = 0', "bridge.rejected_max_file_bytes: must be at least 1"),
    ('[bridge]\nkafka = "h:1"\nrejected_max_files = 0', "bridge.rejected_max_files: must be at least 1"),
    ('[bridge]\nkafka = "h:1"\nspool = 3', "bridge.spool: unknown key"),
    ('[bridge]\nkafka = "h:1"\nlibrdkafka = 3', "bridge.librdkafka: expected a table"),
    ('[bridge]\nkafka = "h:1"\n[bridge.librdkafka]\nx = [1]', "bridge.librdkafka.x: expected a string, number"),
    ('[bridge]\nkafka = "h:1"\n[bridge.librdkafka]\nacks = "1"', "bridge.librdkafka.acks: set by the bridge"),
    ('[bridge]\nkafka = "h:1"\n[bridge.librdkafka]\n"enable.idempotence" = false',
     "bridge.librdkafka.enable.idempotence: set by the bridge"),
    ('[bridge]\nkafka = "h:1"\n[bridge.librdkafka]\nerror_cb = "x"', "bridge.librdkafka.error_cb: callbacks"),
])
def test_bad_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        parse_config(text)


def test_producer_settings_keep_the_guarantees_whatever_the_table_says() -> None:
    bridge = parse_config('[bridge]\nkafka = "h:1"\n[bridge.librdkafka]\n"linger.ms" = 50\n'
                          '"message.timeout.ms" = 600000\n').bridge
    settings = producer_settings(bridge)
    assert settings["bootstrap.servers"] == "h:1"
    assert settings["enable.idempotence"] is True
    assert settings["acks"] == "all"
    assert settings["partitioner"] == KAFKA_PARTITIONER
    assert settings["linger.ms"] == 50
    assert settings["message.timeout.ms"] == 600000  # a default the table may change
    assert producer_settings(parse_config('[bridge]\nkafka = "h:1"').bridge)["message.timeout.ms"] == 0


def test_kafka_connected_is_read_from_librdkafka_statistics() -> None:
    up = {"brokers": {"h:1/bootstrap": {"state": "INIT"}, "h:1/1": {"state": "UP"}}}
    down = {"brokers": {"h:1/bootstrap": {"state": "CONNECT"}, "h:1/1": {"state": "DOWN"}}}
    assert brokers_up(json.dumps(up)) is True
    assert brokers_up(json.dumps(down)) is False
    assert brokers_up("not json") is None
