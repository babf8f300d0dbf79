"""The bridge's acknowledgement rule inside one gateway, with Kafka replaced by a fake producer.

A real Gateway (broker core, journal, network layer, bridge) on the event loop;
the device speaks MQTT over a socket; the test decides when and how "Kafka"
answers each record.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from ferry import contract
from ferry.contract import BridgeNaming, kafka_record
from ferry.gateway.bridge import bridge as bridge_module
from ferry.gateway.bridge.bridge import CLIENT_ID
from ferry.gateway.config import parse_config
from ferry.gateway.main import Gateway, plain_service
from ferry.gateway.mqtt import Connack, Connect, Decoder, ProtocolVersion, Puback, Publish, encode

V311 = ProtocolVersion.V311
READING = b'{"v":1,"dev":"dev1","boot":1,"seq":0,"ts":1732480000123,"sync":true,"m":{"t_c":1}}'


class FakeKafka:
    """Stands in for `KafkaSide`: keeps what was produced; the test delivers."""

    def __init__(self, config, loop, on_delivered, on_fatal) -> None:
        self.on_delivered = on_delivered
        self.produced: list[tuple[int, object]] = []
        self.connected = True

    def start(self) -> None:
        pass

    def produce(self, record, token: int) -> None:
        self.produced.append((token, record))

    def deliver(self, index: int, error: KafkaError | None = None) -> None:
        self.on_delivered([(self.produced[index][0], error)])

    async def stop(self, flush_s: float) -> int:
        return 0


async def until(predicate, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def scenario(tmp_path: Path) -> None:
    config = parse_config('[bridge]\nkafka = "127.0.0.1:9"\ngateway_id = "gw"\n', allow_anonymous=True)
    gateway = Gateway(config, tmp_path)
    [(host, port)] = await gateway.start(plain_service(("127.0.0.1", 0), tmp_path))
    try:
        bridge = gateway.bridge
        kafka: FakeKafka = bridge.kafka
        session = gateway.server.broker.sessions[CLIENT_ID]
        reader, writer = await asyncio.open_connection(host, port)
        decoder = Decoder(server_side=False, protocol_version=V311)
        writer.write(encode(Connect("dev1", V311, True, 60), V311))
        writer.write(encode(Publish("ferry/s/dev1/telemetry", READING, 1, packet_id=1), V311))
        got: list[object] = []
        while len(got) < 2:
            got += decoder.feed(await asyncio.wait_for(reader.read(4096), 5))
        assert got == [Connack(False, 0), Puback(1)]  # the device's PUBACK: the message is in the spool

        await until(lambda: len(kafka.produced) == 1)
        record = kafka.produced[0][1]
        received_ms = int(dict(record.headers)["ferry-received-ms"])
        assert record == kafka_record(bridge.naming, "ferry/s/dev1/telemetry", READING, received_ms)
        assert bridge.spool_depth() == 1

        kafka.deliver(0, KafkaError(KafkaError._MSG_TIMED_OUT))  # Kafka did not take it
        assert bridge.stats.produce_errors == 1
        assert bridge.spool_depth() == 1  # not acknowledged to the spool: still there
        await until(lambda: len(kafka.produced) == 2, timeout_s=3)  # produced again after the back-off
        assert kafka.produced[1][1] == record

        kafka.deliver(1)  # acknowledged
        await until(lambda: bridge.spool_depth() == 0)
        assert (bridge.stats.acked, bridge.stats.deadlettered) == (1, 0)

        # The core closes the bridge's connection (here: as a keepalive timeout would): it reconnects
        # and the spool hands out what was unacknowledged again, which is produced again.
        writer.write(encode(Publish("ferry/s/dev1/status", b"{}", 1, packet_id=2), V311))
        await until(lambda: len(kafka.produced) == 3)
        gateway.server.transports[bridge._conn.conn_id].close()
        await until(lambda: len(kafka.produced) == 4, timeout_s=5)
        assert kafka.produced[3][1].value == b"{}"
        kafka.deliver(2)  # a report from before the reconnect is ignored: the resend is what counts
        assert bridge.spool_depth() == 1
        kafka.deliver(3)
        await until(lambda: bridge.spool_depth() == 0)
        assert not session.inflight and not session.queue  # the core kept nothing of it in memory
        writer.close()
    finally:
        await gateway.stop()


def test_the_spool_lets_go_of_a_message_only_when_kafka_acknowledged_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_module, "KafkaSide", FakeKafka)
    asyncio.run(scenario(tmp_path))


async def checked_once(tmp_path: Path, checks: list[bytes]) -> None:
    config = parse_config('[bridge]\nkafka = "127.0.0.1:9"\ngateway_id = "gw"\n', allow_anonymous=True)
    messages = [("ferry/s/dev1/telemetry", READING), ("ferry/s/dev1/telemetry", READING.replace(b'"seq":0', b'"seq":1')),
                ("ferry/s/dev1/telemetry", READING.replace(b'"dev1"', b'"dev2"')),  # breaks the contract
                ("ferry/s/dev1/status", b"{}")]
    produced: list[list[object]] = []
    for start in range(2):  # the second start reads the spool back from its file
        gateway = Gateway(config, tmp_path)
        [(host, port)] = await gateway.start(plain_service(("127.0.0.1", 0), tmp_path))
        try:
            kafka: FakeKafka = gateway.bridge.kafka
            if start == 0:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(encode(Connect("dev1", V311, True, 60), V311))
                for packet_id, (topic, payload) in enumerate(messages, 1):
                    writer.write(encode(Publish(topic, payload, 1, packet_id=packet_id), V311))
                await until(lambda: len(kafka.produced) == len(messages))
                writer.close()
            else:
                await until(lambda: len(kafka.produced) == len(messages))  # nothing was acknowledged
            produced.append([record for _, record in kafka.produced])
        finally:
            await gateway.stop()
    # Each reading was decoded once, when it reached the spool; only the contract breaker again
    # when its record was made (for the reason in its header), at each start.
    assert checks == [READING, messages[1][1], messages[2][1], messages[2][1], messages[2][1]]
    naming = BridgeNaming("gw")
    for records in produced:
        assert [(r.topic, r.value) for r in records] == [
            ("ferry.telemetry", READING), ("ferry.telemetry", messages[1][1]), ("ferry.deadletter", messages[2][1]),
            ("ferry.status", b"{}")]
        for (topic, payload), record in zip(messages, records):
            received_ms = int(dict(record.headers)["ferry-received-ms"])
            assert record == kafka_record(naming, topic, payload, received_ms)


def test_a_spooled_reading_is_checked_when_it_arrives_not_again_when_it_is_produced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract check's verdict is kept with the spool entry, on disk too: a backlog drains
    without every payload decoded again (it was a third of the bridge's time in a drain)."""
    monkeypatch.setattr(bridge_module, "KafkaSide", FakeKafka)
    checks: list[bytes] = []
    checked_reading = contract._checked_reading

    def counted(payload: bytes) -> dict:
        checks.append(payload)
        return checked_reading(payload)

    monkeypatch.setattr(contract, "_checked_reading", counted)
    asyncio.run(checked_once(tmp_path, checks))
