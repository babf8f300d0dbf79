"""Body parsers: one function per packet type, ``(decoder, first_byte, data, start, end)``.

Internal to :mod:`ferry.gateway.mqtt.decoder`, which has already checked the fixed
header (type, direction, flags, size) and passes ``data[start:end]`` as the
packet's variable header and payload.  PUBLISH is parsed inline without a
:class:`Reader` because it is the hot path.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Callable, Protocol

from ._wire import V5, Reader, packet_id_error, rule
from .errors import ProtocolError, malformed, protocol_error
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
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from .properties import WILL_PROPERTIES, decode_properties
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
    V311_CONNACK_DECODE,
    ReasonCode,
)
from .topics import SHARE_PREFIX, validate_topic_filter, validate_topic_name



class Decoder(Protocol):
    """What a parser reads and sets on the decoder calling it (`decoder.Decoder`, which imports this module)."""

    _server_side: bool
    _version: ProtocolVersion | None

    def _set_version(self, version: ProtocolVersion) -> None: ...


Parser = Callable[[Decoder, int, bytes, int, int], Packet]

_RC = {int(code): code for code in ReasonCode}
_PINGREQ = Pingreq()
_PINGRESP = Pingresp()
_T = PacketType


def _reason_code(code: int, allowed: frozenset[ReasonCode], rule_id: str, what: str) -> ReasonCode:
    if code not in allowed:
        raise protocol_error(rule_id, f"0x{code:02X} is not a {what} reason code")
    return _RC[code]


def _short(what: str) -> ProtocolError:
    return malformed("", f"packet ends inside {what}", section="2.1.4")


# ------------------------------------------------------------------ PUBLISH


def _publish_factory() -> Callable[[str, bytes, int, bool, bool, int | None, object], Publish]:
    """A Publish constructor without the frozen dataclass ``__init__``.

    That ``__init__`` calls ``object.__setattr__`` per field (~0.8 us for
    PUBLISH); setting the slots through their descriptors costs about half.
    Only for values the parser has already validated.
    """
    new = object.__new__
    setters = [Publish.__dict__[f.name].__set__ for f in fields(Publish)]
    if len(setters) != 7:  # pragma: no cover - guards a change to Publish's fields
        raise AssertionError("Publish fields changed; update _publish_factory")
    s_topic, s_payload, s_qos, s_retain, s_dup, s_packet_id, s_properties = setters

    def make_publish(topic, payload, qos, retain, dup, packet_id, properties):  # type: ignore[no-untyped-def]
        packet = new(Publish)
        s_topic(packet, topic)
        s_payload(packet, payload)
        s_qos(packet, qos)
        s_retain(packet, retain)
        s_dup(packet, dup)
        s_packet_id(packet, packet_id)
        s_properties(packet, properties)
        return packet

    return make_publish


_make_publish = _publish_factory()


def parse_publish(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Publish:
    # QoS 3 and DUP with QoS 0 were rejected with the fixed header.
    qos = (first >> 1) & 3
    if pos + 2 > end:
        raise _short("the topic name length")
    topic_start = pos + 2
    pos = topic_end = topic_start + ((data[pos] << 8) | data[pos + 1])
    if qos:
        if pos + 2 > end:
            raise _short("the topic name or packet identifier")
        packet_id = (data[pos] << 8) | data[pos + 1]
        if not packet_id:
            raise packet_id_error(dec._version)
        pos += 2
    else:
        packet_id = None
        if pos > end:
            raise _short("the topic name")
    try:
        topic = data[topic_start:topic_end].decode("utf-8")
    except UnicodeDecodeError:
        raise malformed(rule("utf8", dec._version), "ill-formed UTF-8 in topic name") from None
    if "+" in topic or "#" in topic or "\x00" in topic:
        if "\x00" in topic:
            raise malformed(rule("utf8_nul", dec._version), "topic name contains U+0000")
        raise ProtocolError(
            ReasonCode.TOPIC_NAME_INVALID, "MQTT-3.3.2-2", f"topic name {topic!r} contains a wildcard"
        )
    if dec._version is V5:
        if pos < end and data[pos] == 0:  # no properties: the common case
            props = EMPTY_PROPERTIES
            pos += 1
        else:
            reader = Reader(data, pos, end, V5)
            props = decode_properties(reader, _T.PUBLISH)
            pos = reader.pos
            if props.subscription_identifiers and dec._server_side:
                raise protocol_error(
                    "MQTT-3.3.4-6", "PUBLISH from a client carries a subscription identifier"
                )
        if not topic and props.topic_alias is None:
            raise protocol_error("", "empty topic name without a topic alias", section="3.3.2.3.4")
    else:
        props = EMPTY_PROPERTIES
        if not topic:
            raise ProtocolError(ReasonCode.TOPIC_NAME_INVALID, "MQTT-4.7.3-1", "topic name is empty")
    return _make_publish(topic, data[pos:end], qos, bool(first & 1), bool(first & 8), packet_id, props)


# ------------------------------------------------------------------ CONNECT


def parse_connect(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Connect:
    r = Reader(data, pos, end, None)
    name = r.raw(r.u16("protocol name"), "protocol name")
    level = r.u8("protocol level")
    if name != b"MQTT":
        raise ProtocolError(
            ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, "MQTT-3.1.2-1", f"protocol name {name!r}"
        )
    if level not in (4, 5):
        raise ProtocolError(
            ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, "MQTT-3.1.2-2", f"protocol level {level}"
        )
    version = ProtocolVersion(level)
    dec._set_version(version)  # known now, so a failing CONNECT can still get a CONNACK
    r.version = version
    v5 = version is V5
    flags = r.u8("connect flags")
    if flags & 0x01:
        raise malformed("MQTT-3.1.2-3", "reserved connect flag is set")
    will_flag = flags & 0x04
    will_qos = (flags >> 3) & 3
    will_retain = bool(flags & 0x20)
    if not will_flag:
        if will_qos:
            raise malformed("MQTT-3.1.2-11" if v5 else "MQTT-3.1.2-13", "will QoS without will flag")
        if will_retain:
            raise malformed("MQTT-3.1.2-13" if v5 else "MQTT-3.1.2-15", "will retain without will flag")
    elif will_qos == 3:
        raise malformed("MQTT-3.1.2-12" if v5 else "MQTT-3.1.2-14", "will QoS is 3")
    has_username = flags & 0x80
    has_password = flags & 0x40
    if has_password and not has_username and not v5:
        raise malformed("MQTT-3.1.2-22", "password flag without user name flag")
    keepalive_s = r.u16("keep alive")
    props = decode_properties(r, _T.CONNECT) if v5 else EMPTY_PROPERTIES
    client_id = r.utf8("client identifier")
    will = None
    if will_flag:
        will_props = decode_properties(r, WILL_PROPERTIES) if v5 else EMPTY_PROPERTIES
        will_topic = r.utf8("will topic")
        validate_topic_name(will_topic, version)
        will = Will(will_topic, r.binary("will payload"), will_qos, will_retain, will_props)
    username = r.utf8("user name") if has_username else None
    password = r.binary("password") if has_password else None
    r.expect_end("the CONNECT payload")
    return Connect(client_id, version, bool(flags & 0x02), keepalive_s, username, password, will, props)


def parse_connack(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Connack:
    version = dec._version
    r = Reader(data, pos, end, version)
    ack_flags = r.u8("connect acknowledge flags")
    if ack_flags & 0xFE:
        raise malformed(rule("connack_flags", version), "reserved CONNACK flags are set",
                        section="3.2.2.1")
    code = r.u8("connect reason code")
    if version is V5:
        reason = _reason_code(code, CONNACK_CODES, "MQTT-3.2.2-8", "CONNACK")
        props = decode_properties(r, _T.CONNACK)
    else:
        if code not in V311_CONNACK_DECODE:
            raise malformed("", f"CONNACK return code {code} is reserved", section="3.2.2.3")
        reason = V311_CONNACK_DECODE[code]
        props = EMPTY_PROPERTIES
    r.expect_end("CONNACK")
    session_present = bool(ack_flags)
    if session_present and reason:
        raise protocol_error(
            rule("connack_session_present", version), "session present with a failure code"
        )
    return Connack(session_present, reason, props)


# ------------------------------------------------------------------ acknowledgements


def _ack_parser(cls: type, ptype: PacketType, allowed: frozenset[ReasonCode], rule_id: str) -> Parser:
    name = ptype.name

    def parse_ack(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Packet:
        length = end - pos
        if length < 2:
            raise _short(f"the {name} packet identifier")
        packet_id = (data[pos] << 8) | data[pos + 1]
        if not packet_id:
            raise packet_id_error(dec._version)
        if length == 2:
            return cls(packet_id)
        if dec._version is not V5:
            raise malformed("", f"{name} remaining length is {length}, not 2", section=f"3.{int(ptype)}.1")
        reason = _reason_code(data[pos + 2], allowed, rule_id, name)
        if length == 3:  # reason code, no Property Length (section 3.4.2.2.1)
            return cls(packet_id, reason)
        r = Reader(data, pos + 3, end, V5)
        props = decode_properties(r, ptype)
        r.expect_end(name)
        return cls(packet_id, reason, props)

    parse_ack.__name__ = f"parse_{name.lower()}"
    return parse_ack


parse_puback = _ack_parser(Puback, _T.PUBACK, PUBACK_CODES, "MQTT-3.4.2-1")
parse_pubrec = _ack_parser(Pubrec, _T.PUBREC, PUBREC_CODES, "MQTT-3.5.2-1")
parse_pubrel = _ack_parser(Pubrel, _T.PUBREL, PUBREL_CODES, "MQTT-3.6.2-1")
parse_pubcomp = _ack_parser(Pubcomp, _T.PUBCOMP, PUBCOMP_CODES, "MQTT-3.7.2-1")


# ------------------------------------------------------------------ subscriptions


def parse_subscribe(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Subscribe:
    version = dec._version
    v5 = version is V5
    r = Reader(data, pos, end, version)
    packet_id = r.u16("packet identifier")
    if not packet_id:
        raise packet_id_error(version)
    props = decode_properties(r, _T.SUBSCRIBE) if v5 else EMPTY_PROPERTIES
    subscriptions = []
    while r.pos < end:
        topic_filter = r.utf8("topic filter")
        options = r.u8("subscription options")
        qos = options & 0x03
        if v5:
            if options & 0xC0:
                raise malformed("MQTT-3.8.3-5", "reserved subscription option bits are set")
            if qos == 3:
                raise protocol_error("", "maximum QoS 3 in subscription options", section="3.8.3.1")
            retain_handling = (options >> 4) & 0x03
            if retain_handling == 3:
                raise protocol_error("", "retain handling 3 in subscription options", section="3.8.3.1")
        else:
            if options & 0xFC or qos == 3:
                raise malformed(rule("subscribe_options_reserved", version),
                                f"requested QoS byte 0x{options:02X} is invalid")
            retain_handling = 0
        validate_topic_filter(topic_filter, version)
        no_local = bool(options & 0x04)
        if no_local and v5 and topic_filter.startswith(SHARE_PREFIX):
            raise protocol_error("MQTT-3.8.3-4", "no local set on a shared subscription")
        subscriptions.append(
            Subscription(topic_filter, qos, no_local, bool(options & 0x08), retain_handling)
        )
    if not subscriptions:
        raise protocol_error(rule("subscribe_empty", version), "SUBSCRIBE without topic filters")
    return Subscribe(packet_id, tuple(subscriptions), props)


def parse_suback(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Suback:
    version = dec._version
    r = Reader(data, pos, end, version)
    packet_id = r.u16("packet identifier")
    if not packet_id:
        raise packet_id_error(version)
    props = decode_properties(r, _T.SUBACK) if version is V5 else EMPTY_PROPERTIES
    raw = r.rest()
    if not raw:
        raise protocol_error("", "SUBACK without reason codes", section="3.9.3")
    allowed = SUBACK_CODES if version is V5 else _V311_SUBACK_CODES
    codes = tuple(_reason_code(code, allowed, "MQTT-3.9.3-2", "SUBACK") for code in raw)
    return Suback(packet_id, codes, props)


_V311_SUBACK_CODES = frozenset(
    {ReasonCode.GRANTED_QOS_0, ReasonCode.GRANTED_QOS_1, ReasonCode.GRANTED_QOS_2,
     ReasonCode.UNSPECIFIED_ERROR}
)


def parse_unsubscribe(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Unsubscribe:
    version = dec._version
    r = Reader(data, pos, end, version)
    packet_id = r.u16("packet identifier")
    if not packet_id:
        raise packet_id_error(version)
    props = decode_properties(r, _T.UNSUBSCRIBE) if version is V5 else EMPTY_PROPERTIES
    filters = []
    while r.pos < end:
        topic_filter = r.utf8("topic filter")
        validate_topic_filter(topic_filter, version)
        filters.append(topic_filter)
    if not filters:
        raise protocol_error("MQTT-3.10.3-2", "UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, tuple(filters), props)


def parse_unsuback(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Unsuback:
    version = dec._version
    r = Reader(data, pos, end, version)
    packet_id = r.u16("packet identifier")
    if not packet_id:
        raise packet_id_error(version)
    if version is not V5:
        r.expect_end("UNSUBACK")
        return Unsuback(packet_id)
    props = decode_properties(r, _T.UNSUBACK)
    raw = r.rest()
    if not raw:
        raise protocol_error("", "UNSUBACK without reason codes", section="3.11.3")
    codes = tuple(_reason_code(code, UNSUBACK_CODES, "MQTT-3.11.3-2", "UNSUBACK") for code in raw)
    return Unsuback(packet_id, codes, props)


# ------------------------------------------------------------------ the rest


def parse_pingreq(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Pingreq:
    if end != pos:
        raise malformed("", "PINGREQ has a non-zero remaining length", section="3.12.1")
    return _PINGREQ


def parse_pingresp(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Pingresp:
    if end != pos:
        raise malformed("", "PINGRESP has a non-zero remaining length", section="3.13.1")
    return _PINGRESP


def parse_disconnect(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Disconnect:
    if pos == end:
        return Disconnect()
    if dec._version is not V5:
        raise malformed("", "DISCONNECT has a non-zero remaining length", section="3.14.1")
    reason = _reason_code(data[pos], DISCONNECT_CODES, "MQTT-3.14.2-1", "DISCONNECT")
    if end - pos == 1:  # Property Length omitted (section 3.14.2.2.1)
        return Disconnect(reason)
    r = Reader(data, pos + 1, end, V5)
    props = decode_properties(r, _T.DISCONNECT)
    r.expect_end("DISCONNECT")
    if props.session_expiry_interval is not None and not dec._server_side:
        raise protocol_error("MQTT-3.14.2-2", "server sent a session expiry interval in DISCONNECT")
    return Disconnect(reason, props)


def parse_auth(dec: Decoder, first: int, data: bytes, pos: int, end: int) -> Auth:
    if pos == end:
        return Auth()
    reason = _reason_code(data[pos], AUTH_CODES, "MQTT-3.15.2-1", "AUTH")
    r = Reader(data, pos + 1, end, V5)
    props = decode_properties(r, _T.AUTH)  # AUTH has no short form with only a reason code
    r.expect_end("AUTH")
    return Auth(reason, props)


PARSERS: dict[PacketType, Parser] = {
    _T.CONNECT: parse_connect,
    _T.CONNACK: parse_connack,
    _T.PUBLISH: parse_publish,
    _T.PUBACK: parse_puback,
    _T.PUBREC: parse_pubrec,
    _T.PUBREL: parse_pubrel,
    _T.PUBCOMP: parse_pubcomp,
    _T.SUBSCRIBE: parse_subscribe,
    _T.SUBACK: parse_suback,
    _T.UNSUBSCRIBE: parse_unsubscribe,
    _T.UNSUBACK: parse_unsuback,
    _T.PINGREQ: parse_pingreq,
    _T.PINGRESP: parse_pingresp,
    _T.DISCONNECT: parse_disconnect,
    _T.AUTH: parse_auth,
}
