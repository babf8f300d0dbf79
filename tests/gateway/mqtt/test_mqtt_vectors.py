"""Golden vectors (tests/vectors/mqtt/packets.json): decode(hex) == packet, encode(packet) == hex.

The hex strings were worked out by hand from the OASIS MQTT 3.1.1 and 5.0
specifications (and, for 3.1.1, from the bytes umqtt.simple 1.3.4 writes), not
produced by this encoder.  Vectors marked ``"canonical": false`` are legal
alternative encodings that the decoder must accept but the encoder never emits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import ferry.gateway.mqtt as mqtt
from ferry.gateway.mqtt import (
    Connect,
    Decoder,
    Properties,
    ProtocolVersion,
    ReasonCode,
    Subscription,
    Will,
    encode,
)

VECTORS_PATH = Path(__file__).resolve().parents[2] / "vectors" / "mqtt" / "packets.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())
BYTES_FIELDS = {"payload", "password", "correlation_data", "authentication_data"}


def _bytes(value: str | dict[str, Any]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes.fromhex(value["hex"]) * value.get("repeat", 1)


def _properties(spec: dict[str, Any]) -> Properties:
    kwargs: dict[str, Any] = {}
    for name, value in spec.items():
        if name in BYTES_FIELDS:
            value = _bytes(value)
        elif name == "user_properties":
            value = tuple((k, v) for k, v in value)
        elif name == "subscription_identifiers":
            value = tuple(value)
        kwargs[name] = value
    return Properties(**kwargs)


def packet_from_json(spec: dict[str, Any]) -> mqtt.Packet:
    """Build the packet a vector's JSON description stands for."""
    spec = dict(spec)
    cls = getattr(mqtt, spec.pop("type"))
    kwargs: dict[str, Any] = {}
    for name, value in spec.items():
        if name in BYTES_FIELDS:
            value = _bytes(value)
        elif name == "reason_code":
            value = ReasonCode[value]
        elif name == "reason_codes":
            value = tuple(ReasonCode[v] for v in value)
        elif name == "protocol_version":
            value = ProtocolVersion(value)
        elif name == "properties":
            value = _properties(value)
        elif name == "will":
            will = dict(value)
            will["payload"] = _bytes(will["payload"])
            will["properties"] = _properties(will.get("properties", {}))
            value = Will(**will)
        elif name == "subscriptions":
            value = tuple(Subscription(**s) for s in value)
        elif name == "topic_filters":
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def vector_bytes(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["hex"].replace(" ", ""))


def _connect_bytes(version: ProtocolVersion) -> bytes:
    return encode(Connect("prefix", version, True, 60), version)


def decoder_for(vector: dict[str, Any]) -> Decoder:
    """A decoder on the receiving side of the vector, past CONNECT when needed."""
    version = ProtocolVersion(vector["version"])
    if vector["direction"] == "server->client":
        return Decoder(server_side=False, protocol_version=version)
    decoder = Decoder(server_side=True)
    if vector["packet"]["type"] != "Connect":
        assert len(decoder.feed(_connect_bytes(version))) == 1
    return decoder


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def test_vector_file_covers_every_packet_type_in_both_versions() -> None:
    seen = {(v["version"], v["packet"]["type"]) for v in VECTORS}
    names = {cls.__name__ for cls in mqtt.Packet.__args__}
    for name in names:
        assert (5, name) in seen, name
        if name != "Auth":
            assert (4, name) in seen, name
    assert len({v["name"] for v in VECTORS}) == len(VECTORS), "vector names must be unique"


@pytest.mark.parametrize("vector", VECTORS, ids=_ids(VECTORS))
def test_decode_vector(vector: dict[str, Any]) -> None:
    decoder = decoder_for(vector)
    assert decoder.feed(vector_bytes(vector)) == [packet_from_json(vector["packet"])]
    assert decoder.buffered == 0


CANONICAL = [v for v in VECTORS if v.get("canonical", True)]


@pytest.mark.parametrize("vector", CANONICAL, ids=_ids(CANONICAL))
def test_encode_vector(vector: dict[str, Any]) -> None:
    packet = packet_from_json(vector["packet"])
    assert encode(packet, ProtocolVersion(vector["version"])).hex(" ") == vector_bytes(vector).hex(" ")


def _streams() -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """Concatenations of all vectors one decoder can receive in a row.

    Client->server streams must start with exactly one CONNECT, so each CONNECT
    vector leads its own stream followed by every other client->server vector.
    """
    streams = []
    for version in (4, 5):
        sent_by_client = [v for v in VECTORS if v["version"] == version and v["direction"] == "client->server"]
        connects = [v for v in sent_by_client if v["packet"]["type"] == "Connect"]
        others = [v for v in sent_by_client if v["packet"]["type"] != "Connect"]
        for connect in connects:
            streams.append((f"v{version} {connect['name']} + rest", connect, [connect, *others]))
        sent_by_server = [v for v in VECTORS if v["version"] == version and v["direction"] == "server->client"]
        streams.append((f"v{version} server->client", sent_by_server[0], sent_by_server))
    return streams


@pytest.mark.parametrize("name, first, vectors", _streams(), ids=[s[0] for s in _streams()])
def test_byte_at_a_time_equals_one_feed(name: str, first: dict[str, Any], vectors: list[dict[str, Any]]) -> None:
    stream = b"".join(vector_bytes(v) for v in vectors)
    expected = [packet_from_json(v["packet"]) for v in vectors]

    whole = decoder_for(first)
    assert whole.feed(stream) == expected

    trickle = decoder_for(first)
    got: list[mqtt.Packet] = []
    for i in range(len(stream)):
        got += trickle.feed(stream[i : i + 1])
    assert got == expected
    assert trickle.buffered == 0


def test_feed_accepts_bytearray_and_memoryview() -> None:
    vector = next(v for v in VECTORS if v["packet"]["type"] == "Publish" and v["version"] == 5)
    data = vector_bytes(vector)
    for chunk in (bytearray(data), memoryview(data)):
        decoder = decoder_for(vector)
        (packet,) = decoder.feed(chunk)
        assert type(packet.payload) is bytes
        assert packet == packet_from_json(vector["packet"])


def test_trickling_a_large_packet_is_linear() -> None:
    """A 200 kB PUBLISH fed one byte at a time is not re-copied on every byte."""
    version = ProtocolVersion.V5
    packet = mqtt.Publish("big", bytes(200_000), 1, packet_id=1)
    data = encode(packet, version)
    decoder = Decoder(server_side=False, protocol_version=version)
    start = time.perf_counter()
    got: list[mqtt.Packet] = []
    for i in range(len(data)):
        got += decoder.feed(data[i : i + 1])
    assert got == [packet]
    assert time.perf_counter() - start < 3.0
