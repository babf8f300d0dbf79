"""Notice a worker whose consumer has silently stopped, so it can exit and be restarted.

Faust consumers have been seen to stop fetching with no error while records
keep arriving (faust-streaming issues 175 and 640). The consumer's own view
cannot show it (its high-water marks stop moving with it), so the watch asks
the broker itself, with a separate confluent-kafka admin client, for the end of
each partition this worker owns and has processed before. Records waiting
there while nothing was processed for `timeout_s` mean the worker is stuck.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

ADMIN_TIMEOUT_S = 10.0


def bootstrap_servers(broker: str) -> str:
    """`kafka://h1:p1;h2:p2` or `h1:p1,h2:p2` as librdkafka wants it."""
    hosts = broker.split("://", 1)[-1]
    return ",".join(h.strip() for h in hosts.replace(";", ",").split(",") if h.strip())


class StallWatch:
    def __init__(self, broker: str, timeout_s: float) -> None:
        self.broker = broker
        self.timeout_s = timeout_s
        self.next_offset: dict[tuple[str, int], int] = {}
        """Per (topic, partition): one past the newest offset processed."""
        self.progress_at: float | None = None
        """When a batch was last processed (monotonic seconds)."""
        self._admin: AdminClient | None = None

    def processed(self, offsets: Iterable[tuple[str, int, int]], now: float) -> None:
        """(topic, partition, offset) of the records a batch processed."""
        for topic, partition, offset in offsets:
            key = (topic, partition)
            if offset + 1 > self.next_offset.get(key, -1):
                self.next_offset[key] = offset + 1
        self.progress_at = now

    def forget(self) -> None:
        """After a rebalance the owned partitions and their positions start again."""
        self.next_offset.clear()
        self.progress_at = None

    def due(self, now: float) -> bool:
        """Worth asking the broker: progress was made once and none for `timeout_s`."""
        return self.timeout_s > 0 and self.progress_at is not None and now - self.progress_at >= self.timeout_s

    def waiting(self, ends: dict[tuple[str, int], int]) -> str | None:
        """The stall, described, when the broker's partition ends are past what was processed."""
        behind = {k: ends[k] - n for k, n in self.next_offset.items() if k in ends and ends[k] > n}
        if not behind:
            return None
        worst = max(behind, key=behind.get)
        return (f"{sum(behind.values())} records wait in {len(behind)} partition(s) (e.g. {worst[0]}[{worst[1]}]: "
                f"{behind[worst]}) and none was processed for {self.timeout_s:g} s")

    def partition_ends(self) -> dict[tuple[str, int], int]:
        """The broker's end offset of every partition processed so far (blocking: call off the loop)."""
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": bootstrap_servers(self.broker)})
        request = {TopicPartition(t, p): OffsetSpec.latest() for t, p in self.next_offset}
        ends = {}
        try:
            for tp, future in self._admin.list_offsets(request, request_timeout=ADMIN_TIMEOUT_S).items():
                ends[(tp.topic, tp.partition)] = future.result(ADMIN_TIMEOUT_S).offset
        except KafkaException:
            return {}  # the broker cannot tell now: no verdict
        return ends
