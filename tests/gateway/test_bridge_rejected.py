"""The dead-letter file and which refusals lead to it: the classification and the file alone, then
inside one real Gateway with Kafka replaced by a fake producer (as in `test_bridge_flow.py`)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from ferry.gateway.bridge import bridge as bridge_module
from ferry.gateway.bridge.bridge import CLIENT_ID
from ferry.gateway.bridge.rejected import (
    RejectedFile, RejectedRecord, RejectReason, read_rejected, rejection,
)
from ferry.gateway.config import parse_config
from ferry.gateway.main import Gateway, plain_service
from ferry.gateway.mqtt import Connack, Connect, Decoder, ProtocolVersion, Puback, Publish, encode
from tests.gateway.test_bridge_flow import READING, FakeKafka, until

V311 = ProtocolVersion.V311


# ---------------------------------------------------------------------------- which refusals are for good

@pytest.mark.parametrize(("code", "reason"), [
    (KafkaError.MSG_SIZE_TOO_LARGE, RejectReason.TOO_LARGE),
    (KafkaError.RECORD_LIST_TOO_LARGE, RejectReason.TOO_LARGE),
    (KafkaError.INVALID_MSG, RejectReason.INVALID),
    (KafkaError.INVALID_RECORD, RejectReason.INVALID),
    (KafkaError.INVALID_TIMESTAMP, RejectReason.INVALID),
])
def test_a_record_no_retry_can_cure_is_rejected_at_the_first_refusal(code: int, reason: RejectReason) -> None:
    assert rejection(KafkaError(code), 1, 10) is reason


@pytest.mark.parametrize(("code", "reason"), [
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, RejectReason.NOT_AUTHORIZED),
    (KafkaError._UNKNOWN_TOPIC, RejectReason.UNKNOWN_TOPIC),
    (KafkaError.UNKNOWN_TOPIC_OR_PART, RejectReason.UNKNOWN_TOPIC),
    (KafkaError.POLICY_VIOLATION, RejectReason.REFUSED),
])
def test_what_an_operator_can_fix_is_rejected_after_the_configured_attempts(code: int,
                                                                            reason: RejectReason) -> None:
    assert rejection(KafkaError(code), 9, 10) is None
    assert rejection(KafkaError(code), 10, 10) is reason


@pytest.mark.parametrize("code", [KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError.NOT_ENOUGH_REPLICAS,
                                  KafkaError.REQUEST_TIMED_OUT, KafkaError._FATAL, KafkaError._PURGE_QUEUE])
def test_an_unreachable_kafka_only_delays_records(code: int) -> None:
    assert rejection(KafkaError(code), 1_000_000, 10) is None


# ---------------------------------------------------------------------------- the file

def entry(n: int, payload: bytes = b"x" * 100) -> RejectedRecord:
    return RejectedRecord(1_700_000_000_000 + n, "ferry/s/d/reply", payload, 1, 1_700_000_000_000,
                          RejectReason.TOO_LARGE, "MSG_SIZE_TOO_LARGE: Broker: Message size too large",
                          "ferry.reply", 1)


async def write_all(file: RejectedFile, records: list[RejectedRecord]) -> list[OSError | None]:
    results: list[OSError | None] = []
    for record in records:
        file.append(record, results.append)
    await file.close()
    return results


def test_entries_are_json_lines_rotated_and_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        directory = tmp_path / "rejected"
        line_bytes = len(entry(0).to_line())
        file = RejectedFile(directory, max_file_bytes=3 * line_bytes, max_files=2, loop=asyncio.get_running_loop())
        assert await write_all(file, [entry(n) for n in range(10)]) == [None] * 10
        names = sorted(p.name for p in directory.iterdir())
        assert names == ["rejected-00000003.jsonl", "rejected-00000004.jsonl"]  # 3 + 3 + 3 + 1, two kept
        assert file.discarded == 6
        assert [e.time_ms - 1_700_000_000_000 for e in read_rejected(directory)] == [6, 7, 8, 9]
        line = json.loads((directory / names[0]).read_bytes().splitlines()[0])
        assert line == {"time_ms": 1_700_000_000_006, "mqtt_topic": "ferry/s/d/reply", "qos": 1,
                        "received_ms": 1_700_000_000_000, "reason": "too_large",
                        "error": "MSG_SIZE_TOO_LARGE: Broker: Message size too large", "kafka_topic": "ferry.reply",
                        "attempts": 1, "payload_base64": base64.b64encode(b"x" * 100).decode()}

        # A larger entry than a whole file gets a file of its own.
        file = RejectedFile(directory, max_file_bytes=3 * line_bytes, max_files=2, loop=asyncio.get_running_loop())
        assert await write_all(file, [entry(10, b"y" * 1000)]) == [None]
        assert sorted(p.name for p in directory.iterdir()) == ["rejected-00000004.jsonl", "rejected-00000005.jsonl"]
        assert read_rejected(directory)[-1].payload == b"y" * 1000

    asyncio.run(main())


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_entry_starts_a_line(tmp_path: Path) -> None:
    async def main() -> None:
        directory = tmp_path / "rejected"
        directory.mkdir()
        (directory / "rejected-00000001.jsonl").write_bytes(entry(1).to_line() + entry(2).to_line()[:40])
        file = RejectedFile(directory, 1 << 20, 8, asyncio.get_running_loop())
        assert await write_all(file, [entry(3)]) == [None]
        assert [e.time_ms - 1_700_000_000_000 for e in read_rejected(directory)] == [1, 3]

    asyncio.run(main())


def test_a_file_that_cannot_be_written_reports_it_to_every_waiter(tmp_path: Path) -> None:
    async def main() -> None:
        blocker = tmp_path / "rejected"
        blocker.write_text("not a folder")
        file = RejectedFile(blocker, 1 << 20, 8, asyncio.get_running_loop())
        results = await write_all(file, [entry(1), entry(2)])
        assert all(isinstance(result, OSError) for result in results) and len(results) == 2

    asyncio.run(main())


# ---------------------------------------------------------------------------- inside a gateway

class Device:
    """One MQTT 3.1.1 device on a real socket to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder(server_side=False, protocol_version=V311)
        self.received: list[object] = []

    @classmethod
    async def connect(cls, port: int, client_id: str = "dev1") -> "Device":
        device = cls(*await asyncio.open_connection("127.0.0.1", port))
        device.writer.write(encode(Connect(client_id, V311, True, 60), V311))
        assert await device.next_packet() == Connack(False, 0)
        return device

    def publish(self, topic: str, payload: bytes, qos: int = 1, packet_id: int | None = None) -> None:
        self.writer.write(encode(Publish(topic, payload, qos, packet_id=packet_id), V311))

    async def next_packet(self, timeout_s: float = 5.0) -> object:
        while not self.received:
            self.received += self.decoder.feed(await asyncio.wait_for(self.reader.read(65536), timeout_s))
        return self.received.pop(0)


