"""The Kafka bridge end to end: real gateway processes, real paho devices, real Tansu, a real link.

Each test makes its own topics; the outage tests run their own Tansu behind a
link simulator (Tansu advertises the link's port, so every connection the
bridge makes goes through it) and cut the link with the "outage" profile.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message
from confluent_kafka.admin import AdminClient, NewTopic

from ferry.contract import BridgeNaming, kafka_record, parse_reading
from ferry.local_kafka import LocalKafka
from ferry.process import free_port, wait_until
from ferry.gateway.process import GatewayProcess
from ferry.hwsim.link import LinkConfig, LinkProcess, resolve_profile
from tests.gateway.paho_client import TestClient

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------- helpers

def naming(gateway_id: str = "gw-test") -> BridgeNaming:
    tag = uuid.uuid4().hex[:8]
    return BridgeNaming(gateway_id, f"telemetry-{tag}", f"status-{tag}", f"reply-{tag}", f"deadletter-{tag}")


def topics_of(names: BridgeNaming) -> list[str]:
    return [names.telemetry_topic, names.status_topic, names.reply_topic, names.deadletter_topic]


def create_topics(bootstrap: str, names: BridgeNaming, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, partitions, 1) for t in topics_of(names)]).values():
        future.result(30)


def bridge_toml(names: BridgeNaming, kafka: str | None, extra: str = "") -> str:
    text = "[bridge]\n"
    if kafka is not None:
        text += f'kafka = "{kafka}"\n'
    text += (f'gateway_id = "{names.gateway_id}"\ntelemetry_topic = "{names.telemetry_topic}"\n'
             f'status_topic = "{names.status_topic}"\nreply_topic = "{names.reply_topic}"\n'
             f'deadletter_topic = "{names.deadletter_topic}"\n')
    return text + extra


def reading(dev: str, seq: int, *, boot: int = 1, sync: bool = True) -> bytes:
    ts = 1_732_480_000_000 + seq if sync else 5_000 + seq
    return (b'{"v":1,"dev":"%s","boot":%d,"seq":%d,"ts":%d,"sync":%s,"m":{"temp_c":21.5}}'
            % (dev.encode(), boot, seq, ts, b"true" if sync else b"false"))


def consume(bootstrap: str, topics: list[str], done: Callable[[list[Message]], bool],
            timeout_s: float = TIMEOUT_S, linger_s: float = 0.0) -> list[Message]:
    """Read from the start until `done(records)`, then `linger_s` more (to catch duplicates)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                         "enable.auto.commit": False})
    consumer.subscribe(topics)
    records: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(records):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                records.append(message)
        linger_until = time.monotonic() + linger_s
        while time.monotonic() < linger_until:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                records.append(message)
    finally:
        consumer.close()
    return records


def metrics(gateway: GatewayProcess) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def publish_all(client: TestClient, items: list[tuple[str, bytes]]) -> None:
    """QoS 1, pipelined (paho keeps order), every one PUBACKed by the gateway."""
    infos = [client.client.publish(topic, payload, 1) for topic, payload in items]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()


def readings_by_device(records: list[Message]) -> dict[str, list[int]]:
    """Per device, the seq of every telemetry record in Kafka order (duplicates included)."""
    seen: dict[str, list[int]] = {}
    for record in records:
        r = parse_reading(record.value())
        seen.setdefault(r.device, []).append(r.seq)
    return seen


def assert_all_arrived_in_order(records: list[Message], expected: dict[str, int]) -> int:
    """Every device's seqs 0..n-1 are there, first seen in order; returns the duplicates."""
    duplicates = 0
    for dev, seqs in readings_by_device(records).items():
        first_seen = list(dict.fromkeys(seqs))
        assert first_seen == list(range(expected[dev])), f"{dev}: lost or out of order"
        duplicates += len(seqs) - len(first_seen)
    assert set(readings_by_device(records)) == set(expected)
    return duplicates


