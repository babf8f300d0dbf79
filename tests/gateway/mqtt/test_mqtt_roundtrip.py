"""Hypothesis round trips: random valid packets -> encode -> decode in random splits == original."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.gateway.mqtt import (
    EMPTY_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
    encode_properties,
    encode_publish,
    encode_topic,
)
from ferry.gateway.mqtt.reason_codes import (
    AUTH_CODES,
    CONNACK_CODES,
    DISCONNECT_CODES,
    PUBACK_CODES,
    PUBREL_CODES,
    SUBACK_CODES,
    UNSUBACK_CODES,
    V311_CONNACK_DECODE,
)

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
ROUND_TRIP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ building blocks

_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
text = st.text(_chars, max_size=12)
_level_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00+#/")
level = st.text(_level_chars, max_size=6)
topic_name = st.lists(level, min_size=1, max_size=4).map("/".join).filter(bool)
small_bytes = st.binary(max_size=40)
packet_id = st.integers(1, 0xFFFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
flag = st.integers(0, 1)


@st.composite
def topic_filter(draw: st.DrawFn, shared: bool = True) -> str:
    levels = draw(st.lists(st.one_of(level, st.just("+")), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    result = "/".join(levels)
    if not result:
        result = "#"
    if shared and draw(st.integers(0, 4)) == 0:
        group = draw(st.text(_level_chars, min_size=1, max_size=5))
        result = f"$share/{group}/{result}"
    return result


def codes(allowed: frozenset[ReasonCode]) -> st.SearchStrategy[ReasonCode]:
    return st.sampled_from(sorted(allowed))


# Value strategies for every property, by field name.
_PROPERTY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "payload_format_indicator": flag,
    "message_expiry_interval": u32,
    "content_type": text,
    "response_topic": topic_name,
    "correlation_data": small_bytes,
    "session_expiry_interval": u32,
    "assigned_client_identifier": text,
    "server_keep_alive": u16,
    "authentication_method": text,
    "authentication_data": small_bytes,
    "request_problem_information": flag,
    "will_delay_interval": u32,
    "request_response_information": flag,
    "response_information": text,
    "server_reference": text,
    "reason_string": text,
    "receive_maximum": st.integers(1, 0xFFFF),
    "topic_alias_maximum": u16,
    "topic_alias": st.integers(1, 0xFFFF),
    "maximum_qos": flag,
    "retain_available": flag,
    "maximum_packet_size": st.integers(1, 0xFFFF_FFFF),
    "wildcard_subscription_available": flag,
    "subscription_identifier_available": flag,
    "shared_subscription_available": flag,
}

_ALLOWED = {
    "PUBLISH": ["payload_format_indicator", "message_expiry_interval", "content_type", "response_topic",
                "correlation_data", "topic_alias"],
    "WILL": ["payload_format_indicator", "message_expiry_interval", "content_type", "response_topic",
             "correlation_data", "will_delay_interval"],
    "CONNECT": ["session_expiry_interval", "authentication_method", "authentication_data",
                "request_problem_information", "request_response_information", "receive_maximum",
                "topic_alias_maximum", "maximum_packet_size"],
    "CONNACK": ["session_expiry_interval", "assigned_client_identifier", "server_keep_alive",
                "authentication_method", "authentication_data", "response_information", "server_reference",
                "reason_string", "receive_maximum", "topic_alias_maximum", "maximum_qos", "retain_available",
                "maximum_packet_size", "wildcard_subscription_available", "subscription_identifier_available",
                "shared_subscription_available"],
    "ACK": ["reason_string"],
    "SUBSCRIBE": [],
    "UNSUBSCRIBE": [],
    "DISCONNECT": ["session_expiry_interval", "server_reference", "reason_string"],
    "AUTH": ["authentication_method", "authentication_data", "reason_string"],
}


@st.composite
def properties(draw: st.DrawFn, context: str, subscription_ids: int = 0) -> Properties:
    if draw(st.integers(0, 3)) == 0:
        return EMPTY_PROPERTIES
    names = draw(st.lists(st.sampled_from(_ALLOWED[context]), unique=True, max_size=4)) if _ALLOWED[context] else []
    values = {name: draw(_PROPERTY_VALUES[name]) for name in names}
    if "authentication_data" in values and "authentication_method" not in values:
        values["authentication_method"] = draw(text)
    values["user_properties"] = tuple(draw(st.lists(st.tuples(text, text), max_size=3)))
    if subscription_ids:
        values["subscription_identifiers"] = tuple(
            draw(st.lists(st.integers(1, 268_435_455), max_size=subscription_ids))
        )
    return Properties(**values)


def props_for(version: ProtocolVersion, context: str, subscription_ids: int = 0) -> st.SearchStrategy[Properties]:
    return properties(context, subscription_ids) if version == V5 else st.just(EMPTY_PROPERTIES)


# ------------------------------------------------------------------ packets


@st.composite
def publishes(draw: st.DrawFn, version: ProtocolVersion, from_server: bool) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(props_for(version, "PUBLISH", subscription_ids=3 if from_server else 0))
    topic = draw(topic_name)
    if version == V5 and props.topic_alias is not None and draw(st.booleans()):
        topic = ""
    return Publish(
        topic,
        draw(st.binary(max_size=300)),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(packet_id) if qos else None,
        props,
    )


@st.composite
def connects(draw: st.DrawFn, version: ProtocolVersion) -> Connect:
    username = draw(st.none() | text)
    password = draw(st.none() | small_bytes)
    if version == V311 and username is None:
        password = None
    will = None
    if draw(st.booleans()):
        will = Will(draw(topic_name), draw(small_bytes), draw(st.integers(0, 2)), draw(st.booleans()),
                    draw(props_for(version, "WILL")))
    return Connect(draw(text), version, draw(st.booleans()), draw(u16), username, password, will,
                   draw(props_for(version, "CONNECT")))


@st.composite
def connacks(draw: st.DrawFn, version: ProtocolVersion) -> Connack:
    allowed = CONNACK_CODES if version == V5 else frozenset(V311_CONNACK_DECODE.values())
    code = draw(codes(allowed))
    return Connack(code == ReasonCode.SUCCESS and draw(st.booleans()), code, draw(props_for(version, "CONNACK")))


@st.composite
def acks(draw: st.DrawFn, version: ProtocolVersion) -> Packet:
    cls = draw(st.sampled_from([Puback, Pubrec, Pubrel, Pubcomp]))
    if version == V311:
        return cls(draw(packet_id))
    allowed = PUBREL_CODES if cls in (Pubrel, Pubcomp) else PUBACK_CODES
    return cls(draw(packet_id), draw(codes(allowed)), draw(properties("ACK")))


@st.composite
def subscribes(draw: st.DrawFn, version: ProtocolVersion) -> Subscribe:
    subs = []
    for _ in range(draw(st.integers(1, 3))):
        topic_filter_ = draw(topic_filter())
        if version == V5:
            no_local = draw(st.booleans()) and not topic_filter_.startswith("$share/")
            subs.append(Subscription(topic_filter_, draw(st.integers(0, 2)), no_local, draw(st.booleans()),
                                     draw(st.integers(0, 2))))
        else:
            subs.append(Subscription(topic_filter_, draw(st.integers(0, 2))))
    return Subscribe(draw(packet_id), tuple(subs), draw(props_for(version, "SUBSCRIBE", subscription_ids=1)))


@st.composite
def subacks(draw: st.DrawFn, version: ProtocolVersion) -> Suback:
    allowed = SUBACK_CODES if version == V5 else frozenset(
        {ReasonCode.GRANTED_QOS_0, ReasonCode.GRANTED_QOS_1, ReasonCode.GRANTED_QOS_2, ReasonCode.UNSPECIFIED_ERROR}
    )
    reason_codes = tuple(draw(st.lists(codes(allowed), min_size=1, max_size=4)))
    return Suback(draw(packet_id), reason_codes, draw(props_for(version, "ACK")))


@st.composite
def unsubscribes(draw: st.DrawFn, version: ProtocolVersion) -> Unsubscribe:
    filters = tuple(draw(st.lists(topic_filter(), min_size=1, max_size=3)))
    return Unsubscribe(draw(packet_id), filters, draw(props_for(version, "UNSUBSCRIBE")))


@st.composite
def unsubacks(draw: st.DrawFn, version: ProtocolVersion) -> Unsuback:
    if version == V311:
        return Unsuback(draw(packet_id))
    reason_codes = tuple(draw(st.lists(codes(UNSUBACK_CODES), min_size=1, max_size=4)))
    return Unsuback(draw(packet_id), reason_codes, draw(properties("ACK")))


@st.composite
def disconnects(draw: st.DrawFn, version: ProtocolVersion, from_server: bool) -> Disconnect:
    if version == V311:
        return Disconnect()
    props = draw(properties("DISCONNECT"))
    if from_server and props.session_expiry_interval is not None:
        props = Properties(reason_string=props.reason_string, user_properties=props.user_properties)
    return Disconnect(draw(codes(DISCONNECT_CODES)), props)


@st.composite
def auths(draw: st.DrawFn) -> Auth:
    return Auth(draw(codes(AUTH_CODES)), draw(properties("AUTH")))


def client_packets(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    """Anything a client may send after CONNECT."""
    options = [publishes(version, from_server=False), acks(version), subscribes(version),
               unsubscribes(version), st.just(Pingreq()), disconnects(version, from_server=False)]
    if version == V5:
        options.append(auths())
    return st.one_of(options)


def server_packets(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    options = [connacks(version), publishes(version, from_server=True), acks(version), subacks(version),
               unsubacks(version), st.just(Pingresp())]
    if version == V5:
        options += [disconnects(version, from_server=True), auths()]
    return st.one_of(options)


# ------------------------------------------------------------------ the round trips


def _feed_in_splits(decoder: Decoder, data: bytes, cuts: list[int]) -> list[Packet]:
    out: list[Packet] = []
    start = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        out += decoder.feed(data[start:cut])
        start = cut
    return out


@ROUND_TRIP
@given(st.data(), st.sampled_from([V311, V5]))
def test_client_to_server_round_trip(data: st.DataObject, version: ProtocolVersion) -> None:
    packets = [data.draw(connects(version)), *data.draw(st.lists(client_packets(version), max_size=5))]
    stream = b"".join(encode(p, version) for p in packets)
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=8))
    decoder = Decoder(server_side=True)
    assert _feed_in_splits(decoder, stream, cuts) == packets
    assert decoder.protocol_version == version
    assert decoder.buffered == 0


@ROUND_TRIP
@given(st.data(), st.sampled_from([V311, V5]))
def test_server_to_client_round_trip(data: st.DataObject, version: ProtocolVersion) -> None:
    packets = data.draw(st.lists(server_packets(version), min_size=1, max_size=6))
    stream = b"".join(encode(p, version) for p in packets)
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=8))
    decoder = Decoder(server_side=False, protocol_version=version)
    assert _feed_in_splits(decoder, stream, cuts) == packets


@ROUND_TRIP
@given(publishes(V5, from_server=True), st.sampled_from([V311, V5]))
def test_encode_publish_matches_encode(packet: Publish, version: ProtocolVersion) -> None:
    if version == V311:
        packet = Publish(packet.topic or "t", packet.payload, packet.qos, packet.retain, packet.dup, packet.packet_id)
    props = encode_properties(packet.properties) if version == V5 else b""
    fast = encode_publish(encode_topic(packet.topic), packet.payload, packet.qos, packet.retain, packet.dup,
                          packet.packet_id, props, version)
    assert fast == encode(packet, version)


@ROUND_TRIP
@given(topic_name, st.binary(max_size=70_000))
def test_large_publish_round_trip_byte_counts(topic: str, payload: bytes) -> None:
    packet = Publish(topic, payload, 1, packet_id=7)
    data = encode(packet, V5)
    decoder = Decoder(server_side=False, protocol_version=V5)
    half = len(data) // 2
    assert decoder.feed(data[:half]) == []
    assert decoder.feed(data[half:]) == [packet]
