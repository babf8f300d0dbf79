"""MQTT 5.0 properties: the table of section 2.2.2.2, and their codec.

``encode_properties`` is public so the broker can encode a stored message's
properties once and reuse the bytes for every subscriber (see
``encoder.encode_publish``).
"""

from __future__ import annotations

from typing import Any

from ._wire import (
    MAX_VBI,
    Reader,
    encode_binary,
    encode_utf8,
    encode_vbi,
    pack_u16,
    pack_u32,
)
from .errors import malformed, protocol_error
from .packets import EMPTY_PROPERTIES, PacketType, Properties, ProtocolVersion

__all__ = [
    "WILL_PROPERTIES",
    "decode_properties",
    "decode_properties_bytes",
    "encode_properties",
    "properties_is_empty",
]

# Context for the Will Properties in CONNECT's payload (not a packet type).
WILL_PROPERTIES = 0

_BYTE, _U16, _U32, _VBI, _STR, _BIN, _PAIR = range(7)

_T = PacketType
_W = WILL_PROPERTIES

# (identifier, field name, data type, contexts allowed to carry it), table 2-4.
_TABLE: tuple[tuple[int, str, int, frozenset[int]], ...] = (
    (0x01, "payload_format_indicator", _BYTE, frozenset({_T.PUBLISH, _W})),
    (0x02, "message_expiry_interval", _U32, frozenset({_T.PUBLISH, _W})),
    (0x03, "content_type", _STR, frozenset({_T.PUBLISH, _W})),
    (0x08, "response_topic", _STR, frozenset({_T.PUBLISH, _W})),
    (0x09, "correlation_data", _BIN, frozenset({_T.PUBLISH, _W})),
    (0x0B, "subscription_identifiers", _VBI, frozenset({_T.PUBLISH, _T.SUBSCRIBE})),
    (0x11, "session_expiry_interval", _U32, frozenset({_T.CONNECT, _T.CONNACK, _T.DISCONNECT})),
    (0x12, "assigned_client_identifier", _STR, frozenset({_T.CONNACK})),
    (0x13, "server_keep_alive", _U16, frozenset({_T.CONNACK})),
    (0x15, "authentication_method", _STR, frozenset({_T.CONNECT, _T.CONNACK, _T.AUTH})),
    (0x16, "authentication_data", _BIN, frozenset({_T.CONNECT, _T.CONNACK, _T.AUTH})),
    (0x17, "request_problem_information", _BYTE, frozenset({_T.CONNECT})),
    (0x18, "will_delay_interval", _U32, frozenset({_W})),
    (0x19, "request_response_information", _BYTE, frozenset({_T.CONNECT})),
    (0x1A, "response_information", _STR, frozenset({_T.CONNACK})),
    (0x1C, "server_reference", _STR, frozenset({_T.CONNACK, _T.DISCONNECT})),
    (
        0x1F,
        "reason_string",
        _STR,
        frozenset({
            _T.CONNACK, _T.PUBACK, _T.PUBREC, _T.PUBREL, _T.PUBCOMP, _T.SUBACK,
            _T.UNSUBACK, _T.DISCONNECT, _T.AUTH,
        }),
    ),
    (0x21, "receive_maximum", _U16, frozenset({_T.CONNECT, _T.CONNACK})),
    (0x22, "topic_alias_maximum", _U16, frozenset({_T.CONNECT, _T.CONNACK})),
    (0x23, "topic_alias", _U16, frozenset({_T.PUBLISH})),
    (0x24, "maximum_qos", _BYTE, frozenset({_T.CONNACK})),
    (0x25, "retain_available", _BYTE, frozenset({_T.CONNACK})),
    (
        0x26,
        "user_properties",
        _PAIR,
        frozenset({
            _T.CONNECT, _T.CONNACK, _T.PUBLISH, _W, _T.PUBACK, _T.PUBREC, _T.PUBREL,
            _T.PUBCOMP, _T.SUBSCRIBE, _T.SUBACK, _T.UNSUBSCRIBE, _T.UNSUBACK,
            _T.DISCONNECT, _T.AUTH,
        }),
    ),
    (0x27, "maximum_packet_size", _U32, frozenset({_T.CONNECT, _T.CONNACK})),
    (0x28, "wildcard_subscription_available", _BYTE, frozenset({_T.CONNACK})),
    (0x29, "subscription_identifier_available", _BYTE, frozenset({_T.CONNACK})),
    (0x2A, "shared_subscription_available", _BYTE, frozenset({_T.CONNACK})),
)

_BY_ID = {ident: (name, kind, contexts) for ident, name, kind, contexts in _TABLE}
_ENCODE_ORDER = tuple((bytes((ident,)), name, kind, contexts) for ident, name, kind, contexts in _TABLE)
_CONTEXT_NAMES = {_W: "Will Properties", **{t: t.name for t in PacketType}}

# Properties whose value 0 is a Protocol Error: name -> (rule, section).
_NONZERO = {
    "subscription_identifiers": ("", "3.3.2.3.8"),
    "topic_alias": ("MQTT-3.3.2-8", ""),
    "receive_maximum": ("", "3.1.2.11.3"),
    "maximum_packet_size": ("", "3.1.2.11.4"),
}


