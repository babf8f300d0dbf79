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
    NOT_ADMITTED = "not_admitted"
    """Refused by the receiving session's `SessionPolicy.admits` (the bridge: a publisher's topic
    names another device)."""


class Limit(Enum):
    """A `[broker]` limit a client ran into; each has its own counter (`BrokerStats.limit_hits`)."""

    CONNECT_TIMEOUT = "connect_timeout"
    """A connection closed for not completing its CONNECT within `connect_timeout_s`."""
    MAX_CONNECTIONS = "max_connections"
    """A connection closed at once: `max_connections` (or the open-files limit) were open."""
    MAX_CONNECTIONS_PER_ADDRESS = "max_connections_per_address"
    PUBLISH_RATE = "publish_rate"
    """A client's reading paused because it published faster than `max_publish_rate`."""
    TOPIC_LENGTH = "topic_length"
    """A PUBLISH or a SUBSCRIBE filter refused for `max_topic_length`."""
    TOPIC_LEVELS = "topic_levels"
    SUBSCRIPTIONS = "subscriptions"
    """A SUBSCRIBE filter refused for `max_subscriptions_per_client`."""
    SESSIONS = "sessions"
    """A CONNECT refused for `max_sessions`."""
    RETAINED = "retained"
    """A retained publish delivered but not retained for `max_retained_messages`."""
    OUTPUT_BUFFER = "output_buffer"
    """A connection aborted with more than `max_output_buffer_abort_bytes` waiting for it."""
    OUTPUT_BLOCKED = "output_blocked"
    """A connection aborted for staying over `max_output_buffer_bytes` for `max_output_blocked_s`."""
    DEAD_PEER = "dead_peer"
    """A connection the kernel timed out (TCP keepalive, `tcp_keepalive_s`, or retransmissions)."""


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
    limit_hits: Counter = field(default_factory=Counter)
    """Limit → times a client ran into it (the network layer counts its own limits here too)."""
    publishers_held: int = 0
    """Times a publisher was not read while a client its messages reach had its output backed up
    (flow control, `max_output_buffer_bytes`)."""