async def started(tmp_path: Path, extra: str = "") -> tuple[Gateway, int]:
    """A gateway with its bridge (on a FakeKafka) and its data in `tmp_path`, and its MQTT port."""
    config = parse_config(f'[bridge]\nkafka = "127.0.0.1:9"\ngateway_id = "gw"\n{extra}', allow_anonymous=True)
    gateway = Gateway(config, tmp_path)
    [(_, port)] = await gateway.start(plain_service(("127.0.0.1", 0), tmp_path))
    return gateway, port


def test_refused_for_good_goes_to_the_file_then_is_acknowledged(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_module, "KafkaSide", FakeKafka)
    monkeypatch.setattr(bridge_module, "RETRY_FIRST_S", 0.01)

    async def main() -> None:
        gateway, port = await started(tmp_path, "rejected_after_attempts = 3\n")
        try:
            bridge = gateway.bridge
            kafka: FakeKafka = bridge.kafka

            device = await Device.connect(port)
            device.publish("ferry/s/dev1/telemetry", READING, packet_id=1)
            assert await device.next_packet() == Puback(1)

            # Unknown topic: an operator may still create it, so it is produced again, 3 times in all.
            for attempt in range(3):
                await until(lambda: len(kafka.produced) == attempt + 1)
                assert gateway.bridge.spool_depth() == 1 and not read_rejected(tmp_path / "rejected")
                kafka.deliver(attempt, KafkaError(KafkaError._UNKNOWN_TOPIC))
            await until(lambda: gateway.bridge.spool_depth() == 0)  # PUBACKed once the entry is fsynced
            (rejected,) = read_rejected(tmp_path / "rejected")
            assert (rejected.mqtt_topic, rejected.payload, rejected.reason, rejected.attempts) == (
                "ferry/s/dev1/telemetry", READING, RejectReason.UNKNOWN_TOPIC, 3)
            assert rejected.error.startswith("_UNKNOWN_TOPIC: ")
            assert bridge.stats.rejected[RejectReason.UNKNOWN_TOPIC] == 1
            assert bridge.stats.acked == 0 and len(kafka.produced) == 3

            # An outage never sends a record there, however long it lasts.
            device.publish("ferry/s/dev1/status", b"{}", packet_id=2)
            assert await device.next_packet() == Puback(2)
            for attempt in range(3, 8):
                await until(lambda: len(kafka.produced) == attempt + 1)
                kafka.deliver(attempt, KafkaError(KafkaError._MSG_TIMED_OUT))
            await until(lambda: len(kafka.produced) == 9)
            kafka.deliver(8)
            await until(lambda: gateway.bridge.spool_depth() == 0)
            assert bridge.stats.acked == 1 and len(read_rejected(tmp_path / "rejected")) == 1
        finally:
            await gateway.stop()

    asyncio.run(main())