class KafkaGateway(GatewayProcess):
    """A gateway started with `--kafka` (the CLI shortcut) on top of its config file."""

    def __init__(self, data_dir: Path, kafka: str, **kwargs) -> None:
        super().__init__(data_dir, **kwargs)
        self.kafka = kafka

    def argv(self) -> list[str]:
        return super().argv() + ["--kafka", self.kafka]


@dataclass
class Uplink:
    kafka: LocalKafka
    link: LinkProcess
    bootstrap: str
    """Through the link: what the bridge and the checks use."""

    def down(self) -> None:
        self.link.set_profile("outage", "uplink")

    def up(self) -> None:
        self.link.set_profile("perfect", "uplink")


@pytest.fixture
def uplink(tmp_path: Path) -> Iterator[Uplink]:
    """A Tansu of this test's own behind a link simulator; both stopped at the end."""
    link_port = free_port()
    with ExitStack() as stack:
        kafka = stack.enter_context(LocalKafka(tmp_path, advertised_port=link_port))
        link = stack.enter_context(LinkProcess(
            [LinkConfig("127.0.0.1", kafka.port, name="uplink", listen_port=link_port,
                        profile=resolve_profile("perfect"))], tmp_path))
        yield Uplink(kafka, link, f"127.0.0.1:{link_port}")


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    """Gateways a test starts; every one is stopped at the end."""
    started: list[GatewayProcess] = []
    yield started
    for gateway in started:
        gateway.stop()


# ---------------------------------------------------------------------------- tests

def test_device_messages_arrive_byte_for_byte_as_the_contract_maps_them(kafka: LocalKafka, tmp_path: Path,
                                                                         gateways: list) -> None:
    names = naming()
    create_topics(kafka.bootstrap_servers, names)
    gateway = GatewayProcess(tmp_path / "gw", config_text=bridge_toml(names, kafka.bootstrap_servers),
                             metrics_port=free_port())
    gateways.append(gateway.start())
    sent = [
        ("ferry/site-1/dev-a/telemetry", reading("dev-a", 0)),
        ("ferry/site-1/dev-a/telemetry", reading("dev-a", 1, sync=False)),  # gateway time as timestamp
        ("ferry/site-1/dev-a/status", b'{"v":1,"dev":"dev-a","state":"online","boot":1}'),
        ("ferry/site-1/dev-a/reply", b'{"v":1,"id":"c-1","ok":true,"result":{}}'),
        ("ferry/site-2/dev-b/telemetry", reading("dev-b", 0)),
        ("ferry/site-2/dev-b/telemetry", reading("someone-else", 1)),  # dev differs: dead letter
        ("ferry/site-2/dev-b/telemetry", b"\xff not json"),  # dead letter
        ("ferry/off/contract", b"x"),  # outside the scheme: dead letter, empty key
        ("ferry/site-2/dev-c/telemetry", b""),  # empty payload: dead letter
    ]
    before_ms = int(time.time() * 1000)
    device = TestClient(gateway.port, "dev-a")
    try:
        publish_all(device, sent + [("elsewhere/topic", b"not bridged"),
                                    ("ferry/site-2/dev-b/cmd", b'{"v":1,"id":"c-2","op":"set","args":{}}'),
                                    ("ferry/site-2/dev-b/ota", b"\x01release chunk")])  # to devices: never
    finally:
        device.client.disconnect()
    after_ms = int(time.time() * 1000)

    records = consume(kafka.bootstrap_servers, topics_of(names), lambda r: len(r) >= len(sent), linger_s=1.0)
    assert len(records) == len(sent)
    partitions: dict[bytes, set[int]] = {}
    for record in records:
        headers = record.headers()
        mqtt_topic = dict(headers)["ferry-mqtt-topic"].decode()
        received_ms = int(dict(headers)["ferry-received-ms"])
        assert before_ms <= received_ms <= after_ms
        expected = kafka_record(names, mqtt_topic, record.value(), received_ms)
        assert record.topic() == expected.topic
        assert (record.key() or b"") == expected.key
        assert record.value() == expected.value
        assert tuple(headers) == expected.headers
        assert record.timestamp()[1] == expected.timestamp_ms
        partitions.setdefault(record.key(), set()).add(record.partition())
    assert sorted((dict(r.headers())["ferry-mqtt-topic"].decode(), r.value()) for r in records) == sorted(sent)
    assert Counter(r.topic() for r in records) == {names.telemetry_topic: 3, names.status_topic: 1,
                                                   names.reply_topic: 1, names.deadletter_topic: 4}
    assert all(len(p) == 1 for p in partitions.values())  # one device, one partition

    assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, 10)
    values = metrics(gateway)
    assert values["ferry_bridge_acked_total"] == len(sent)
    assert values["ferry_bridge_deadlettered_total"] == 4
    # QoS 1 commands go to devices only: the broker never spools them for the bridge.
    assert values["ferry_bridge_commands_skipped_total"] == 0
    assert values["ferry_bridge_produce_errors_total"] == 0
    assert wait_until(lambda: metrics(gateway)["ferry_bridge_kafka_connected"] == 1, 10)
    assert gateway.stop() == 0