def decode_properties(reader: Reader, context: int) -> Properties:
    """Read a property section (length, then properties) for ``context``.

    ``context`` is a :class:`PacketType` or :data:`WILL_PROPERTIES`.
    """
    length = reader.vbi("property length")
    if length == 0:
        return EMPTY_PROPERTIES
    end = reader.pos + length
    if end > reader.end:
        raise malformed("", "property length exceeds the packet", section="2.2.2.1")
    sub = Reader(reader.data, reader.pos, end, reader.version)
    reader.pos = end
    values: dict[str, Any] = {}
    user_properties: list[tuple[str, str]] = []
    subscription_ids: list[int] = []
    while sub.pos < end:
        ident = sub.vbi("property identifier")
        entry = _BY_ID.get(ident)
        if entry is None or context not in entry[2]:
            raise malformed(
                "",
                f"property 0x{ident:02X} is not valid in {_CONTEXT_NAMES[context]}",
                section="2.2.2.2",
            )
        name, kind, _ = entry
        if kind == _PAIR:
            key = sub.utf8("user property name")
            user_properties.append((key, sub.utf8("user property value")))
            continue
        if kind == _BYTE:
            value: Any = sub.u8(name)
            if value > 1:
                raise protocol_error("", f"{name} is {value}, not 0 or 1", section="2.2.2.2")
        elif kind == _U16:
            value = sub.u16(name)
        elif kind == _U32:
            value = sub.u32(name)
        elif kind == _VBI:
            value = sub.vbi(name)
        elif kind == _STR:
            value = sub.utf8(name)
        else:
            value = sub.binary(name)
        if value == 0 and name in _NONZERO:
            rule_id, section = _NONZERO[name]
            raise protocol_error(rule_id, f"{name} is 0", section=section)
        if kind == _VBI:  # subscription identifier: repeatable in PUBLISH only
            if subscription_ids and context != PacketType.PUBLISH:
                raise protocol_error(
                    "", "subscription identifier included more than once", section="3.8.2.1.2"
                )
            subscription_ids.append(value)
            continue
        if name in values:
            raise protocol_error("", f"{name} included more than once", section="2.2.2.2")
        values[name] = value
    if user_properties:
        values["user_properties"] = tuple(user_properties)
    if subscription_ids:
        values["subscription_identifiers"] = tuple(subscription_ids)
    if "response_topic" in values:
        topic = values["response_topic"]
        if "+" in topic or "#" in topic:
            raise protocol_error("MQTT-3.3.2-14", "response topic contains a wildcard")
    if "authentication_data" in values and "authentication_method" not in values:
        raise protocol_error(
            "", "authentication data without authentication method", section="3.1.2.11.10"
        )
    return Properties(**values)


def decode_properties_bytes(data: bytes, packet_type: int = PacketType.PUBLISH) -> Properties:
    """Inverse of :func:`encode_properties`: one whole property section, Property Length included.

    ``b""`` is read as no properties.  Raises :class:`ProtocolError` like the decoder.
    """
    if not data:
        return EMPTY_PROPERTIES
    reader = Reader(bytes(data), 0, len(data), ProtocolVersion.V5)
    props = decode_properties(reader, packet_type)
    reader.expect_end("the property section")
    return props


def encode_properties(props: Properties, packet_type: int | None = None) -> bytes:
    """The property section for ``props``: Property Length, then each property.

    Properties are written in identifier order, user properties and subscription
    identifiers in tuple order.  With ``packet_type`` (a :class:`PacketType` or
    :data:`WILL_PROPERTIES`) a property the packet cannot carry is a ``ValueError``.
    """
    if props is EMPTY_PROPERTIES:
        return b"\x00"
    out: list[bytes] = []
    for ident, name, kind, contexts in _ENCODE_ORDER:
        value = getattr(props, name)
        if value is None or value == ():
            continue
        if packet_type is not None and packet_type not in contexts:
            raise ValueError(f"{name} cannot be sent in {_CONTEXT_NAMES[packet_type]} (table 2-4)")
        if kind == _PAIR:
            for key, val in value:
                out.append(ident)
                out.append(encode_utf8(key))
                out.append(encode_utf8(val))
            continue
        if kind == _VBI:
            for sub_id in value:
                if not 1 <= sub_id <= MAX_VBI:
                    raise ValueError(f"subscription identifier {sub_id} out of range (3.3.2.3.8)")
                out.append(ident)
                out.append(encode_vbi(sub_id))
            continue
        out.append(ident)
        if kind == _BYTE:
            if value not in (0, 1):
                raise ValueError(f"{name} must be 0 or 1, not {value!r}")
            out.append(b"\x01" if value else b"\x00")
        elif kind == _U16:
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"{name} {value} does not fit in two bytes")
            out.append(pack_u16(value))
        elif kind == _U32:
            if not 0 <= value <= 0xFFFF_FFFF:
                raise ValueError(f"{name} {value} does not fit in four bytes")
            out.append(pack_u32(value))
        elif kind == _STR:
            out.append(encode_utf8(value))
        else:
            out.append(encode_binary(value))
    body = b"".join(out)
    return encode_vbi(len(body)) + body


def properties_is_empty(props: Properties) -> bool:
    """True when no property is present (cheap for the shared empty instance)."""
    return props is EMPTY_PROPERTIES or props == EMPTY_PROPERTIES

