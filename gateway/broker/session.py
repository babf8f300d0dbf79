"""A client's session and connection state inside the broker core.

The session outlives connections (clean session 0 / session expiry > 0); the
connection holds what dies with the socket: keepalive, will, topic aliases and
the ordered output that waits for the store to commit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from ferry.gateway.auth.identity import Identity
from ferry.gateway.broker.index import Subscribed
from ferry.gateway.mqtt import EMPTY_PROPERTIES, Properties, ProtocolVersion, ReasonCode, Will


@dataclass(slots=True, eq=False)
class Message:
    """One published message, shared by every session it is routed to."""

    msg_id: int
    """Store id; 0 when the message was never written to the store."""
    topic: str
    payload: bytes
    qos: int
    retain: bool
    origin: str
    """Client id of the publisher (for no-local)."""
    properties: Properties = EMPTY_PROPERTIES
    expiry_at: float | None = None
    """Wall-clock seconds after which the message is not delivered (v5 Message Expiry Interval)."""
    refs: int = 0
    """Queue entries and retained slots that still hold it durably."""
    topic_bytes: bytes = b""
    """The topic's UTF-8, encoded once for every delivery."""
    props_v5: bytes | None = None
    """Encoded property block for MQTT 5 deliveries without per-delivery properties."""
    received_at: float = 0.0
    """Wall-clock seconds when a client's PUBLISH arrived; 0 when unknown (restored from the
    store, which does not keep it). The Kafka bridge reads it for `ferry-received-ms`."""
    publisher: str | None = None
    """The user name the publisher authenticated as; None for anonymous and gateway publishers, and
    for messages restored from the store (which were admitted before they were stored)."""

    def __post_init__(self) -> None:
        if not self.topic_bytes:
            self.topic_bytes = self.topic.encode()


class DeliveryState(Enum):
    QUEUED = 0
    PUBLISH_SENT = 1
    PUBREL_SENT = 2
    """Outgoing QoS 2 after PUBREC: the message is delivered, PUBCOMP pending."""


@dataclass(slots=True, eq=False)
class Delivery:
    """A message on its way to one session."""

    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()
    packet_id: int = 0
    state: DeliveryState = DeliveryState.QUEUED
    durable: bool = False
    """An `Enqueued` record exists for it in the store."""
    id_batch: int = 0
    """The journal batch holding its `InflightAssigned` record (0: none, or recovered from the
    store): a QoS 2 PUBLISH goes out once that batch is committed."""


@dataclass(slots=True, eq=False)
class Session:
    """Everything the broker keeps for a client id."""

    client_id: str
    protocol_version: ProtocolVersion
    expiry_interval_s: int
    subscriptions: dict[str, Subscribed] = field(default_factory=dict)
    inflight: dict[int, Delivery] = field(default_factory=dict)
    """Packet id → delivery sent and not yet fully acknowledged, in send order."""
    queue: deque[Delivery] = field(default_factory=deque)
    queued_bytes: int = 0
    unsent: deque[int] = field(default_factory=deque)
    """Packet ids in `inflight` whose PUBLISH this connection has not resent yet: a client that
    comes back with a smaller Receive Maximum gets the rest as acknowledgements free its window
    [MQTT-3.3.4-9]."""
    incoming_qos2: set[int] = field(default_factory=set)
    """Packet ids of QoS 2 publishes we PUBRECed and whose PUBREL has not come."""
    connection: "Connection | None" = None
    expires_at: float | None = None
    """Monotonic deadline while disconnected; None while connected or never expiring."""
    stored: bool = False
    """A `SessionSaved` record exists for it."""
    owner: str | None = None
    """User name of the client that made it ("": anonymous); with access control only that user
    may resume, take over or end it. None: not known (restored from a store written before access
    control): the next client allowed to use the client id adopts it."""
    read_checked: bool = False
    """A subscription of it reaches topics an ACL deny rule covers: each delivery is checked."""
    next_packet_id: int = 1

    @property
    def persistent(self) -> bool:
        return self.expiry_interval_s > 0

    def allocate_packet_id(self) -> int:
        """A packet id not in use by an outgoing flow [MQTT-2.3.1-2]."""
        while True:
            packet_id = self.next_packet_id
            self.next_packet_id = packet_id % 65535 + 1
            if packet_id not in self.inflight:
                return packet_id


@dataclass(slots=True, eq=False)
class Connection:
    """One network connection, from accept to close."""

    conn_id: int
    peer: str = ""
    session: Session | None = None
    protocol_version: ProtocolVersion = ProtocolVersion.V311
    keepalive_s: int = 0
    last_packet_at: float = 0.0
    will: Will | None = None
    topic_aliases: dict[int, str] = field(default_factory=dict)
    inflight_limit: int = 20
    """Outgoing QoS 1/2 window: the client's Receive Maximum or our default."""
    max_packet_size: int = 268_435_455
    """Largest packet the client accepts."""
    incoming_unacked: int = 0
    """QoS 1/2 publishes from this client not yet acknowledged (checked against Receive Maximum)."""
    out: bytearray = field(default_factory=bytearray)
    """Bytes ready to be written."""
    held: deque[tuple[int, bytes, bool]] = field(default_factory=deque)
    """(store batch, bytes, is a held PUBACK) waiting for that batch to commit, in order."""
    output_blocked: bool = False
    """The transport's write buffer is over its high-water mark."""
    close_reason: ReasonCode | None = None
    """Set when the core wants the connection closed after its output is written."""
    clean_disconnect: bool = False
    closed: bool = False
    internal: bool = False
    """Opened by the gateway itself (the Kafka bridge): only such connections may use a client id
    that has a `SessionPolicy`, and access control does not apply to them."""
    identity: Identity | None = None
    """Who the network layer authenticated the CONNECT as (None: not authenticated)."""
    auth_refusal: ReasonCode | None = None
    """Why the network layer refused the CONNECT's credentials, for the CONNACK."""

    @property
    def client_id(self) -> str:
        return self.session.client_id if self.session is not None else ""