def test_a_message_no_record_can_be_made_of_goes_to_the_file(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_module, "KafkaSide", FakeKafka)

    def broken(*args):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(bridge_module, "kafka_record", broken)
    monkeypatch.setattr(bridge_module, "checked_telemetry_ts", broken)  # when it reaches the spool too

    async def main() -> None:
        gateway, port = await started(tmp_path)
        try:
            device = await Device.connect(port)
            device.publish("ferry/s/dev1/telemetry", b"[[[[", packet_id=1)
            assert await device.next_packet() == Puback(1)
            await until(lambda: gateway.bridge.spool_depth() == 0)
            (rejected,) = read_rejected(tmp_path / "rejected")
            assert (rejected.reason, rejected.kafka_topic, rejected.attempts) == (RejectReason.NOT_BUILT, None, 0)
            assert rejected.error == "RecursionError: maximum recursion depth exceeded"
            assert gateway.bridge.kafka.produced == []
        finally:
            await gateway.stop()

    asyncio.run(main())


def test_an_unwritable_dead_letter_file_keeps_the_message_in_the_spool(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_module, "KafkaSide", FakeKafka)
    monkeypatch.setattr(bridge_module, "REJECTED_WRITE_RETRY_S", 0.05)
    blocker = tmp_path / "rejected"
    blocker.write_text("a file where the folder should be")

    async def main() -> None:
        gateway, port = await started(tmp_path)
        try:

            kafka: FakeKafka = gateway.bridge.kafka
            device = await Device.connect(port)
            device.publish("ferry/s/dev1/reply", b"too large", packet_id=1)
            assert await device.next_packet() == Puback(1)
            await until(lambda: len(kafka.produced) == 1)
            kafka.deliver(0, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            await asyncio.sleep(0.3)  # several write attempts fail: no PUBACK, still spooled
            assert gateway.bridge.spool_depth() == 1
            assert gateway.bridge.stats.rejected[RejectReason.TOO_LARGE] == 0

            blocker.unlink()  # the operator makes room
            await until(lambda: gateway.bridge.spool_depth() == 0)
            assert [r.payload for r in read_rejected(blocker)] == [b"too large"]
            assert len(kafka.produced) == 1  # written, never produced again
        finally:
            await gateway.stop()

    asyncio.run(main())


def test_qos0_messages_are_bounded_in_bytes_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_module, "KafkaSide", FakeKafka)

    async def main() -> None:
        gateway, port = await started(tmp_path, "qos0_max_pending = 100\nqos0_max_pending_bytes = 25\n")
        try:
            bridge = gateway.bridge
            kafka: FakeKafka = bridge.kafka
            device = await Device.connect(port)
            for n in range(5):
                device.publish("ferry/s/dev1/status", b"0123456789", qos=0)  # 10 bytes each: 2 fit
            device.publish("ferry/s/dev1/status", b"!", packet_id=1)  # QoS 1 is not bounded by it
            assert await device.next_packet() == Puback(1)
            await until(lambda: len(kafka.produced) == 3)
            assert (bridge.qos0_pending(), bridge.stats.qos0_dropped) == (2, 3)

            # QoS 0 comes over the MQTT connection, QoS 1 from the spool: either may be produced first.
            first_qos0 = next(i for i, (_, record) in enumerate(kafka.produced) if record.value == b"0123456789")
            kafka.deliver(first_qos0)  # acknowledged: room for one more
            device.publish("ferry/s/dev1/status", b"0123456789", qos=0)
            await until(lambda: len(kafka.produced) == 4)
            assert (bridge.qos0_pending(), bridge.stats.qos0_dropped) == (2, 3)
        finally:
            await gateway.stop()

    asyncio.run(main())
