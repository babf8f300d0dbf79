"""Every rule the decoder enforces raises ProtocolError with its reason code and rule id.

Packets are written out as hex by hand; ``C311``/``C5`` are minimal CONNECTs
that put a server-side decoder into the connected state first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.gateway.mqtt import (
    Connect,
    Decoder,
    Disconnect,
    ProtocolError,
    ProtocolVersion,
    Publish,
    ReasonCode,
    encode,
)

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL = ReasonCode.PROTOCOL_ERROR
TOPIC_NAME = ReasonCode.TOPIC_NAME_INVALID
TOPIC_FILTER = ReasonCode.TOPIC_FILTER_INVALID
UNSUPPORTED = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION

C311 = bytes.fromhex("100c00044d5154540402003c0000")
C5 = bytes.fromhex("100e00044d51545405020000000001 63".replace(" ", ""))


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def server(version: ProtocolVersion | None, max_packet_size: int = 268_435_455) -> Decoder:
    """A server-side decoder, past CONNECT unless ``version`` is None."""
    decoder = Decoder(server_side=True, max_packet_size=max_packet_size)
    if version is not None:
        assert len(decoder.feed(C311 if version == V311 else C5)) == 1
    return decoder


def client(version: ProtocolVersion) -> Decoder:
    return Decoder(server_side=False, protocol_version=version)


def assert_error(decoder: Decoder, data: bytes, reason: ReasonCode, rule: str, section: str = "") -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decoder.feed(data)
    err = info.value
    assert err.reason_code == reason, err
    assert err.rule == rule, err
    if rule:
        assert f"[{rule}]" in str(err)
    else:
        assert err.section == section and f"[section {section}]" in str(err)
    return err


# (id, side, version, bytes, reason code, rule, section)
#   side "s": server-side decoder (CONNECT already fed when version is set),
#   side "s0": fresh server-side decoder, side "c": client-side decoder.
CASES = [
    # --- CONNECT and the connection's first packet
    ("first packet not CONNECT", "s0", None, "30 03 00 01 74", PROTOCOL, "MQTT-3.1.0-1", ""),
    ("second CONNECT v311", "s", V311, C311.hex(), PROTOCOL, "MQTT-3.1.0-2", ""),
    ("second CONNECT v5", "s", V5, C5.hex(), PROTOCOL, "MQTT-3.1.0-2", ""),
    ("protocol name MQIsdp", "s0", None, "10 0e 00 06 4d 51 49 73 64 70 03 02 00 3c 00 00", UNSUPPORTED, "MQTT-3.1.2-1", ""),
    ("protocol level 6", "s0", None, "10 0c 00 04 4d 51 54 54 06 02 00 3c 00 00", UNSUPPORTED, "MQTT-3.1.2-2", ""),
    ("protocol level 3 with name MQTT", "s0", None, "10 0c 00 04 4d 51 54 54 03 02 00 3c 00 00", UNSUPPORTED, "MQTT-3.1.2-2", ""),
    ("reserved connect flag", "s0", None, "10 0c 00 04 4d 51 54 54 04 03 00 3c 00 00", MALFORMED, "MQTT-3.1.2-3", ""),
    ("v311 will QoS without will flag", "s0", None, "10 0c 00 04 4d 51 54 54 04 0a 00 3c 00 00", MALFORMED, "MQTT-3.1.2-13", ""),
    ("v5 will QoS without will flag", "s0", None, "10 0d 00 04 4d 51 54 54 05 0a 00 3c 00 00 00", MALFORMED, "MQTT-3.1.2-11", ""),
    ("v311 will retain without will flag", "s0", None, "10 0c 00 04 4d 51 54 54 04 22 00 3c 00 00", MALFORMED, "MQTT-3.1.2-15", ""),
    ("v5 will retain without will flag", "s0", None, "10 0d 00 04 4d 51 54 54 05 22 00 3c 00 00 00", MALFORMED, "MQTT-3.1.2-13", ""),
    ("v311 will QoS 3", "s0", None, "10 0c 00 04 4d 51 54 54 04 1e 00 3c 00 00", MALFORMED, "MQTT-3.1.2-14", ""),
    ("v5 will QoS 3", "s0", None, "10 0d 00 04 4d 51 54 54 05 1e 00 3c 00 00 00", MALFORMED, "MQTT-3.1.2-12", ""),
    ("v311 password without user name", "s0", None, "10 0f 00 04 4d 51 54 54 04 42 00 3c 00 00 00 01 70", MALFORMED, "MQTT-3.1.2-22", ""),
    ("will topic with wildcard", "s0", None, "10 14 00 04 4d 51 54 54 04 06 00 3c 00 00 00 03 61 2f 23 00 01 78", TOPIC_NAME, "MQTT-3.3.2-2", ""),
    ("client id with U+0000 v311", "s0", None, "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 00", MALFORMED, "MQTT-1.5.3-2", ""),
    ("client id with U+0000 v5", "s0", None, "10 0e 00 04 4d 51 54 54 05 02 00 3c 00 00 01 00", MALFORMED, "MQTT-1.5.4-2", ""),
    ("CONNECT with trailing bytes", "s0", None, "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 00 ff", MALFORMED, "", "2.1.4"),
    ("CONNECT truncated client id", "s0", None, "10 0c 00 04 4d 51 54 54 04 02 00 3c 00 05", MALFORMED, "", "2.1.4"),
    # --- fixed header
    ("v5 remaining length of five bytes", "s", V5, "30 ff ff ff ff 01", MALFORMED, "MQTT-1.5.5-1", ""),
    ("v311 remaining length of five bytes", "s", V311, "30 ff ff ff ff 01", MALFORMED, "", "2.2.3"),
    ("v5 remaining length not minimal", "s", V5, "c0 80 00", MALFORMED, "MQTT-1.5.5-1", ""),
    ("reserved packet type 0", "s", V5, "00 00", MALFORMED, "", "2.1.2"),
    ("v311 AUTH is a reserved type", "s", V311, "f0 00", MALFORMED, "", "2.1.2"),
    ("SUBSCRIBE flags 0000", "s", V311, "80 06 00 01 00 01 61 00", MALFORMED, "MQTT-3.8.1-1", ""),
    ("UNSUBSCRIBE flags 0000", "s", V5, "a0 06 00 01 00 00 01 61", MALFORMED, "MQTT-3.10.1-1", ""),
    ("PUBREL flags 0000", "s", V311, "60 02 00 01", MALFORMED, "MQTT-3.6.1-1", ""),
    ("v311 PINGREQ flags", "s", V311, "c1 00", MALFORMED, "MQTT-2.2.2-2", ""),
    ("v5 PUBACK flags", "s", V5, "48 02 00 01", MALFORMED, "MQTT-2.1.3-1", ""),
    ("DISCONNECT flags", "s", V311, "e1 00", MALFORMED, "MQTT-3.14.1-1", ""),
    ("AUTH flags", "s", V5, "f1 00", MALFORMED, "MQTT-3.15.1-1", ""),
    ("PUBLISH QoS 3", "s", V311, "36 06 00 01 74 00 01 78", MALFORMED, "MQTT-3.3.1-4", ""),
    ("PUBLISH DUP with QoS 0", "s", V5, "38 04 00 01 74 00", MALFORMED, "MQTT-3.3.1-2", ""),
    # --- direction
    ("server receives CONNACK", "s", V311, "20 02 00 00", PROTOCOL, "", "2.1.2"),
    ("server receives SUBACK", "s", V5, "90 04 00 01 00 00", PROTOCOL, "", "2.1.2"),
    ("client receives CONNECT", "c", V311, C311.hex(), PROTOCOL, "", "2.1.2"),
    ("client receives SUBSCRIBE", "c", V5, "82 07 00 01 00 00 01 61 00", PROTOCOL, "", "2.1.2"),
    ("client receives PINGREQ", "c", V5, "c0 00", PROTOCOL, "", "2.1.2"),
    ("v311 client receives DISCONNECT", "c", V311, "e0 00", PROTOCOL, "", "2.1.2"),
    # --- packet identifiers
    ("v311 PUBLISH packet id 0", "s", V311, "32 06 00 01 74 00 00 78", PROTOCOL, "MQTT-2.3.1-1", ""),
    ("v5 PUBLISH packet id 0", "s", V5, "32 07 00 01 74 00 00 00 78", PROTOCOL, "MQTT-2.2.1-3", ""),
    ("v311 SUBSCRIBE packet id 0", "s", V311, "82 06 00 00 00 01 61 00", PROTOCOL, "MQTT-2.3.1-1", ""),
    ("v5 UNSUBSCRIBE packet id 0", "s", V5, "a2 06 00 00 00 00 01 61", PROTOCOL, "MQTT-2.2.1-3", ""),
    ("v5 PUBACK packet id 0", "s", V5, "40 02 00 00", PROTOCOL, "MQTT-2.2.1-3", ""),
    # --- UTF-8 and topic names
    ("v311 ill-formed UTF-8 topic", "s", V311, "30 05 00 02 c3 28 78", MALFORMED, "MQTT-1.5.3-1", ""),
    ("v5 ill-formed UTF-8 topic", "s", V5, "30 06 00 02 c3 28 00 78", MALFORMED, "MQTT-1.5.4-1", ""),
    ("v5 UTF-8 encoded surrogate", "s", V5, "30 07 00 03 ed a0 80 00 78", MALFORMED, "MQTT-1.5.4-1", ""),
    ("v5 overlong UTF-8", "s", V5, "30 06 00 02 c0 af 00 78", MALFORMED, "MQTT-1.5.4-1", ""),
    ("v311 U+0000 in topic", "s", V311, "30 05 00 02 61 00 78", MALFORMED, "MQTT-1.5.3-2", ""),
    ("v5 U+0000 in user property", "s", V5, "30 0c 00 01 74 07 26 00 01 00 00 01 61 78", MALFORMED, "MQTT-1.5.4-2", ""),
    ("topic name with +", "s", V311, "30 05 00 02 61 2b 78", TOPIC_NAME, "MQTT-3.3.2-2", ""),
    ("topic name with #", "s", V5, "30 06 00 02 61 23 00 78", TOPIC_NAME, "MQTT-3.3.2-2", ""),
    ("v311 empty topic name", "s", V311, "30 03 00 00 78", TOPIC_NAME, "MQTT-4.7.3-1", ""),
    ("v5 empty topic name without alias", "s", V5, "30 04 00 00 00 78", PROTOCOL, "", "3.3.2.3.4"),
    ("PUBLISH truncated topic", "s", V311, "30 03 00 05 61", MALFORMED, "", "2.1.4"),
    ("PUBLISH QoS 1 without packet id", "s", V311, "32 03 00 01 74", MALFORMED, "", "2.1.4"),
    # --- SUBSCRIBE / UNSUBSCRIBE
    ("v311 SUBSCRIBE without filters", "s", V311, "82 02 00 01", PROTOCOL, "MQTT-3.8.3-3", ""),
    ("v5 SUBSCRIBE without filters", "s", V5, "82 03 00 01 00", PROTOCOL, "MQTT-3.8.3-2", ""),
    ("v311 UNSUBSCRIBE without filters", "s", V311, "a2 02 00 01", PROTOCOL, "MQTT-3.10.3-2", ""),
    ("v5 UNSUBSCRIBE without filters", "s", V5, "a2 03 00 01 00", PROTOCOL, "MQTT-3.10.3-2", ""),
    ("v311 # not last", "s", V311, "82 0a 00 01 00 05 61 2f 23 2f 62 00", TOPIC_FILTER, "MQTT-4.7.1-2", ""),
    ("v5 # not last", "s", V5, "82 0b 00 01 00 00 05 61 2f 23 2f 62 00", TOPIC_FILTER, "MQTT-4.7.1-1", ""),
    ("v5 # not after /", "s", V5, "82 08 00 01 00 00 02 61 23 00", TOPIC_FILTER, "MQTT-4.7.1-1", ""),
    ("v311 + not a whole level", "s", V311, "82 07 00 01 00 02 61 2b 00", TOPIC_FILTER, "MQTT-4.7.1-3", ""),
    ("v5 + not a whole level", "s", V5, "82 08 00 01 00 00 02 2b 61 00", TOPIC_FILTER, "MQTT-4.7.1-2", ""),
    ("empty topic filter", "s", V311, "82 05 00 01 00 00 00", TOPIC_FILTER, "MQTT-4.7.3-1", ""),
    ("UNSUBSCRIBE invalid filter", "s", V311, "a2 06 00 01 00 02 23 61", TOPIC_FILTER, "MQTT-4.7.1-2", ""),
    ("v311 subscription options reserved bits", "s", V311, "82 06 00 01 00 01 61 04", MALFORMED, "MQTT-3.8.3-4", ""),
    ("v311 requested QoS 3", "s", V311, "82 06 00 01 00 01 61 03", MALFORMED, "MQTT-3.8.3-4", ""),
    ("v5 subscription options reserved bits", "s", V5, "82 07 00 01 00 00 01 61 40", MALFORMED, "MQTT-3.8.3-5", ""),
    ("v5 maximum QoS 3", "s", V5, "82 07 00 01 00 00 01 61 03", PROTOCOL, "", "3.8.3.1"),
    ("v5 retain handling 3", "s", V5, "82 07 00 01 00 00 01 61 30", PROTOCOL, "", "3.8.3.1"),
    ("v5 no local on a shared subscription", "s", V5, "82 10 00 01 00 00 0a 24 73 68 61 72 65 2f 67 2f 61 04", PROTOCOL, "MQTT-3.8.3-4", ""),
    ("empty share name", "s", V5, "82 0f 00 01 00 00 09 24 73 68 61 72 65 2f 2f 61 00", TOPIC_FILTER, "MQTT-4.8.2-1", ""),
    ("share name with +", "s", V5, "82 11 00 01 00 00 0b 24 73 68 61 72 65 2f 67 2b 2f 61 00", TOPIC_FILTER, "MQTT-4.8.2-2", ""),
    ("share name without filter", "s", V5, "82 0f 00 01 00 00 09 24 73 68 61 72 65 2f 67 2f 00", TOPIC_FILTER, "MQTT-4.8.2-2", ""),
    ("SUBSCRIBE truncated filter", "s", V311, "82 04 00 01 00 05", MALFORMED, "", "2.1.4"),
    ("SUBSCRIBE filter without options byte", "s", V311, "82 05 00 01 00 01 61", MALFORMED, "", "2.1.4"),
    # --- MQTT 5 properties
    ("duplicate property", "s", V5, "30 0f 00 01 74 0a 02 00 00 00 01 02 00 00 00 02 78", PROTOCOL, "", "2.2.2.2"),
    ("property not allowed in PUBLISH", "s", V5, "30 0a 00 01 74 05 11 00 00 00 01 78", MALFORMED, "", "2.2.2.2"),
    ("unknown property identifier", "s", V5, "30 06 00 01 74 01 7f 78", MALFORMED, "", "2.2.2.2"),
    ("will delay interval in CONNECT properties", "s0", None, "10 13 00 04 4d 51 54 54 05 02 00 00 05 18 00 00 00 01 00 01 63", MALFORMED, "", "2.2.2.2"),
    ("property length beyond the packet", "s", V5, "30 05 00 01 74 09 78", MALFORMED, "", "2.2.2.1"),
    ("truncated property value", "s", V5, "30 06 00 01 74 02 02 00", MALFORMED, "", "2.1.4"),
    ("property VBI of five bytes", "s", V5, "82 0d 00 01 06 0b ff ff ff ff 7f 00 01 61 00", MALFORMED, "", "1.5.5"),
    ("subscription identifier 0", "s", V5, "82 09 00 01 02 0b 00 00 01 61 00", PROTOCOL, "", "3.3.2.3.8"),
    ("two subscription identifiers in SUBSCRIBE", "s", V5, "82 0b 00 01 04 0b 01 0b 02 00 01 61 00", PROTOCOL, "", "3.8.2.1.2"),
    ("subscription identifier sent by a client", "s", V5, "30 07 00 01 74 02 0b 01 78", PROTOCOL, "MQTT-3.3.4-6", ""),
    ("topic alias 0", "s", V5, "30 08 00 01 74 03 23 00 00 78", PROTOCOL, "MQTT-3.3.2-8", ""),
    ("receive maximum 0", "s0", None, "10 11 00 04 4d 51 54 54 05 02 00 00 03 21 00 00 00 01 63", PROTOCOL, "", "3.1.2.11.3"),
    ("maximum packet size 0", "s0", None, "10 13 00 04 4d 51 54 54 05 02 00 00 05 27 00 00 00 00 00 01 63", PROTOCOL, "", "3.1.2.11.4"),
    ("request problem information 2", "s0", None, "10 10 00 04 4d 51 54 54 05 02 00 00 02 17 02 00 01 63", PROTOCOL, "", "2.2.2.2"),
    ("authentication data without method", "s0", None, "10 12 00 04 4d 51 54 54 05 02 00 00 04 16 00 01 78 00 01 63", PROTOCOL, "", "3.1.2.11.10"),
    ("response topic with wildcard", "s", V5, "30 0a 00 01 74 05 08 00 02 61 23 78", PROTOCOL, "MQTT-3.3.2-14", ""),
    # --- acknowledgements and other packets
    ("v311 PUBACK with extra bytes", "s", V311, "40 03 00 01 00", MALFORMED, "", "3.4.1"),
    ("v311 PINGREQ with a body", "s", V311, "c0 01 00", MALFORMED, "", "3.12.1"),
    ("v311 DISCONNECT with a body", "s", V311, "e0 01 00", MALFORMED, "", "3.14.1"),
    ("PUBACK without packet id", "s", V5, "40 01 00", MALFORMED, "", "2.1.4"),
    ("v5 PUBACK reason code not allowed", "s", V5, "40 03 00 01 05", PROTOCOL, "MQTT-3.4.2-1", ""),
    ("v5 PUBREL reason code not allowed", "s", V5, "62 03 00 01 10", PROTOCOL, "MQTT-3.6.2-1", ""),
    ("v5 PUBACK with trailing bytes", "s", V5, "40 06 00 01 00 00 01 02", MALFORMED, "", "2.1.4"),
    ("v5 DISCONNECT reason code not allowed", "s", V5, "e0 01 01", PROTOCOL, "MQTT-3.14.2-1", ""),
    ("v5 AUTH reason code not allowed", "s", V5, "f0 02 87 00", PROTOCOL, "MQTT-3.15.2-1", ""),
    ("v5 AUTH with reason code but no property length", "s", V5, "f0 01 18", MALFORMED, "", "2.1.4"),
    ("v311 CONNACK return code 6", "c", V311, "20 02 00 06", MALFORMED, "", "3.2.2.3"),
    ("v311 CONNACK reserved flags", "c", V311, "20 02 02 00", MALFORMED, "", "3.2.2.1"),
    ("v5 CONNACK reserved flags", "c", V5, "20 03 02 00 00", MALFORMED, "MQTT-3.2.2-1", ""),
    ("v311 CONNACK session present with failure", "c", V311, "20 02 01 05", PROTOCOL, "MQTT-3.2.2-4", ""),
    ("v5 CONNACK session present with failure", "c", V5, "20 03 01 87 00", PROTOCOL, "MQTT-3.2.2-6", ""),
    ("v5 CONNACK reason code not allowed", "c", V5, "20 03 00 10 00", PROTOCOL, "MQTT-3.2.2-8", ""),
    ("v311 SUBACK return code 3", "c", V311, "90 03 00 01 03", PROTOCOL, "MQTT-3.9.3-2", ""),
    ("v5 SUBACK reason code not allowed", "c", V5, "90 04 00 01 00 04", PROTOCOL, "MQTT-3.9.3-2", ""),
    ("SUBACK without reason codes", "c", V311, "90 02 00 01", PROTOCOL, "", "3.9.3"),
    ("v5 UNSUBACK without reason codes", "c", V5, "b0 03 00 01 00", PROTOCOL, "", "3.11.3"),
    ("v5 UNSUBACK reason code not allowed", "c", V5, "b0 04 00 01 00 01", PROTOCOL, "MQTT-3.11.3-2", ""),
    ("v311 UNSUBACK with extra bytes", "c", V311, "b0 03 00 01 00", MALFORMED, "", "2.1.4"),
    ("server DISCONNECT with session expiry", "c", V5, "e0 07 00 05 11 00 00 00 01", PROTOCOL, "MQTT-3.14.2-2", ""),
    ("PINGRESP with a body", "c", V5, "d0 01 00", MALFORMED, "", "3.13.1"),
]


def _decoder(side: str, version: ProtocolVersion | None) -> Decoder:
    if side == "s0":
        return server(None)
    if side == "s":
        return server(version)
    assert version is not None
    return client(version)


@pytest.mark.parametrize(
    "side, version, data, reason, rule, section", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule_violation(
    side: str, version: ProtocolVersion | None, data: str, reason: ReasonCode, rule: str, section: str
) -> None:
    assert_error(_decoder(side, version), h(data), reason, rule, section)


@pytest.mark.parametrize(
    "side, version, data, reason, rule, section", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule_violation_byte_at_a_time(
    side: str, version: ProtocolVersion | None, data: str, reason: ReasonCode, rule: str, section: str
) -> None:
    decoder = _decoder(side, version)
    raw = h(data)
    with pytest.raises(ProtocolError) as info:
        for i in range(len(raw)):
            decoder.feed(raw[i : i + 1])
    assert (info.value.reason_code, info.value.rule, info.value.section) == (reason, rule, section)


def test_case_ids_are_unique() -> None:
    assert len({c[0] for c in CASES}) == len(CASES)


# ------------------------------------------------------------------ header-time checks


def test_first_byte_is_refused_before_the_rest_arrives() -> None:
    assert_error(server(None), b"\x30", PROTOCOL, "MQTT-3.1.0-1")
    assert_error(server(V311), b"\x80", MALFORMED, "MQTT-3.8.1-1")
    assert_error(server(V5), b"\x36", MALFORMED, "MQTT-3.3.1-4")


def test_too_large_is_refused_from_the_fixed_header_alone() -> None:
    decoder = server(V5, max_packet_size=100)
    # Remaining length 16383: only the fixed header is fed, no body.
    err = assert_error(decoder, b"\x30\xff\x7f", ReasonCode.PACKET_TOO_LARGE, "MQTT-3.2.2-15")
    assert "16386" in err.message
    assert_error(server(V311, max_packet_size=100), b"\x30\x63", ReasonCode.PACKET_TOO_LARGE, "", "2.2.3")
    assert_error(
        Decoder(server_side=False, protocol_version=V5, max_packet_size=10),
        b"\x30\x0a",
        ReasonCode.PACKET_TOO_LARGE,
        "MQTT-3.1.2-24",
    )


def test_max_packet_size_counts_the_whole_packet() -> None:
    packet = encode(Publish("t", b"x" * 10, 0), V311)  # 2 + 3 + 10 = 15 bytes
    assert len(packet) == 15
    assert len(server(V311, max_packet_size=15).feed(packet)) == 1
    assert_error(server(V311, max_packet_size=14), packet, ReasonCode.PACKET_TOO_LARGE, "", "2.2.3")


def test_connect_too_large_before_version_known() -> None:
    assert_error(Decoder(server_side=True, max_packet_size=10), C311, ReasonCode.PACKET_TOO_LARGE, "", "2.2.3")


def test_remaining_length_of_five_bytes_fails_without_the_fifth() -> None:
    assert_error(server(V5), b"\x30\xff\xff\xff\xff", MALFORMED, "MQTT-1.5.5-1")


def test_largest_remaining_length_is_accepted_as_header() -> None:
    decoder = server(V5, max_packet_size=268_435_460)  # 268,435,455 plus a 5-byte header
    assert decoder.feed(b"\x30\xff\xff\xff\x7f") == []  # waits for the body
    assert decoder.buffered == 5
    # The default limit (268,435,455 bytes in all) refuses the very largest packet.
    assert_error(server(V5), b"\x30\xff\xff\xff\x7f", ReasonCode.PACKET_TOO_LARGE, "MQTT-3.2.2-15")


# ------------------------------------------------------------------ error state


def test_error_is_sticky_and_keeps_earlier_packets() -> None:
    decoder = server(V311)
    good = encode(Publish("a", b"1", 0), V311)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(good + good + b"\x36\x00")
    assert info.value.packets == (Publish("a", b"1", 0), Publish("a", b"1", 0))
    with pytest.raises(ProtocolError) as again:
        decoder.feed(good)
    assert again.value is info.value
    with pytest.raises(ProtocolError):
        decoder.feed(b"")


def test_protocol_version_is_known_when_connect_fails_after_the_level_byte() -> None:
    decoder = server(None)
    with pytest.raises(ProtocolError):
        decoder.feed(h("10 0d 00 04 4d 51 54 54 05 03 00 3c 00 00 00"))  # reserved flag set
    assert decoder.protocol_version == V5


def test_protocol_version_from_connect() -> None:
    decoder = server(None)
    assert decoder.protocol_version is None
    decoder.feed(C311)
    assert decoder.protocol_version == V311


def test_error_attributes_and_str() -> None:
    err = assert_error(server(V5), h("30 06 00 02 61 23 00 78"), TOPIC_NAME, "MQTT-3.3.2-2")
    assert str(err).startswith("[MQTT-3.3.2-2] ")
    assert "TOPIC_NAME_INVALID" in str(err)
    assert isinstance(err, Exception)
    assert "MQTT-3.3.2-2" in repr(err)


def test_decoder_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Decoder(server_side=False)
    with pytest.raises(ValueError):
        Decoder(server_side=True, protocol_version=V5)
    with pytest.raises(ValueError):
        Decoder(server_side=True, max_packet_size=1)


def test_disconnect_is_fine_then_nothing_else_breaks() -> None:
    decoder = server(V5)
    assert decoder.feed(encode(Disconnect(), V5)) == [Disconnect()]


# ------------------------------------------------------------------ fuzzing

_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_PREFIXES = {
    "server, no CONNECT yet": (lambda: Decoder(server_side=True), b""),
    "server v311": (lambda: Decoder(server_side=True), C311),
    "server v5": (lambda: Decoder(server_side=True), C5),
    "client v311": (lambda: Decoder(server_side=False, protocol_version=V311), b""),
    "client v5": (lambda: Decoder(server_side=False, protocol_version=V5), b""),
}


def _feed_all(decoder: Decoder, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            decoder.feed(chunk)
    except ProtocolError as err:
        assert isinstance(err.reason_code, ReasonCode)
        assert err.rule or err.section


@_FUZZ
@given(st.sampled_from(sorted(_PREFIXES)), st.binary(max_size=300), st.integers(1, 64))
def test_random_bytes_raise_only_protocol_error(where: str, data: bytes, chunk: int) -> None:
    make, prefix = _PREFIXES[where]
    decoder = make()
    decoder.feed(prefix)
    _feed_all(decoder, [data[i : i + chunk] for i in range(0, len(data), chunk)])


def _valid_streams() -> list[tuple[str, bytes]]:
    """(decoder kind, bytes) for every golden vector, as seeds for mutation."""
    vectors = json.loads((Path(__file__).resolve().parents[2] / "vectors" / "mqtt" / "packets.json").read_text())
    streams = []
    for v in vectors:
        raw = h(v["hex"])
        suffix = "v5" if v["version"] == 5 else "v311"
        if v["direction"] == "server->client":
            streams.append((f"client {suffix}", raw))
        elif v["packet"]["type"] == "Connect":
            streams.append(("server, no CONNECT yet", raw))
        else:
            streams.append((f"server {suffix}", raw))
    return streams


VALID_STREAMS = _valid_streams()


@_FUZZ
@given(st.data())
def test_mutated_vectors_raise_only_protocol_error(data: st.DataObject) -> None:
    where, raw = data.draw(st.sampled_from(VALID_STREAMS))
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf.insert(i, data.draw(st.integers(0, 255)))
        elif op == "delete":
            del buf[i]
        else:
            del buf[i:]
    make, prefix = _PREFIXES[where]
    decoder = make()
    decoder.feed(prefix)
    _feed_all(decoder, [bytes(buf)])


def test_connect_encodes_what_it_decodes_for_the_prefixes() -> None:
    assert server(None).feed(C311) == [Connect("", V311, True, 60)]
    assert server(None).feed(C5) == [Connect("c", V5, True, 0)]
