"""Limits and policies of the broker core, built once from the gateway's TOML config."""

from __future__ import annotations

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
    (QoS 1/2 deliveries wait in the session queue instead)."""


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
