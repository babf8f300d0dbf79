"""A stand-in for the Kafka producer under a Faust app, for the server's tests without a broker.

Faust sends topic records through `app.maybe_start_producer()` and table changelog records
through `app.producer.send_soon()` (a buffer drained by a background service that does not run
in these tests); both end in the producer's `send()`, which returns the future that Kafka's
acknowledgement resolves. The worker sends its own records in batches through the aiokafka
producer underneath (`_ensure_producer()`: `create_batch`, `send_batch`,
`ferry.server.kafka_batches`). `FakeProducer` is both: it records every record and acknowledges
it at once, or, with `hold=True`, only when the test calls `ack()`: so a test can see what a
worker waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import faust
from faust.types import TP
from faust.types.tuples import RecordMetadata


@dataclass(slots=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    acknowledged: asyncio.Future


class FakeBatch:
    """What `create_batch()` gives: the records appended, in order (no size limit)."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: int | None,
               headers: object = None) -> object:
        self.records.append((key, value))
        return len(self.records) - 1

    def record_count(self) -> int:
        return len(self.records)


class FakeCluster:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    async def _wait_on_metadata(self, topic: str) -> set[int]:
        return set(range(self.partitions))


class FakeProducer:
    def __init__(self, hold: bool = False, refuse: bool = False, partitions: int = 1) -> None:
        self.hold = hold
        self.refuse = refuse
        self.sent: list[Sent] = []
        self.client = FakeCluster(partitions)

    def _ensure_producer(self) -> "FakeProducer":
        return self

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future:
        """A future of the batch's metadata (its first record's offset) once every record of it is
        acknowledged."""
        loop = asyncio.get_running_loop()
        base = sum(1 for s in self.sent if s.topic == topic and s.partition == partition)
        records = [Sent(topic, key, value, partition, loop.create_future()) for key, value in batch.records]
        self.sent += records
        whole = loop.create_future()

        def settled(_: object) -> None:
            if whole.done() or not all(r.acknowledged.done() for r in records):
                return
            failed = [r.acknowledged.exception() for r in records if r.acknowledged.exception() is not None]
            if failed:
                whole.set_exception(failed[0])
            else:
                whole.set_result(RecordMetadata(topic, partition, TP(topic, partition), base))

        for record in records:
            record.acknowledged.add_done_callback(settled)
            if not self.hold:
                self._acknowledge(record)
        return whole

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: float | None, headers: object, **options: object) -> asyncio.Future:
        sent = Sent(topic, key, value, partition, asyncio.get_running_loop().create_future())
        self.sent.append(sent)
        if not self.hold:
            self._acknowledge(sent)
        return sent.acknowledged

    def ack(self, topics: set[str] | None = None) -> int:
        """Acknowledge what waits (of these topics); how many."""
        waiting = [s for s in self.sent if not s.acknowledged.done() and (topics is None or s.topic in topics)]
        for sent in waiting:
            self._acknowledge(sent)
        return len(waiting)

    def _acknowledge(self, sent: Sent) -> None:
        if self.refuse:
            sent.acknowledged.set_exception(RuntimeError(f"{sent.topic}: refused"))
            return
        offset = sum(1 for s in self.sent if s.topic == sent.topic and s.partition == sent.partition) - 1
        partition = sent.partition or 0
        sent.acknowledged.set_result(RecordMetadata(sent.topic, partition, TP(sent.topic, partition), offset))

    def topics(self) -> list[str]:
        """Topic of every record sent, in order."""
        return [s.topic for s in self.sent]

    def newest(self, topic: str, key: str) -> bytes:
        """The value of the last record sent to `topic` with `key` (for a changelog: what a recovering
        worker reads for that key)."""
        return [s.value for s in self.sent if s.topic == topic and s.key == key.encode()][-1]

    def values(self, topic: str) -> list[tuple[str, dict]]:
        """(key, JSON value) of the records sent to `topic`, in order."""
        return [(s.key.decode(), json.loads(s.value)) for s in self.sent if s.topic == topic]


@contextlib.contextmanager
def fake_producer(app: faust.App, hold: bool = False, refuse: bool = False) -> Iterator[FakeProducer]:
    """Every record `app` produces goes to a `FakeProducer` (call inside the test's event loop)."""
    producer = FakeProducer(hold, refuse, app.conf.topic_partitions)

    def send_soon(future: object) -> None:
        # What Faust's producer buffer does in the background: publish and resolve the future.
        asyncio.ensure_future(future.message.channel.publish_message(future))

    with mock.patch.object(app, "maybe_start_producer", mock.AsyncMock(return_value=producer)), \
            mock.patch.object(app.producer, "send_soon", side_effect=send_soon):
        yield producer
