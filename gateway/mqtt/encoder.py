"""Sans-IO MQTT encoder: typed packets in, bytes out.

``encode(packet, version)`` handles every packet type.  Fields that MQTT 3.1.1
cannot express (properties, PUBACK-family and DISCONNECT reason codes) are
dropped for 3.1.1; CONNACK and SUBACK reason codes are mapped to 3.1.1 return
codes.  MQTT 5.0 acknowledgements use the shortest form the spec allows.

For fan-out, ``encode_publish`` builds a PUBLISH from pre-encoded parts so the
broker can encode a stored message's topic and properties once and then emit
one packet per subscriber cheaply.

An impossible packet (QoS 3, QoS 1 without packet id, a wildcard in a topic
name, an invalid topic filter, a property or reason code the packet cannot
carry, ...) raises ``ValueError``.  Rules that depend on the connection's state
(topic alias maximum, receive maximum, who may send what) are the caller's.
"""

from __future__ import annotations

from typing import Callable

from ._wire import MAX_VBI, V5, V311, encode_binary, encode_utf8, encode_vbi, pack_u16
from .errors import ProtocolError
from .packets import (
    EMPTY_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from .properties import WILL_PROPERTIES, encode_properties
from .reason_codes import (
    AUTH_CODES,
    CONNACK_CODES,
    DISCONNECT_CODES,
    PUBACK_CODES,
    PUBCOMP_CODES,
    PUBREC_CODES,
    PUBREL_CODES,
    SUBACK_CODES,
    UNSUBACK_CODES,
    V311_CONNACK_ENCODE,
    V311_CONNACK_OTHER_FAILURE,
    ReasonCode,
)
from .topics import validate_topic_filter

__all__ = ["encode", "encode_properties", "encode_publish", "encode_topic"]

_T = PacketType
_VBI_SMALL = [bytes((n,)) for n in range(128)]
# First byte of a PUBLISH for every (qos, retain, dup): index qos << 1 | retain | dup << 3.
_PUBLISH_FIRST = [bytes((0x30 | i,)) for i in range(16)]


def _frame(first: int, body: bytes) -> bytes:
    length = len(body)
    if length < 128:
        return bytes((first, length)) + body
    if length > MAX_VBI:
        raise ValueError(f"remaining length {length} exceeds {MAX_VBI} (section 2.1.4)")
    return bytes((first,)) + encode_vbi(length) + body


def _check_packet_id(packet_id: int | None) -> bytes:
    if packet_id is None or not 1 <= packet_id <= 0xFFFF:
        raise ValueError(f"packet identifier {packet_id!r} is not 1..65535 (section 2.2.1)")
    return pack_u16(packet_id)


def _check_filter(topic_filter: str, version: ProtocolVersion) -> bytes:
    try:
        validate_topic_filter(topic_filter, version)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    return encode_utf8(topic_filter)


def _check_code(code: ReasonCode, allowed: frozenset[ReasonCode], what: str) -> int:
    if code not in allowed:
        raise ValueError(f"{code!r} is not a {what} reason code")
    return int(code)


def encode_topic(topic: str) -> bytes:
    """A topic name's UTF-8 bytes for :func:`encode_publish` (no length prefix)."""
    raw = topic.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("topic name encodes to more than 65535 bytes [MQTT-4.7.3-3]")
    return raw


def encode_publish(
    topic_bytes: bytes,
    payload: bytes,
    qos: int,
    retain: bool = False,
    dup: bool = False,
    packet_id: int | None = None,
    properties_bytes: bytes = b"",
    version: ProtocolVersion = V311,
) -> bytes:
    """A PUBLISH from pre-encoded parts; the hot path for fan-out.

    ``topic_bytes`` is the topic's UTF-8 (see :func:`encode_topic`),
    ``properties_bytes`` the output of :func:`encode_properties` (Property
    Length included; ``b""`` means none) and is ignored for 3.1.1.  Only
    ``qos`` and ``packet_id`` are checked: the caller vouches for the rest.
    """
    tlen = len(topic_bytes)
    if qos:
        if qos > 2 or packet_id is None or not 0 < packet_id < 65_536:
            raise ValueError(f"QoS {qos} PUBLISH needs QoS 1..2 and a packet id 1..65535, not {packet_id!r}")
        var = pack_u16(tlen) + topic_bytes + pack_u16(packet_id)
    else:
        if packet_id is not None or dup or qos:
            raise ValueError("QoS 0 PUBLISH has no packet id and no DUP [MQTT-2.2.1-2], [MQTT-3.3.1-2]")
        var = pack_u16(tlen) + topic_bytes
    if version == V5:
        var += properties_bytes or b"\x00"
    length = len(var) + len(payload)
    first = _PUBLISH_FIRST[(qos << 1) | (1 if retain else 0) | (8 if dup else 0)]
    if length < 128:
        return first + _VBI_SMALL[length] + var + payload
    return b"".join((first, encode_vbi(length), var, payload))


def _publish(p: Publish, version: ProtocolVersion) -> bytes:
    if p.qos not in (0, 1, 2):
        raise ValueError(f"PUBLISH QoS {p.qos!r} [MQTT-3.3.1-4]")
    topic = p.topic
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"topic name {topic!r} contains a wildcard or U+0000 [MQTT-3.3.2-2]")
    props = b""
    if version is V5:
        props = encode_properties(p.properties, _T.PUBLISH)
        if not topic and p.properties.topic_alias is None:
            raise ValueError("empty topic name needs a topic alias (section 3.3.2.3.4)")
    elif not topic:
        raise ValueError("topic name is empty [MQTT-4.7.3-1]")
    return encode_publish(
        encode_topic(topic), bytes(p.payload), p.qos, p.retain, p.dup, p.packet_id, props, version
    )


