"""The generator's frame scanner against packets from Ferry's own encoder, fed in any split."""

from __future__ import annotations

from ferry.bench import wire
from ferry.bench.model import Histogram
from ferry.gateway.mqtt import Connack, Pingresp, ProtocolVersion, Puback, ReasonCode, Suback, encode

V311 = ProtocolVersion.V311


def _stream() -> tuple[bytes, int]:
    sent_at = 1_000_000
    q0 = wire.PublishTemplate.build(wire.topic_for("bench", 3), 3, qos=0)
    q1 = wire.PublishTemplate.build(wire.topic_for("bench", 4), 4, qos=1)
    ts = wire.timestamp(sent_at)
    parts = [
        encode(Connack(False, ReasonCode.SUCCESS), V311),
        encode(Suback(1, (ReasonCode.GRANTED_QOS_1,)), V311),
        ts.join(q0.batch_parts(3)),
        q1.one(ts, 7),
        q1.one(ts, 65_535),
        encode(Puback(9), V311),
        encode(Pingresp(), V311),
    ]
    return b"".join(parts), sent_at


def test_scanner_counts_every_packet_in_any_split() -> None:
    data, sent_at = _stream()
    for step in (1, 2, 3, 7, len(data)):
        scanner = wire.Scanner()
        scanner.histogram = Histogram()
        for i in range(0, len(data), step):
            scanner.feed(data[i:i + step], now_ns=sent_at + 250_000)
        res = scanner.result
        assert res.connack_codes == [0]
        assert res.suback_codes == [1]
        assert res.publishes == 5
        assert res.publish_ids == [7, 65_535]
        assert res.acks == [9]
        assert res.pingresps == 1
        assert res.unexpected == []
        assert scanner.buffered == 0
        latency = scanner.histogram.latency()
        assert (latency.count, latency.p50_us, latency.max_us) == (5, 250.0, 250.0)


def test_templates_match_the_codec() -> None:
    from ferry.gateway.mqtt import Decoder

    template = wire.PublishTemplate.build("bench/00001", 1, qos=1)
    frame = template.one(wire.timestamp(42), 513)
    assert len(frame) == template.size
    (packet,) = Decoder(server_side=False, protocol_version=V311).feed(frame)
    assert (packet.topic, packet.qos, packet.packet_id, len(packet.payload)) == ("bench/00001", 1, 513, 64)
    assert packet.payload[:8] == (42).to_bytes(8, "big")
    assert wire.PUBACKS[513] == encode(Puback(513), V311)


def test_histogram_percentiles() -> None:
    hist = Histogram()
    for us in range(1, 101):
        hist.add(us * 1000)
    hist.add(250_000_000)  # 250 ms: a coarse (1 ms) bucket
    latency = hist.latency()
    assert latency.count == 101
    assert latency.p50_us == 51.0
    assert latency.p99_us == 100.0
    assert latency.max_us == 250_000.0
