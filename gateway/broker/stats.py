"""Counters the broker core keeps for `$SYS` topics and the Prometheus endpoint."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum


class DropReason(Enum):
    """Why a message did not reach a session; each has its own counter."""

    QUEUE_FULL = "queue_full"
    QUEUE_BYTES = "queue_bytes"
    SLOW_SUBSCRIBER = "slow_subscriber"
    EXPIRED = "expired"
    PACKET_TOO_LARGE = "packet_too_large"
    QOS0_OFFLINE = "qos0_offline"


@dataclass(slots=True)
class BrokerStats:
    """Running totals since start; gauges are computed from the core's state when read."""

    connections_total: int = 0
    messages_received: list[int] = field(default_factory=lambda: [0, 0, 0])
    """Per QoS, PUBLISH packets received from clients (duplicates of QoS 2 not counted)."""
    messages_sent: list[int] = field(default_factory=lambda: [0, 0, 0])
    """Per QoS, PUBLISH packets sent to clients (resends included)."""
    resent: int = 0
    duplicates_qos2: int = 0
    """QoS 2 publishes received again with a packet id still awaiting PUBREL."""
    dropped: Counter = field(default_factory=Counter)
    """DropReason → messages not delivered to a session."""
    protocol_errors: int = 0
    refused_full: int = 0
    """QoS 1/2 publishes refused (not acknowledged) because a session with a refuse-when-full
    `SessionPolicy` (the Kafka bridge's spool) was full."""
    refused_queue_full: int = 0
    """QoS 1/2 publishes refused (not acknowledged) because a persistent client session they must
    reach had a full queue (`broker.queue_full = "refuse"`)."""
    refused_disk_low: int = 0
    """QoS 1/2 publishes refused (not acknowledged) because free disk was below the floor."""
    publishes_denied: int = 0
    """Publishes from clients to topics beginning with `$`, which belong to the server."""
    wills_published: int = 0
    sessions_expired: int = 0
