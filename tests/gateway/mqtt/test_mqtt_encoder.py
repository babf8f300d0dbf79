"""Encoder behaviour beyond the golden vectors: version mapping, limits, refusals; module hygiene."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ferry.gateway.mqtt import (
    EMPTY_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    Pingreq,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
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
)

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
PACKAGE = Path(__file__).resolve().parents[3] / "gateway" / "mqtt"


def roundtrip_to_client(packet: object, version: ProtocolVersion) -> list[object]:
    return Decoder(server_side=False, protocol_version=version).feed(encode(packet, version))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "code, return_code, decoded",
    [
        (ReasonCode.SUCCESS, 0, ReasonCode.SUCCESS),
        (ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, 1, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION),
        (ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, 2, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID),
        (ReasonCode.SERVER_UNAVAILABLE, 3, ReasonCode.SERVER_UNAVAILABLE),
        (ReasonCode.BAD_USER_NAME_OR_PASSWORD, 4, ReasonCode.BAD_USER_NAME_OR_PASSWORD),
        (ReasonCode.NOT_AUTHORIZED, 5, ReasonCode.NOT_AUTHORIZED),
        (ReasonCode.SERVER_BUSY, 3, ReasonCode.SERVER_UNAVAILABLE),
        (ReasonCode.BANNED, 3, ReasonCode.SERVER_UNAVAILABLE),
        (ReasonCode.MALFORMED_PACKET, 3, ReasonCode.SERVER_UNAVAILABLE),
    ],
)
def test_v311_connack_return_codes(code: ReasonCode, return_code: int, decoded: ReasonCode) -> None:
    data = encode(Connack(False, code), V311)
    assert data == bytes((0x20, 0x02, 0x00, return_code))
    assert roundtrip_to_client(Connack(False, code), V311) == [Connack(False, decoded)]


def test_v311_drops_what_it_cannot_express() -> None:
    props = Properties(reason_string="why", user_properties=(("k", "v"),))
    assert encode(Puback(1, ReasonCode.QUOTA_EXCEEDED, props), V311) == bytes.fromhex("40020001")
    assert encode(Pubrel(2, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), V311) == bytes.fromhex("62020002")
    assert encode(Disconnect(ReasonCode.SERVER_SHUTTING_DOWN, props), V311) == bytes.fromhex("e000")
    assert encode(Unsuback(3, (ReasonCode.SUCCESS,), props), V311) == bytes.fromhex("b0020003")
    assert encode(Publish("t", b"x", 0, properties=Properties(message_expiry_interval=5)), V311) == bytes.fromhex(
        "3004000174 78".replace(" ", "")
    )
    sub = Subscribe(1, (Subscription("a", 1, no_local=True, retain_as_published=True, retain_handling=2),))
    assert encode(sub, V311) == bytes.fromhex("8206000100016101")
    will = Will("w", b"", 0, False, Properties(will_delay_interval=9))
    assert encode(Connect("c", V311, True, 0, will=will), V311) == bytes.fromhex(
        "1012 00044d515454 04 06 0000 000163 000177 0000".replace(" ", "")
    )


def test_v311_suback_maps_failures_to_0x80() -> None:
    codes = (ReasonCode.GRANTED_QOS_2, ReasonCode.NOT_AUTHORIZED, ReasonCode.QUOTA_EXCEEDED)
    assert encode(Suback(5, codes), V311) == bytes.fromhex("9005000502 80 80".replace(" ", ""))


def test_v5_short_forms() -> None:
    assert encode(Puback(1), V5) == bytes.fromhex("40020001")
    assert encode(Puback(1, ReasonCode.NO_MATCHING_SUBSCRIBERS), V5) == bytes.fromhex("4003000110")
    assert encode(Disconnect(), V5) == bytes.fromhex("e000")
    assert encode(Disconnect(ReasonCode.NORMAL_DISCONNECTION, Properties(reason_string="")), V5) == bytes.fromhex(
        "e005 00 03 1f0000".replace(" ", "")
    )
    assert encode(Auth(), V5) == bytes.fromhex("f000")
    # AUTH has no reason-code-only form: the Property Length is always sent.
    assert encode(Auth(ReasonCode.RE_AUTHENTICATE), V5) == bytes.fromhex("f0021900")


def test_multi_byte_remaining_lengths() -> None:
    # Remaining length 2 + 1 + 20000 = 20003 = 0x23 + 0x1c*128 + 1*128**2 -> a3 9c 01.
    data = encode(Publish("t", bytes(20_000), 0), V311)
    assert data[:7] == bytes.fromhex("30a39c01000174")
    assert len(data) == 4 + 20_003
    # 2,097,152 = 128**3 needs four bytes: 80 80 80 01.
    big = encode(Publish("t", bytes(2_097_152 - 3), 0), V311)
    assert big[:5] == bytes.fromhex("3080808001")
    decoder = Decoder(server_side=False, protocol_version=V311)
    assert decoder.feed(big) == [Publish("t", bytes(2_097_149), 0)]


@pytest.mark.parametrize(
    "packet, version",
    [
        (Publish("t", b"", 3, packet_id=1), V311),
        (Publish("t", b"", 1), V311),
        (Publish("t", b"", 1, packet_id=0), V5),
        (Publish("t", b"", 1, packet_id=65_536), V5),
        (Publish("t", b"", 0, packet_id=1), V311),
        (Publish("t", b"", 0, dup=True), V311),
        (Publish("a/#", b"", 0), V311),
        (Publish("", b"", 0), V311),
        (Publish("", b"", 0), V5),
        (Publish("t", b"", 0, properties=Properties(session_expiry_interval=1)), V5),
        (Publish("t", b"", 0, properties=Properties(payload_format_indicator=2)), V5),
        (Publish("t", b"", 0, properties=Properties(subscription_identifiers=(0,))), V5),
        (Connect("c", V5, True, 0), V311),
        (Connect("c", V311, True, 0, password=b"p"), V311),
        (Connect("c", V311, True, 70_000), V311),
        (Connect("c", V5, True, 0, will=Will("w/+", b"", 0, False)), V5),
        (Connect("c", V5, True, 0, will=Will("w", b"", 3, False)), V5),
        (Connack(True, ReasonCode.NOT_AUTHORIZED), V311),
        (Connack(False, ReasonCode.GRANTED_QOS_1), V311),
        (Connack(False, ReasonCode.NO_MATCHING_SUBSCRIBERS), V5),
        (Connack(False, ReasonCode.SUCCESS, Properties(topic_alias=1)), V5),
        (Puback(0), V311),
        (Puback(1, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), V5),
        (Subscribe(1, ()), V311),
        (Subscribe(1, (Subscription("a", 3),)), V311),
        (Subscribe(1, (Subscription("a", 0, retain_handling=3),)), V5),
        (Subscribe(1, (Subscription("a/#/b", 0),)), V5),
        (Unsubscribe(1, ("a+",)), V311),
        (Unsubscribe(1, ("$share//a",)), V5),
        (Suback(1, ()), V5),
        (Suback(1, (ReasonCode.NO_SUBSCRIPTION_EXISTED,)), V311),
        (Suback(1, (ReasonCode.NO_SUBSCRIPTION_EXISTED,)), V5),
        (Unsubscribe(1, ()), V5),
        (Unsuback(1), V5),
        (Disconnect(ReasonCode.GRANTED_QOS_1), V5),
        (Auth(), V311),
        (Auth(ReasonCode.NOT_AUTHORIZED), V5),
    ],
    ids=repr,
)
def test_impossible_packets_are_value_errors(packet: object, version: ProtocolVersion) -> None:
    with pytest.raises(ValueError):
        encode(packet, version)  # type: ignore[arg-type]


def test_encode_rejects_non_packets() -> None:
    with pytest.raises(TypeError):
        encode(object(), V5)  # type: ignore[arg-type]


def test_encode_properties() -> None:
    assert encode_properties(EMPTY_PROPERTIES) == b"\x00"
    assert encode_properties(Properties()) == b"\x00"
    props = Properties(user_properties=(("a", "b"), ("a", "c")), message_expiry_interval=1)
    assert encode_properties(props).hex(" ") == "13 02 00 00 00 01 26 00 01 61 00 01 62 26 00 01 61 00 01 63"
    with pytest.raises(ValueError):
        encode_properties(Properties(topic_alias=70_000))


def test_encode_publish_fan_out_helper() -> None:
    props = encode_properties(Properties(subscription_identifiers=(5,)))
    assert encode_publish(b"t", b"x", 1, False, False, 1) == bytes.fromhex("3206000174000178")
    assert encode_publish(b"t", b"x", 1, True, True, 1, props, V5) == bytes.fromhex("3b09 0001 74 0001 02 0b05 78".replace(" ", ""))
    assert encode_publish(b"t", b"x", 0, version=V5) == bytes.fromhex("300500017400 78".replace(" ", ""))
    with pytest.raises(ValueError):
        encode_publish(b"t", b"x", 1, packet_id=None)
    with pytest.raises(ValueError):
        encode_publish(b"t", b"x", 0, packet_id=3)


def test_pingreq_is_a_value() -> None:
    assert Pingreq() == Pingreq()
    assert encode(Pingreq(), V5) == b"\xc0\x00"


def test_reason_code_aliases() -> None:
    assert ReasonCode.NORMAL_DISCONNECTION is ReasonCode.SUCCESS
    assert ReasonCode.GRANTED_QOS_0 is ReasonCode.SUCCESS
    assert ReasonCode(0x9E) is ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
    assert ReasonCode.MALFORMED_PACKET.is_failure and not ReasonCode.GRANTED_QOS_2.is_failure


def test_packets_are_frozen_and_slotted() -> None:
    packet = Publish("t", b"x", 0)
    with pytest.raises(AttributeError):
        packet.qos = 1  # type: ignore[misc]
    assert not hasattr(packet, "__dict__")
    assert not hasattr(EMPTY_PROPERTIES, "__dict__")


# ------------------------------------------------------------------ module hygiene

FORBIDDEN = {"asyncio", "socket", "sqlite3", "ssl", "threading", "selectors", "time"}


def test_codec_imports_no_io_modules() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
    code = (
        "import sys, ferry.gateway.mqtt; "
        f"bad = {sorted(FORBIDDEN - {'time'})!r}; "
        "print(sorted(m for m in bad if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parents[1])
    assert out.stdout.strip() == "[]"


def test_no_module_is_over_700_lines() -> None:
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 700, path.name


def test_decode_properties_bytes_inverts_encode_properties() -> None:
    from ferry.gateway.mqtt import ProtocolError, decode_properties_bytes

    props = Properties(content_type="json", user_properties=(("a", "b"),), correlation_data=b"\x00")
    assert decode_properties_bytes(encode_properties(props)) == props
    assert decode_properties_bytes(b"") is EMPTY_PROPERTIES
    assert decode_properties_bytes(b"\x00") is EMPTY_PROPERTIES
    with pytest.raises(ProtocolError):
        decode_properties_bytes(encode_properties(props) + b"\x00")
    with pytest.raises(ProtocolError):
        decode_properties_bytes(encode_properties(Properties(topic_alias_maximum=1)))


@pytest.mark.parametrize("version", [ProtocolVersion.V311, ProtocolVersion.V5])
@pytest.mark.parametrize("reason", [ReasonCode.SUCCESS, ReasonCode.NO_MATCHING_SUBSCRIBERS, ReasonCode.QUOTA_EXCEEDED,
                                    ReasonCode.NOT_AUTHORIZED])
@pytest.mark.parametrize("packet_id", [1, 0x1234, 0xFFFF])
def test_the_publish_ack_shortcut_encodes_what_encode_does(version: ProtocolVersion, reason: ReasonCode,
                                                           packet_id: int) -> None:
    from ferry.gateway.mqtt import Pubrec, encode_publish_ack
    assert encode_publish_ack(1, packet_id, reason, version) == encode(Puback(packet_id, reason), version)
    assert encode_publish_ack(2, packet_id, reason, version) == encode(Pubrec(packet_id, reason), version)
    with pytest.raises(ValueError):
        encode_publish_ack(1, 0, reason, version)
