"""`send_acknowledged`: records grouped per partition into record batches, in order, a new batch when one
is full, the offsets Kafka gave, and `LostWrite` when Kafka refuses or does not answer.

Batches are aiokafka's own `BatchBuilder`s (from a producer that is never started); only the
broker's side (`send_batch`, metadata) is played here."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata, TopicPartition

from ferry.server.kafka_batches import LostWrite, send_acknowledged


class Broker:
    """The broker side of an aiokafka producer: `send_batch` records each batch and answers it (or not)."""

    def __init__(self, batch_bytes: int, partitions: int = 4, answer: str = "ok") -> None:
        self.batch_bytes = batch_bytes
        self.producer: AIOKafkaProducer | None = None  # made in the event loop (aiokafka asks for one)
        self.partitions = partitions
        self.answer = answer
        self.batches: list[tuple[str, int, int]] = []
        self.ends: dict[tuple[str, int], int] = {}
        self.client = self

    async def _wait_on_metadata(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> object:
        if self.producer is None:
            self.producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=self.batch_bytes)
        return self.producer.create_batch()

    async def send_batch(self, batch: object, topic: str, *, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        base = self.ends.get((topic, partition), 0)
        self.ends[(topic, partition)] = base + batch.record_count()
        self.batches.append((topic, partition, batch.record_count()))
        if self.answer == "ok":
            future.set_result(RecordMetadata(topic, partition, TopicPartition(topic, partition), base, -1, 0, 0))
        elif self.answer == "refuse":
            future.set_exception(RuntimeError("NotLeaderForPartition"))
        return future


def send(broker: Broker, records: list, timeout_s: float = 5.0) -> dict:
    async def run() -> dict:
        return await send_acknowledged(broker, records, lambda key, count: len(key) % count, timeout_s)
    return asyncio.run(run())


def test_records_go_in_one_batch_per_partition_and_the_newest_offsets_come_back() -> None:
    broker = Broker(batch_bytes=1 << 20)
    records = [("changelog", i % 2, f"dev-{i}".encode(), b"v" * 100) for i in range(10)]
    records += [("series", None, b"abc", b"point"), ("series", None, b"abcd", b"point")]  # len(key) % 4
    assert send(broker, records) == {("changelog", 0): 4, ("changelog", 1): 4, ("series", 3): 0, ("series", 0): 0}
    assert broker.batches == [("changelog", 0, 5), ("changelog", 1, 5), ("series", 3, 1), ("series", 0, 1)]


def test_a_full_batch_is_followed_by_another_on_the_same_partition() -> None:
    broker = Broker(batch_bytes=1024)
    records = [("changelog", 0, f"dev-{i}".encode(), b"v" * 300) for i in range(10)]
    newest = send(broker, records)
    counts = [count for _, _, count in broker.batches]
    assert len(counts) > 1 and sum(counts) == 10
    assert newest == {("changelog", 0): 9}


def test_a_record_larger_than_a_batch_still_goes() -> None:
    broker = Broker(batch_bytes=256)
    assert send(broker, [("changelog", 0, b"dev", b"v" * 1000), ("changelog", 0, b"dev", b"w" * 1000)]) == \
        {("changelog", 0): 1}
    assert broker.batches == [("changelog", 0, 1), ("changelog", 0, 1)]


def test_a_refused_batch_is_a_lost_write() -> None:
    broker = Broker(batch_bytes=1 << 20, answer="refuse")
    with pytest.raises(LostWrite, match=r"3 of 3 records not acknowledged by Kafka: RuntimeError\('NotLeader"):
        send(broker, [("changelog", 0, b"dev", b"v")] * 3)


def test_no_answer_in_time_is_a_lost_write() -> None:
    broker = Broker(batch_bytes=1 << 20, answer="never")
    with pytest.raises(LostWrite, match="2 of 2 records not acknowledged by Kafka: no answer in 0.05 s"):
        send(broker, [("changelog", 0, b"dev", b"v"), ("changelog", 1, b"dev", b"v")], timeout_s=0.05)


def test_nothing_to_send_sends_nothing() -> None:
    broker = Broker(batch_bytes=1024)
    assert send(broker, []) == {}
    assert broker.batches == []