def test_an_outage_spools_and_drains_in_order_per_device(uplink: Uplink, tmp_path: Path, gateways: list) -> None:
    names = naming()
    create_topics(uplink.bootstrap, names)
    gateway = KafkaGateway(tmp_path / "gw", uplink.bootstrap, config_text=bridge_toml(names, None),
                           metrics_port=free_port())
    gateways.append(gateway.start())
    devices = {f"dev-{i}": TestClient(gateway.port, f"dev-{i}") for i in range(3)}
    try:
        for dev, client in devices.items():
            publish_all(client, [(f"ferry/s/{dev}/telemetry", reading(dev, seq)) for seq in range(20)])
        assert wait_until(lambda: metrics(gateway)["ferry_bridge_acked_total"] == 60, 30)

        uplink.down()
        for dev, client in devices.items():  # the gateway still takes everything
            publish_all(client, [(f"ferry/s/{dev}/telemetry", reading(dev, seq)) for seq in range(20, 120)])
        assert wait_until(lambda: metrics(gateway)["ferry_bridge_kafka_connected"] == 0, TIMEOUT_S)
        assert wait_until(lambda: "unreachable" in gateway.log_text(), TIMEOUT_S)
        values = metrics(gateway)
        assert values["ferry_bridge_spool_messages"] == 300
        assert values["ferry_bridge_acked_total"] == 60

        uplink.up()
        assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, TIMEOUT_S)
        assert metrics(gateway)["ferry_bridge_kafka_connected"] == 1
    finally:
        for client in devices.values():
            client.client.disconnect()
    records = consume(uplink.bootstrap, [names.telemetry_topic], lambda r: len(r) >= 360, linger_s=1.0)
    assert_all_arrived_in_order(records, {dev: 120 for dev in devices})
    assert "reachable; spool holds" in gateway.log_text()


def test_kafka_down_at_start_and_a_sigkill_during_the_outage_lose_nothing(uplink: Uplink, tmp_path: Path,
                                                                           gateways: list) -> None:
    names = naming()
    create_topics(uplink.bootstrap, names)
    uplink.down()
    gateway = GatewayProcess(tmp_path / "gw", config_text=bridge_toml(names, uplink.bootstrap),
                             metrics_port=free_port())
    gateways.append(gateway.start())  # starts although Kafka cannot be reached
    devs = ["dev-a", "dev-b"]
    for dev in devs:
        client = TestClient(gateway.port, dev)
        publish_all(client, [(f"ferry/s/{dev}/telemetry", reading(dev, seq)) for seq in range(150)])
        client.client.disconnect()
    assert metrics(gateway)["ferry_bridge_spool_messages"] == 300

    gateway.kill()  # a power cut during the outage
    gateway.start()
    assert metrics(gateway)["ferry_bridge_spool_messages"] == 300  # the spool survived
    for dev in devs:
        client = TestClient(gateway.port, dev)
        publish_all(client, [(f"ferry/s/{dev}/telemetry", reading(dev, seq)) for seq in range(150, 200)])
        client.client.disconnect()
    assert metrics(gateway)["ferry_bridge_spool_messages"] == 400

    uplink.up()
    assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, TIMEOUT_S)
    records = consume(uplink.bootstrap, [names.telemetry_topic], lambda r: len(r) >= 400, linger_s=2.0)
    duplicates = assert_all_arrived_in_order(records, {dev: 200 for dev in devs})
    print(f"400 readings, {duplicates} duplicates")  # allowed: none lost is the promise