def _connect(p: Connect, version: ProtocolVersion) -> bytes:
    if p.protocol_version != version:
        raise ValueError(f"CONNECT for {p.protocol_version!r} encoded as {version!r}")
    v5 = version is V5
    flags = 0x02 if p.clean_start else 0x00
    will = p.will
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise ValueError(f"will QoS {will.qos!r}")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        if p.username is None and not v5:
            raise ValueError("MQTT 3.1.1 forbids a password without a user name [MQTT-3.1.2-22]")
        flags |= 0x40
    if not 0 <= p.keepalive_s <= 0xFFFF:
        raise ValueError(f"keep alive {p.keepalive_s} s does not fit in two bytes")
    parts = [b"\x00\x04MQTT", bytes((version, flags)), pack_u16(p.keepalive_s)]
    if v5:
        parts.append(encode_properties(p.properties, _T.CONNECT))
    parts.append(encode_utf8(p.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties, WILL_PROPERTIES))
        if not will.topic or "+" in will.topic or "#" in will.topic:
            raise ValueError(f"will topic {will.topic!r} is not a valid topic name")
        parts.append(encode_utf8(will.topic))
        parts.append(encode_binary(will.payload))
    if p.username is not None:
        parts.append(encode_utf8(p.username))
    if p.password is not None:
        parts.append(encode_binary(p.password))
    return _frame(0x10, b"".join(parts))


def _connack(p: Connack, version: ProtocolVersion) -> bytes:
    code = ReasonCode(p.reason_code)
    if p.session_present and code != ReasonCode.SUCCESS:
        raise ValueError("session present with a failure reason code [MQTT-3.2.2-6]")
    flags = 1 if p.session_present else 0
    if version is V5:
        rc = _check_code(code, CONNACK_CODES, "CONNACK")
        return _frame(0x20, bytes((flags, rc)) + encode_properties(p.properties, _T.CONNACK))
    rc = V311_CONNACK_ENCODE.get(code)
    if rc is None:
        if not code.is_failure:
            raise ValueError(f"{code!r} has no MQTT 3.1.1 CONNACK return code")
        rc = V311_CONNACK_OTHER_FAILURE
    return bytes((0x20, 2, flags, rc))


def _ack_encoder(first: int, ptype: PacketType, allowed: frozenset[ReasonCode]) -> Callable:
    def encode_ack(p: Puback | Pubrec | Pubrel | Pubcomp, version: ProtocolVersion) -> bytes:
        pid = _check_packet_id(p.packet_id)
        if version is not V5:
            return bytes((first, 2)) + pid
        code = p.reason_code
        props = p.properties
        if props is EMPTY_PROPERTIES or props == EMPTY_PROPERTIES:
            if code == ReasonCode.SUCCESS:
                return bytes((first, 2)) + pid
            return bytes((first, 3)) + pid + bytes((_check_code(code, allowed, ptype.name),))
        rc = _check_code(code, allowed, ptype.name)
        return _frame(first, pid + bytes((rc,)) + encode_properties(props, ptype))

    return encode_ack


def _subscribe(p: Subscribe, version: ProtocolVersion) -> bytes:
    if not p.subscriptions:
        raise ValueError("SUBSCRIBE needs at least one subscription [MQTT-3.8.3-2]")
    parts = [_check_packet_id(p.packet_id)]
    v5 = version is V5
    if v5:
        parts.append(encode_properties(p.properties, _T.SUBSCRIBE))
    for sub in p.subscriptions:
        if sub.qos not in (0, 1, 2) or sub.retain_handling not in (0, 1, 2):
            raise ValueError(f"invalid subscription options in {sub!r}")
        options = sub.qos
        if v5:
            options |= (
                (0x04 if sub.no_local else 0)
                | (0x08 if sub.retain_as_published else 0)
                | (sub.retain_handling << 4)
            )
        parts.append(_check_filter(sub.topic_filter, version))
        parts.append(bytes((options,)))
    return _frame(0x82, b"".join(parts))


