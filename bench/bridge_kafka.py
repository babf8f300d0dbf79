"""The Kafka side of `ferry bench bridge`: a local Kafka-compatible broker behind a link, and the count.

Each system under test gets a fresh Tansu (memory storage) that advertises a
link simulator's port (`ferry.hwsim.link`), so every connection its Kafka
client makes goes through the link and an outage is one `set_profile("outage")`
away, while Tansu keeps its records. At the end the bench reads every record
back and checks, device by device, that each reading the broker acknowledged
is there: PUBACKs and delivery reports are not taken on trust.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ferry.bench.bridge_model import reading_index
from ferry.contract import BridgeNaming
from ferry.hwsim.link import LinkConfig, LinkProcess, resolve_profile
from ferry.local_kafka import LocalKafka
from ferry.process import free_port

log = logging.getLogger(__name__)

NAMING = BridgeNaming("bench")
"""Kafka topic names: the bridge's defaults, which the forwarder uses as well."""
PARTITIONS = 4
"""Partitions of every topic: more than one, so records keyed by device spread as in production."""
LINK_NAME = "uplink"
CONSUME_BATCH = 10_000
QUIET_S = 2.0
"""Reading back stops once everything expected arrived and nothing more came for this long..."""
GIVE_UP_QUIET_S = 5.0
"""...or once nothing came for this long although readings are still missing: the bench reads
back only after Kafka acknowledged all it was going to, so they were lost."""


class Uplink:
    """Tansu and the link in front of it; `bootstrap` goes through the link."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.link_port = free_port()
        self.kafka = LocalKafka(work_dir, advertised_port=self.link_port)
        self.link = LinkProcess([LinkConfig("127.0.0.1", self.kafka.port, name=LINK_NAME, listen_port=self.link_port,
                                            profile=resolve_profile("perfect"))], work_dir, log_level="WARNING")
        self._stack = ExitStack()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.link_port}"

    def pids(self) -> dict[str, int]:
        return {"tansu": self.kafka.process.pid, "link": self.link.process.pid}

    def start(self) -> "Uplink":
        with ExitStack() as stack:
            stack.enter_context(self.kafka)
            stack.enter_context(self.link)
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            topics = [NAMING.telemetry_topic, NAMING.status_topic, NAMING.reply_topic, NAMING.deadletter_topic]
            for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
                future.result(30)
            self._stack = stack.pop_all()
        return self

    def down(self) -> None:
        """Kafka unreachable: every connection through the link is cut and new ones are refused."""
        self.link.set_profile("outage", LINK_NAME)

    def up(self) -> None:
        self.link.set_profile("perfect", LINK_NAME)

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> "Uplink":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class DeviceCount:
    """One device's readings in Kafka against what the broker acknowledged to it."""

    device: str
    acknowledged: int
    """PUBACKs the device got: readings 0 .. acknowledged-1 must all be in Kafka."""
    missing: int
    """Of those, readings not in Kafka."""
    records: int
    """Telemetry records of this device in Kafka, duplicates included."""
    distinct: int


@dataclass(frozen=True, slots=True)
class KafkaCount:
    """Everything read back from one system's Kafka."""

    devices: tuple[DeviceCount, ...]
    deadlettered: int
    """Records on the dead-letter topic: 0 unless a payload broke the contract."""
    read_s: float

    def for_tag(self, tag: str) -> tuple[DeviceCount, ...]:
        return tuple(d for d in self.devices if d.device.startswith(f"{tag}-"))

    @property
    def acknowledged(self) -> int:
        return sum(d.acknowledged for d in self.devices)

    @property
    def missing(self) -> int:
        return sum(d.missing for d in self.devices)

    @property
    def duplicates(self) -> int:
        return sum(d.records - d.distinct for d in self.devices)


def count_in_kafka(bootstrap: str, acknowledged: dict[str, int], timeout_s: float) -> KafkaCount:
    """Read both topics from the start, mark every device's readings, compare with `acknowledged`.

    It reads until every acknowledged reading was seen and nothing new came for
    `QUIET_S` (duplicates arrive too), until nothing came for `GIVE_UP_QUIET_S`,
    or until `timeout_s`.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-count-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)
                     for topic in (NAMING.telemetry_topic, NAMING.deadletter_topic) for partition in range(PARTITIONS)])
    seen: dict[str, bytearray] = {}
    records: dict[str, int] = {}
    deadlettered = 0
    expected = sum(acknowledged.values())
    found = 0
    started = time.monotonic()
    last_new = started
    try:
        while True:
            now = time.monotonic()
            quiet_s = now - last_new
            if now - started > timeout_s or quiet_s > GIVE_UP_QUIET_S or (found >= expected and quiet_s > QUIET_S):
                break
            batch = consumer.consume(CONSUME_BATCH, 0.5)
            if batch:
                last_new = time.monotonic()
            for message in batch:
                if message.error() is not None:
                    log.warning("reading Kafka back: %s", message.error().str())
                    continue
                if message.topic() == NAMING.deadletter_topic:
                    deadlettered += 1
                    continue
                device = message.key().decode()
                index = reading_index(message.value())
                marks = seen.get(device)
                if marks is None:
                    marks = seen[device] = bytearray(max(acknowledged.get(device, 0), index + 1))
                elif index >= len(marks):
                    marks.extend(bytes(index + 1 - len(marks)))
                records[device] = records.get(device, 0) + 1
                if not marks[index]:
                    marks[index] = 1
                    if index < acknowledged.get(device, 0):
                        found += 1
    finally:
        consumer.close()
    devices = []
    for device in sorted(set(acknowledged) | set(seen)):
        marks = seen.get(device, bytearray())
        owed = acknowledged.get(device, 0)
        devices.append(DeviceCount(device, owed, owed - marks.count(1, 0, owed), records.get(device, 0),
                                   marks.count(1)))
    return KafkaCount(tuple(devices), deadlettered, time.monotonic() - started)