def test_a_full_spool_refuses_devices_which_keep_their_messages(uplink: Uplink, tmp_path: Path,
                                                                 gateways: list) -> None:
    names = naming()
    create_topics(uplink.bootstrap, names)
    uplink.down()
    config = bridge_toml(names, uplink.bootstrap, "spool_max_messages = 20\ninflight = 5\n")
    gateway = GatewayProcess(tmp_path / "gw", config_text=config, metrics_port=free_port())
    gateways.append(gateway.start())
    device = TestClient(gateway.port, "dev-a")
    publish_all(device, [("ferry/s/dev-a/telemetry", reading("dev-a", seq)) for seq in range(20)])
    # The limit counts every message Kafka has not acknowledged: 5 with the producer, 15 waiting.
    assert metrics(gateway)["ferry_bridge_spool_messages"] == 20

    refused = device.client.publish("ferry/s/dev-a/telemetry", reading("dev-a", 20), 1)
    device.disconnects.get(timeout=10)  # the gateway closes the connection instead of acknowledging
    device.client.loop_stop()
    assert not refused.is_published()
    assert metrics(gateway)["ferry_bridge_spool_refused_total"] == 1
    assert metrics(gateway)["ferry_dropped_messages_total{reason=\"queue_full\"}"] == 0
    assert "is full" in gateway.log_text()

    # An operator can still reach devices: commands are not refused for the full spool.
    with TestClient(gateway.port, "dev-b", clean=False) as target:
        target.subscribe("ferry/s/dev-b/cmd", 1)
        with TestClient(gateway.port, "operator") as operator:
            operator.publish("ferry/s/dev-b/cmd", b'{"op":"sample_s","value":600}', 1)  # asserts the PUBACK
        assert [m.payload for m in target.expect(1)] == [b'{"op":"sample_s","value":600}']
    assert metrics(gateway)["ferry_bridge_spool_refused_total"] == 1

    uplink.up()
    assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, TIMEOUT_S)
    again = TestClient(gateway.port, "dev-a")  # the device's outbox sends it again
    publish_all(again, [("ferry/s/dev-a/telemetry", reading("dev-a", 20))])
    again.client.disconnect()
    records = consume(uplink.bootstrap, [names.telemetry_topic], lambda r: len(r) >= 21, linger_s=1.0)
    assert assert_all_arrived_in_order(records, {"dev-a": 21}) == 0


@pytest.mark.parametrize(("toml", "message"), [
    ('[bridge]\nkafka = "127.0.0.1:9"\ninflight = 0\n', "bridge.inflight: must be 1..65535"),
    ('[bridge]\ngateway_id = "g"\n', "bridge.kafka: required"),
    ('[bridge]\nkafka = "127.0.0.1:9"\n[bridge.librdkafka]\n"no.such.setting" = 1\n',
     "bridge.librdkafka: No such configuration property"),
])
def test_a_bad_bridge_config_stops_the_gateway_with_status_2(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "ferry.toml"
    config.write_text(toml)
    result = subprocess.run([sys.executable, "-m", "ferry", "gateway", "--listen", "127.0.0.1:0",
                             "--data-dir", str(tmp_path / "data"), "--config", str(config), "--allow-anonymous"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
