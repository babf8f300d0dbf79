"""Typed MQTT control packets shared by MQTT 3.1.1 and 5.0.

Every packet is a frozen, slotted dataclass; fields that only exist in MQTT 5.0
(properties, most reason codes, subscription options other than QoS) keep their
defaults for 3.1.1 and are ignored by the 3.1.1 encoder.  Validation of what a
*peer* sent happens in the decoder; the encoder rejects impossible packets
with ``ValueError``.  Constructors do not validate, so building packets stays
cheap on the broker's hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, TypeAlias

from .reason_codes import ReasonCode

__all__ = [
    "EMPTY_PROPERTIES",
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Properties",
    "ProtocolVersion",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "Suback",
    "Subscribe",
    "Subscription",
    "Unsuback",
    "Unsubscribe",
    "Will",
]


class ProtocolVersion(IntEnum):
    """The CONNECT packet's protocol level byte."""

    V311 = 4
    V5 = 5


class PacketType(IntEnum):
    """Control packet type, the high nibble of the fixed header's first byte (section 2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


@dataclass(frozen=True, slots=True)
class Properties:
    """MQTT 5.0 properties (section 2.2.2.2); ``None`` means absent.

    Which properties a packet may carry is checked by the decoder and encoder
    (see ``ferry.gateway.mqtt.properties``).  Intervals are in seconds as on the wire.
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __repr__(self) -> str:
        # Only the properties that are present: a full repr is 27 fields long.
        default = _DEFAULTS
        parts = [
            f"{name}={getattr(self, name)!r}"
            for name in self.__slots__
            if getattr(self, name) != default[name]
        ]
        return f"Properties({', '.join(parts)})"


_DEFAULTS = {name: (() if name in ("subscription_identifiers", "user_properties") else None)
             for name in Properties.__slots__}
EMPTY_PROPERTIES = Properties()


@dataclass(frozen=True, slots=True)
class Will:
    """The Will Message carried in CONNECT (section 3.1.2.5, 3.1.3.2-3.1.3.4)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (section 3.1).  ``clean_start`` is 3.1.1's CleanSession flag."""

    packet_type: ClassVar[PacketType] = PacketType.CONNECT

    client_id: str
    protocol_version: ProtocolVersion
    clean_start: bool
    keepalive_s: int
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK (section 3.2).  For 3.1.1 the reason code maps to a return code."""

    packet_type: ClassVar[PacketType] = PacketType.CONNACK

    session_present: bool
    reason_code: ReasonCode
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (section 3.3).  ``packet_id`` is None exactly when ``qos`` is 0.

    In MQTT 5.0 ``topic`` may be ``""`` when ``properties.topic_alias`` is set.
    """

    packet_type: ClassVar[PacketType] = PacketType.PUBLISH

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Puback:
    """PUBACK (section 3.4)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBACK

    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubrec:
    """PUBREC (section 3.5)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBREC

    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubrel:
    """PUBREL (section 3.6)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBREL

    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubcomp:
    """PUBCOMP (section 3.7)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBCOMP

    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Subscription:
    """One Topic Filter and its Subscription Options (section 3.8.3.1).

    ``topic_filter`` is sent as is, including any ``$share/<group>/`` prefix.
    """

    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (section 3.8)."""

    packet_type: ClassVar[PacketType] = PacketType.SUBSCRIBE

    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Suback:
    """SUBACK (section 3.9).  3.1.1 knows only GRANTED_QOS_0/1/2 and 0x80."""

    packet_type: ClassVar[PacketType] = PacketType.SUBACK

    packet_id: int
    reason_codes: tuple[ReasonCode, ...]
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (section 3.10)."""

    packet_type: ClassVar[PacketType] = PacketType.UNSUBSCRIBE

    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsuback:
    """UNSUBACK (section 3.11).  3.1.1 carries no reason codes (decoded as ``()``)."""

    packet_type: ClassVar[PacketType] = PacketType.UNSUBACK

    packet_id: int
    reason_codes: tuple[ReasonCode, ...] = ()
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pingreq:
    """PINGREQ (section 3.12)."""

    packet_type: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class Pingresp:
    """PINGRESP (section 3.13)."""

    packet_type: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (section 3.14).  3.1.1 has only the client's bare form."""

    packet_type: ClassVar[PacketType] = PacketType.DISCONNECT

    reason_code: ReasonCode = ReasonCode.NORMAL_DISCONNECTION
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (section 3.15), MQTT 5.0 only."""

    packet_type: ClassVar[PacketType] = PacketType.AUTH

    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = EMPTY_PROPERTIES


Packet: TypeAlias = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)
