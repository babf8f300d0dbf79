"""Limits and policies of the broker core, built once from the gateway's TOML config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

NEVER_EXPIRES = 0xFFFF_FFFF


class QueueFull(Enum):
    """What a QoS 1/2 publish meets when a persistent session it must reach has a full queue."""

    REFUSE = "refuse"
    """Refuse the publish as a whole, before acknowledging it: MQTT 5 publishers get PUBACK/PUBREC
    0x97 (Quota exceeded), MQTT 3.1.1 publishers no acknowledgement and a closed connection, and
    keep the message. Nothing acknowledged is dropped; one stuck subscriber holds back every
    publisher of the topics it subscribed to."""
    DROP_NEW = "drop_new"
    """Acknowledge the publish and drop it for that session (counted), as Mosquitto does: the
    other sessions get it, the full one loses it."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """What the broker promises and limits; every field is a `[broker]` key in ferry.toml."""

    max_packet_size_bytes: int = 1_048_576
    """Largest packet accepted from or sent to a client (MQTT 5 Maximum Packet Size)."""
    receive_maximum: int = 1024
    """Unacknowledged QoS 1/2 publishes a client may have outstanding towards us."""
    max_inflight_messages: int = 100
    """Unacknowledged QoS 1/2 deliveries per session (v5 clients may ask for fewer). Mosquitto's
    default is 20; Ferry's longer event-loop turns need a wider window to keep a persistent
    subscriber as fast as the publishers (`ferry bench broker`, qos1-throughput)."""
    max_queued_messages: int = 10_000
    """Messages waiting for an offline or busy session; beyond it new ones are dropped and counted."""
    max_queued_bytes: int = 64 * 1_048_576
    """Payload bytes waiting per session; beyond it new messages are dropped and counted."""
    topic_alias_maximum: int = 64
    """Topic aliases a v5 client may set towards us."""
    max_keepalive_s: int = 65_535
    """Keepalive granted at most: a larger (or zero) value is replaced by this for MQTT 5 clients
    (Server Keep Alive) and refused for 3.1.1 clients, which cannot be told (as Mosquitto does)."""
    persistent_session_expiry_s: int = NEVER_EXPIRES
    """Expiry of MQTT 3.1.1 sessions with clean session 0 (v5 clients choose their own)."""
    max_session_expiry_s: int = NEVER_EXPIRES
    """Largest session expiry a v5 client is granted."""
    queue_qos0_offline: bool = False
    """Queue QoS 0 messages for offline persistent sessions (Mosquitto's queue_qos0_messages)."""
    queue_full: QueueFull = QueueFull.REFUSE
    """When a persistent session's queue (`max_queued_messages`, `max_queued_bytes`) is full:
    `refuse` new QoS 1/2 publishes that would reach it, or `drop_new` them for that session.
    Sessions of clean clients always drop (counted): they promised nothing across a disconnect."""
    max_output_buffer_bytes: int = 1_048_576
    """Bytes waiting to be written to one slow client before QoS 0 deliveries to it are dropped
    (QoS 1/2 deliveries wait in the session queue instead). Past it the gateway also reads less:
    a publisher whose message reaches such a client, and the client itself, are not read until
    its buffer has drained to a quarter of this (or it is aborted, `max_output_blocked_s`)."""
    max_output_buffer_abort_bytes: int = 4 * 1_048_576
    """Bytes waiting for one client beyond which its connection is aborted (0: never): a client
    that does not read cannot make the gateway hold more for it than this."""
    max_output_blocked_s: int = 10
    """A client whose output stays over `max_output_buffer_bytes` this long (without draining to a
    quarter of it) is aborted, so that a subscriber that stopped reading holds back the publishers
    it subscribed to for at most this long (0: never)."""

    # ---- limits on what one client, or many, may make the gateway hold (0: no limit) ----

    connect_timeout_s: int = 10
    """A connection that has not sent its whole CONNECT this long after it was accepted is closed
    without a CONNACK (slow-loris). A CONNECT whose password is being checked is not waited on."""
    max_connections: int = 10_000
    """Client connections open at once; more are accepted and closed at once (counted). The
    gateway also keeps 256 file descriptors of its open-files limit for its store and the bridge,
    and takes the lower of the two."""
    max_connections_per_address: int = 1_000
    """Client connections open at once from one IP address: a tenth of `max_connections`, so one
    host cannot take every slot, yet high enough for a site of devices behind one NAT router."""
    max_publish_rate: int = 1_000
    """PUBLISH packets per second one client may send, in a token bucket holding one second's
    worth. A client over it is not dropped: the gateway stops reading its socket until the bucket
    has refilled (backpressure; TCP slows the client down). The gateway's own connections are not
    limited."""
    max_topic_length: int = 1_024
    """Bytes (UTF-8) of a topic name in a PUBLISH or of a filter in a SUBSCRIBE. A PUBLISH beyond
    is not routed (MQTT 5 QoS 1/2: PUBACK/PUBREC 0x90 Topic Name invalid; MQTT 3.1.1, which has no
    negative acknowledgement, and QoS 0: acknowledged as usual and dropped), a filter beyond is
    refused (SUBACK 0x8F; MQTT 3.1.1: 0x80); counted."""
    max_topic_levels: int = 128
    """Levels (`/`-separated) of a topic name or filter; beyond, as `max_topic_length`."""
    max_subscriptions_per_client: int = 1_000
    """Subscriptions one session may hold; filters beyond are refused (SUBACK 0x97 Quota exceeded;
    MQTT 3.1.1: 0x80), counted. Subscribing again to a filter it holds is always granted."""
    max_sessions: int = 100_000
    """Sessions kept, connected or not. A CONNECT that would create a new persistent session
    once this many exist is refused (CONNACK 0x97 Quota exceeded; MQTT 3.1.1: 3 Server
    unavailable), counted; clean sessions, which end with their connection, are not refused."""
    max_retained_messages: int = 100_000
    """Retained messages kept. A retained publish to a topic that has none once this many exist is
    delivered to its subscribers as usual but not retained, counted (replacing or clearing a
    retained message is always allowed)."""
    tcp_keepalive_s: int = 300
    """TCP keepalive on every client socket (0: off): the kernel probes a connection idle this
    long and closes it once 4 probes, 30 s apart, go unanswered. This is what ends the connection
    of a dead client that asked for MQTT keepalive 0 (MicroPython's umqtt.simple does by default),
    which the gateway accepts from MQTT 3.1.1 and 5 clients alike; a live client's kernel answers
    the probes itself, so no firmware needs to change."""


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """Limits that replace `[broker]`'s for one client id the gateway itself connects (the Kafka
    bridge, whose session queue is its disk spool). Set with `Broker.set_session_policy`."""

    max_queued_messages: int
    """Messages waiting in this session's queue (replaces `max_queued_messages`)."""
    max_queued_bytes: int
    """Payload bytes waiting in this session's queue (replaces `max_queued_bytes`)."""
    refuse_when_full: bool = True
    """When the queue is full, a QoS 1/2 publish that would reach this session is refused as a
    whole, as `QueueFull.REFUSE` does (MQTT 3.1.1: no acknowledgement and the connection closed,
    the one refusal 3.1.1 has [MQTT-3.3.5-2]; MQTT 5: PUBACK/PUBREC 0x97). The publisher keeps the
    message and resends it later. False: drop it for this session and count it."""
    drop_oldest: bool = False
    """For a spooled session (`Broker.attach_spool`): when full, give up the oldest entries to make
    room instead of refusing or dropping the new message (`bridge.overflow = "drop_oldest"`)."""
    ignored: tuple[str, ...] = ()
    """Topic filters of QoS 1/2 messages this session does not take: they are neither queued nor
    spooled for it, so a full queue never refuses them (operator commands, which the bridge does
    not forward, must reach devices during a long uplink outage)."""
    admits: Callable[[str, str | None], bool] | None = None
    """`admits(topic, publisher)`: whether this session takes a message published by the user
    `publisher` (None: anonymous or the gateway) on `topic`; a message it does not admit is dropped
    for it and counted (`DropReason.NOT_ADMITTED`). The bridge's check that a device produces
    records only for itself, behind the ACL."""
