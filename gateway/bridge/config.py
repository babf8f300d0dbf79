"""`[bridge]`: where the Kafka bridge sends device data and how large its disk spool may grow."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from enum import Enum

from ferry.contract import BridgeNaming

_DEFAULT_NAMING = BridgeNaming(gateway_id="-")

LibrdkafkaValue = str | int | float | bool

RESERVED_LIBRDKAFKA_KEYS = frozenset({
    "bootstrap.servers", "metadata.broker.list", "enable.idempotence", "acks", "request.required.acks",
    "partitioner", "statistics.interval.ms", "enable.gapless.guarantee",
})
"""librdkafka settings the bridge owns: its guarantees (idempotent, acks=all, murmur2 keys) and its
Kafka-connected metric depend on them, so `bridge.librdkafka` cannot change them."""

KAFKA_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")


class Overflow(Enum):
    """What a full spool does with a new device message."""

    REFUSE_NEW = "refuse_new"
    DROP_OLDEST = "drop_oldest"


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """`[bridge]`: the Kafka bridge; it runs only when `kafka` is set."""

    kafka: str | None = None
    """Kafka bootstrap servers, `host:port[,host:port...]`; the bridge is off without it."""
    gateway_id: str | None = None
    """This gateway's name in every record's `ferry-gateway` header; the host name when unset."""
    telemetry_topic: str = _DEFAULT_NAMING.telemetry_topic
    """Kafka topic for `ferry/<site>/<device>/telemetry`."""
    status_topic: str = _DEFAULT_NAMING.status_topic
    """Kafka topic for `ferry/<site>/<device>/status`."""
    reply_topic: str = _DEFAULT_NAMING.reply_topic
    """Kafka topic for `ferry/<site>/<device>/reply`."""
    deadletter_topic: str = _DEFAULT_NAMING.deadletter_topic
    """Kafka topic for anything under `ferry/` that breaks the contract (with a `ferry-error` header)."""
    spool_max_messages: int = 10_000_000
    """Messages the spool (on disk, `<data_dir>/store/spool/`) holds, those in flight to Kafka
    included; when full, `overflow` decides."""
    spool_max_bytes: int = 2_147_483_648
    """Bytes of the spool's files; when full, as for `spool_max_messages`."""
    overflow: Overflow = Overflow.REFUSE_NEW
    """When the spool is full: `refuse_new` device publishes (not acknowledged: devices keep their
    readings) or `drop_oldest` spooled messages to make room (counted, logged per file dropped)."""
    inflight: int = 5000
    """Messages handed to the Kafka producer and not yet acknowledged by Kafka (1..65535)."""
    qos0_max_pending: int = 10_000
    """QoS 0 messages held for Kafka at a time (in librdkafka's queue or waiting for room in it).
    They are not in the spool, so during an outage they would pile up in memory: beyond this the
    newest are dropped and counted (`ferry_bridge_qos0_dropped_total`); 0 bridges no QoS 0 message.
    Keep it well below librdkafka's `queue.buffering.max.messages` (100,000) so that QoS 0 traffic
    cannot fill the queue the spooled QoS 1 records need."""
    qos0_max_pending_bytes: int = 16_777_216
    """Payload bytes of those QoS 0 messages; beyond it, as for `qos0_max_pending`."""
    rejected_after_attempts: int = 10
    """Times a record is produced while Kafka refuses it for a reason an operator can fix (topic
    unknown, not authorised, a policy) before it goes to the dead-letter file (about 2 minutes of
    back-off with 10). Records no retry can cure (too large, invalid) go there at the first refusal;
    errors that mean Kafka is unreachable are retried for ever."""
    rejected_max_file_bytes: int = 16_777_216
    """The dead-letter file (`<data_dir>/rejected/`) is rotated before it passes this size (a file
    with a single larger entry may)."""
    rejected_max_files: int = 8
    """Dead-letter files kept; beyond it the oldest is deleted and its entries counted
    (`ferry_bridge_rejected_discarded_total`), so they take at most about this many times
    `rejected_max_file_bytes` of disk."""
    librdkafka: dict[str, LibrdkafkaValue] = field(default_factory=dict)
    """Further librdkafka producer settings (security, batching, timeouts), passed through as is."""

    @property
    def enabled(self) -> bool:
        return self.kafka is not None

    def naming(self) -> BridgeNaming:
        return BridgeNaming(self.gateway_id or socket.gethostname(), self.telemetry_topic,
                            self.status_topic, self.reply_topic, self.deadletter_topic)


def check_bridge(bridge: BridgeConfig) -> str | None:
    """The first problem with a `[bridge]` table as `bridge.<key>: problem`, or None."""
    if bridge.kafka is not None:
        servers = [s.strip() for s in bridge.kafka.split(",")]
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                return f"bridge.kafka: {server!r} is not host:port"
    if bridge.gateway_id is not None and not bridge.gateway_id:
        return "bridge.gateway_id: must not be empty"
    for key in ("telemetry_topic", "status_topic", "reply_topic", "deadletter_topic"):
        topic = getattr(bridge, key)
        if not KAFKA_TOPIC_RE.fullmatch(topic) or topic in (".", ".."):
            return f"bridge.{key}: {topic!r} is not a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)"
    if bridge.spool_max_messages < 1:
        return "bridge.spool_max_messages: must be at least 1"
    if bridge.spool_max_bytes < 1:
        return "bridge.spool_max_bytes: must be at least 1"
    if not 1 <= bridge.inflight <= 65_535:
        return "bridge.inflight: must be 1..65535"
    for key in ("rejected_after_attempts", "rejected_max_file_bytes", "rejected_max_files"):
        if getattr(bridge, key) < 1:
            return f"bridge.{key}: must be at least 1"
    for key in bridge.librdkafka:
        if key in RESERVED_LIBRDKAFKA_KEYS:
            return f"bridge.librdkafka.{key}: set by the bridge itself and cannot be changed"
        if key.endswith("_cb") or key in ("on_delivery", "logger"):
            return f"bridge.librdkafka.{key}: callbacks cannot be set from the config file"
    return None
