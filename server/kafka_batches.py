"""Send what a batch of the worker writes as whole Kafka record batches, one chain per partition, and wait
for Kafka's acknowledgement of every one.

A worker batch at 10,000 devices writes about one changelog record per reading, and publishes one
series point for every two. Sent one by one (`producer.send`), each record costs aiokafka a future,
a metadata lookup, a partitioner call and a callback when the broker answers: a fifth of the
worker's event loop in `ferry bench server`. Appended to `BatchBuilder`s and submitted with
`send_batch`, a partition's records cost one future per batch of up to `producer_max_batch_size`
bytes; the broker sees the same record batches it did before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

OutgoingRecord = tuple[str, "int | None", bytes, bytes]
"""(topic, partition, key, value) of a record to send; partition None: the key's murmur2 partition
(`partition_for`)."""

PartitionFor = Callable[[bytes, int], int]
"""The partition of a key among a topic's `count` partitions."""


class LostWrite(Exception):
    """Kafka did not acknowledge a record the worker wrote: the batch (or health check) is not done.

    Its records must not be acked then (Faust would commit their offsets), so `ferry.server.streams`
    ends the process instead, and the batch is processed again by whichever worker takes the partition.
    """


async def send_acknowledged(producer: Any, records: Iterable[OutgoingRecord], partition_for: PartitionFor,
                            timeout_s: float) -> dict[tuple[str, int], int]:
    """Send `records` through the aiokafka `producer`, in order within each partition; return once Kafka
    acknowledged every one: (topic, partition) → the offset of its last record.

    Raises `LostWrite` when Kafka refused one, or did not answer within `timeout_s`.
    """
    chains: dict[tuple[str, int], list[Any]] = {}
    counts: dict[str, int] = {}
    for topic, partition, key, value in records:
        if partition is None:
            count = counts.get(topic)
            if count is None:
                count = counts[topic] = len(await producer.client._wait_on_metadata(topic))
            partition = partition_for(key, count)
        chain = chains.get((topic, partition))
        if chain is None:
            chain = chains[(topic, partition)] = [producer.create_batch()]
        if chain[-1].append(key=key, value=value, timestamp=None) is None:  # full: a new batch takes it
            chain.append(producer.create_batch())
            chain[-1].append(key=key, value=value, timestamp=None)  # an empty batch takes any record
    sent: list[tuple[tuple[str, int], Any, asyncio.Future]] = []
    for (topic, partition), chain in chains.items():
        for batch in chain:
            sent.append(((topic, partition), batch, await producer.send_batch(batch, topic, partition=partition)))
    if not sent:
        return {}
    futures = [future for _, _, future in sent]
    done, waiting = await asyncio.wait(futures, timeout=timeout_s)
    failed = ["cancelled" if f.cancelled() else repr(f.exception())
              for f in done if f.cancelled() or f.exception() is not None]
    if waiting or failed:
        records_lost = sum(batch.record_count() for _, batch, future in sent
                           if future in waiting or future.cancelled() or future.exception() is not None)
        total = sum(batch.record_count() for _, batch, _ in sent)
        reason = failed[0] if failed else f"no answer in {timeout_s:g} s"
        raise LostWrite(f"{records_lost} of {total} records not acknowledged by Kafka: {reason}")
    return {tp: future.result().offset + batch.record_count() - 1 for tp, batch, future in sent}
