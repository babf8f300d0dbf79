"""Throughput of the MQTT codec's hot path (not a test).

    .venv/bin/python tests/gateway/mqtt/measure_codec.py

Prints packets/s for decoding and encoding a QoS 1 PUBLISH with a 64-byte
payload, for MQTT 3.1.1 and 5.0: decoding a batch as one TCP read would
deliver it, ``encode(Publish)``, and the fan-out helper ``encode_publish``
with the topic pre-encoded.
"""

from __future__ import annotations

import sys
import time

from ferry.gateway.mqtt import (
    Connect,
    Decoder,
    ProtocolVersion,
    Publish,
    encode,
    encode_publish,
    encode_topic,
)

TOPIC = "ferry/s/dev1/temp"
PAYLOAD = bytes(range(64))
BATCH = 1_000


def _rate(fn, count: int, repeats: int = 5, min_s: float = 0.3) -> float:
    """Best of ``repeats`` runs of at least ``min_s`` each (shared machines are noisy)."""
    best = 0.0
    for _ in range(repeats):
        rounds = 0
        start = time.perf_counter()
        while True:
            fn()
            rounds += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_s:
                break
        best = max(best, rounds * count / elapsed)
    return best


def measure(version: ProtocolVersion) -> dict[str, float]:
    packets = [Publish(TOPIC, PAYLOAD, 1, packet_id=i + 1) for i in range(BATCH)]
    stream = b"".join(encode(p, version) for p in packets)
    connect = encode(Connect("dev1", version, True, 60), version)

    def decode_batch() -> None:
        decoder = Decoder(server_side=True)
        decoder.feed(connect)
        decoder.feed(stream)

    def decode_small_reads() -> None:  # 1460-byte segments, split across packets
        decoder = Decoder(server_side=True)
        decoder.feed(connect)
        for i in range(0, len(stream), 1460):
            decoder.feed(stream[i : i + 1460])

    def encode_packets() -> None:
        for p in packets:
            encode(p, version)

    topic_bytes = encode_topic(TOPIC)

    def encode_fanout() -> None:
        for i in range(1, BATCH + 1):
            encode_publish(topic_bytes, PAYLOAD, 1, False, False, i, b"", version)

    return {
        "decode (one read)": _rate(decode_batch, BATCH),
        "decode (1460-byte reads)": _rate(decode_small_reads, BATCH),
        "encode(Publish)": _rate(encode_packets, BATCH),
        "encode_publish()": _rate(encode_fanout, BATCH),
    }


def main() -> None:
    print(f"64-byte QoS 1 PUBLISH, topic {TOPIC!r}, Python {sys.version.split()[0]}, best of 5")
    for version in (ProtocolVersion.V311, ProtocolVersion.V5):
        for name, rate in measure(version).items():
            print(f"  MQTT {'3.1.1' if version == 4 else '5.0  '}  {name:<26} {rate:>12,.0f} packets/s")


if __name__ == "__main__":
    main()