def _suback(p: Suback, version: ProtocolVersion) -> bytes:
    if not p.reason_codes:
        raise ValueError("SUBACK needs one reason code per subscription (section 3.9.3)")
    parts = [_check_packet_id(p.packet_id)]
    if version is V5:
        parts.append(encode_properties(p.properties, _T.SUBACK))
        parts.append(bytes(_check_code(c, SUBACK_CODES, "SUBACK") for c in p.reason_codes))
    else:
        codes = bytearray()
        for code in p.reason_codes:
            if code in (0, 1, 2):
                codes.append(code)
            elif code >= 0x80:
                codes.append(0x80)
            else:
                raise ValueError(f"{code!r} has no MQTT 3.1.1 SUBACK return code")
        parts.append(bytes(codes))
    return _frame(0x90, b"".join(parts))


def _unsubscribe(p: Unsubscribe, version: ProtocolVersion) -> bytes:
    if not p.topic_filters:
        raise ValueError("UNSUBSCRIBE needs at least one topic filter [MQTT-3.10.3-2]")
    parts = [_check_packet_id(p.packet_id)]
    if version is V5:
        parts.append(encode_properties(p.properties, _T.UNSUBSCRIBE))
    parts.extend(_check_filter(f, version) for f in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _unsuback(p: Unsuback, version: ProtocolVersion) -> bytes:
    pid = _check_packet_id(p.packet_id)
    if version is not V5:
        return b"\xb0\x02" + pid
    if not p.reason_codes:
        raise ValueError("MQTT 5.0 UNSUBACK needs one reason code per topic filter (section 3.11.3)")
    codes = bytes(_check_code(c, UNSUBACK_CODES, "UNSUBACK") for c in p.reason_codes)
    return _frame(0xB0, pid + encode_properties(p.properties, _T.UNSUBACK) + codes)


def _pingreq(p: Pingreq, version: ProtocolVersion) -> bytes:
    return b"\xc0\x00"


def _pingresp(p: Pingresp, version: ProtocolVersion) -> bytes:
    return b"\xd0\x00"


def _disconnect(p: Disconnect, version: ProtocolVersion) -> bytes:
    if version is not V5:
        return b"\xe0\x00"
    code = p.reason_code
    props = p.properties
    if props is EMPTY_PROPERTIES or props == EMPTY_PROPERTIES:
        if code == ReasonCode.NORMAL_DISCONNECTION:
            return b"\xe0\x00"
        return b"\xe0\x01" + bytes((_check_code(code, DISCONNECT_CODES, "DISCONNECT"),))
    rc = _check_code(code, DISCONNECT_CODES, "DISCONNECT")
    return _frame(0xE0, bytes((rc,)) + encode_properties(props, _T.DISCONNECT))


def _auth(p: Auth, version: ProtocolVersion) -> bytes:
    if version is not V5:
        raise ValueError("AUTH does not exist in MQTT 3.1.1")
    code = p.reason_code
    props = p.properties
    if code == ReasonCode.SUCCESS and (props is EMPTY_PROPERTIES or props == EMPTY_PROPERTIES):
        return b"\xf0\x00"
    rc = _check_code(code, AUTH_CODES, "AUTH")
    return _frame(0xF0, bytes((rc,)) + encode_properties(props, _T.AUTH))


_ENCODERS: dict[type, Callable[..., bytes]] = {
    Connect: _connect,
    Connack: _connack,
    Publish: _publish,
    Puback: _ack_encoder(0x40, _T.PUBACK, PUBACK_CODES),
    Pubrec: _ack_encoder(0x50, _T.PUBREC, PUBREC_CODES),
    Pubrel: _ack_encoder(0x62, _T.PUBREL, PUBREL_CODES),
    Pubcomp: _ack_encoder(0x70, _T.PUBCOMP, PUBCOMP_CODES),
    Subscribe: _subscribe,
    Suback: _suback,
    Unsubscribe: _unsubscribe,
    Unsuback: _unsuback,
    Pingreq: _pingreq,
    Pingresp: _pingresp,
    Disconnect: _disconnect,
    Auth: _auth,
}


_SUCCESS_ACK_HEADS = {1: bytes((0x40, 2)), 2: bytes((0x50, 2))}


def encode_publish_ack(qos: int, packet_id: int, reason: ReasonCode, version: ProtocolVersion) -> bytes:
    """The PUBACK (QoS 1) or PUBREC (QoS 2) answering a PUBLISH, as `encode` makes it; the common
    success without a packet object (the broker answers every QoS 1/2 publish)."""
    if reason == ReasonCode.SUCCESS:
        return _SUCCESS_ACK_HEADS[qos] + _check_packet_id(packet_id)
    return encode(Puback(packet_id, reason) if qos == 1 else Pubrec(packet_id, reason), version)


def encode(packet: Packet, version: ProtocolVersion) -> bytes:
    """The wire bytes of ``packet`` for a connection speaking ``version``."""
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise TypeError(f"not an MQTT packet: {packet!r}")
    if version is not V5 and version is not V311:
        version = ProtocolVersion(version)
    return encoder(packet, version)
