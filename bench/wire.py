"""The load generator's wire format: pre-encoded packets and a minimal client-side frame scanner.

Sans-IO like `gateway/mqtt/`: bytes in, counts out; no sockets, no clocks (the
caller passes `now_ns`). The slow, rare packets (CONNECT, SUBSCRIBE) are
encoded with Ferry's own codec; the hot ones (PUBLISH, PUBACK, PINGREQ) are
pre-encoded once so a send is a `bytes.join` and a receive a few index
operations per message.

Every benchmark PUBLISH carries a 64-byte payload whose first 8 bytes are the
send time (`time.monotonic_ns()`, big-endian; CLOCK_MONOTONIC is one clock for
every process on the host) and whose next 4 bytes are the publisher's index.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ferry.bench.model import COARSE_MS, FINE_US, Histogram
from ferry.gateway.mqtt import Connect, ProtocolVersion, Subscribe, Subscription, encode, encode_publish, encode_topic

V311 = ProtocolVersion.V311
PAYLOAD_BYTES = 64
TIMESTAMP_BYTES = 8
PINGREQ = b"\xc0\x00"
PINGRESP_FIRST = 0xD0
DISCONNECT = b"\xe0\x00"
_PUBLISH_TYPE = 0x30
_PUBACK_FIRST = 0x40
_CONNACK_FIRST = 0x20
_SUBACK_FIRST = 0x90
_unpack_ts = struct.Struct(">Q").unpack_from
_pack_ts = struct.Struct(">Q").pack

# PUBACK for every packet id, built once: acking is a table look-up and a join.
PUBACKS = tuple(bytes((_PUBACK_FIRST, 2, pid >> 8, pid & 0xFF)) for pid in range(65_536))
PACKET_IDS = tuple(bytes((pid >> 8, pid & 0xFF)) for pid in range(65_536))


def topic_for(prefix: str, publisher: int) -> str:
    """A fixed-width topic per publisher, so every PUBLISH of a run has the same size."""
    return f"{prefix}/{publisher:05d}"


def connect_bytes(client_id: str, *, clean: bool, keepalive_s: int) -> bytes:
    return encode(Connect(client_id, V311, clean, keepalive_s), V311)


def subscribe_bytes(topic_filter: str, qos: int, packet_id: int = 1) -> bytes:
    return encode(Subscribe(packet_id, (Subscription(topic_filter, qos),)), V311)


def timestamp(now_ns: int) -> bytes:
    return _pack_ts(now_ns)


@dataclass(frozen=True, slots=True)
class PublishTemplate:
    """One publisher's PUBLISH with a hole for the send time (and, for QoS 1, the packet id).

    QoS 0: a batch of `n` messages stamped with the same time is
    `ts.join(batch_parts(n))`, one C-level call. QoS 1:
    `b"".join((head, PACKET_IDS[pid], ts, tail))`.
    """

    qos: int
    head: bytes
    """Fixed header and topic (QoS 1: up to the packet id; QoS 0: up to the timestamp)."""
    tail: bytes
    """The payload after the timestamp."""
    size: int
    """Bytes per PUBLISH."""

    @classmethod
    def build(cls, topic: str, publisher: int, qos: int, payload_bytes: int = PAYLOAD_BYTES) -> "PublishTemplate":
        if payload_bytes < TIMESTAMP_BYTES + 4:
            raise ValueError(f"payload of {payload_bytes} bytes cannot hold the timestamp and publisher index")
        tail = publisher.to_bytes(4, "big") + bytes(payload_bytes - TIMESTAMP_BYTES - 4)
        placeholder = bytes(TIMESTAMP_BYTES)
        frame = encode_publish(encode_topic(topic), placeholder + tail, qos, packet_id=1 if qos else None)
        cut = len(frame) - payload_bytes
        head = frame[:cut - 2] if qos else frame[:cut]
        return cls(qos, head, tail, len(frame))

    def batch_parts(self, count: int) -> list[bytes]:
        """Pieces to join with a timestamp into `count` QoS 0 PUBLISH packets."""
        if self.qos:
            raise ValueError("batches are for QoS 0; QoS 1 messages each need a packet id")
        between = self.tail + self.head
        return [self.head, *([between] * (count - 1)), self.tail]

    def one(self, ts: bytes, packet_id: int = 0) -> bytes:
        if self.qos:
            return b"".join((self.head, PACKET_IDS[packet_id], ts, self.tail))
        return b"".join((self.head, ts, self.tail))


@dataclass(slots=True)
class ScanResult:
    """What one `Scanner.feed` found; reset by the caller between feeds when it wants deltas."""

    publishes: int = 0
    publish_ids: list[int] = field(default_factory=list)
    """Packet ids of QoS 1 PUBLISHes received (to acknowledge)."""
    acks: list[int] = field(default_factory=list)
    """Packet ids of PUBACKs received."""
    pingresps: int = 0
    connack_codes: list[int] = field(default_factory=list)
    suback_codes: list[int] = field(default_factory=list)
    unexpected: list[int] = field(default_factory=list)
    """First bytes of any other packet (the generator treats them as errors)."""


class Scanner:
    """A client-side MQTT 3.1.1 frame scanner for the benchmark's hot path.

    Not a validating decoder (that is `ferry.gateway.mqtt.Decoder`): it trusts the
    broker, reads only what the benchmark needs, and keeps at most one partial
    frame. Latencies (`now_ns` minus the embedded send time) are counted in
    `histogram` when it is not None.
    """

    __slots__ = ("_rest", "result", "histogram")

    def __init__(self) -> None:
        self._rest = b""
        self.result = ScanResult()
        self.histogram: Histogram | None = None

    @property
    def buffered(self) -> int:
        return len(self._rest)

    def feed(self, data: bytes, now_ns: int) -> ScanResult:
        if self._rest:
            data = self._rest + data
        result = self.result
        hist = self.histogram
        if hist is not None:
            fine, coarse = hist.fine, hist.coarse
        n = len(data)
        pos = 0
        count = 0
        unpack_ts = _unpack_ts
        while pos + 2 <= n:
            first = data[pos]
            length = data[pos + 1]
            header = 2
            if length & 0x80:
                length, header = long_length(data, pos, n)
                if not header:
                    break
            end = pos + header + length
            if end > n:
                break
            body = pos + header
            if first & 0xF0 == _PUBLISH_TYPE:
                p = body + 2 + ((data[body] << 8) | data[body + 1])
                if first & 0x06:
                    result.publish_ids.append((data[p] << 8) | data[p + 1])
                    p += 2
                count += 1
                if hist is not None and end - p >= TIMESTAMP_BYTES:
                    us = (now_ns - unpack_ts(data, p)[0]) // 1000
                    if 0 <= us < FINE_US:
                        fine[us] += 1
                    else:
                        coarse[min(max(us, 0) // 1000, COARSE_MS - 1)] += 1
            elif first == _PUBACK_FIRST:
                result.acks.append((data[body] << 8) | data[body + 1])
            elif first == PINGRESP_FIRST:
                result.pingresps += 1
            elif first == _CONNACK_FIRST:
                result.connack_codes.append(data[body + 1])
            elif first == _SUBACK_FIRST:
                result.suback_codes.extend(data[body + 2:end])
            else:
                result.unexpected.append(first)
            pos = end
        result.publishes += count
        self._rest = data[pos:] if pos < n else b""
        return result


def long_length(data: bytes, pos: int, n: int) -> tuple[int, int]:
    """Remaining length of 2-4 bytes: (value, header size), or (0, 0) while incomplete."""
    value = 0
    for i in range(1, 5):
        if pos + i >= n:
            return 0, 0
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * (i - 1))
        if byte < 0x80:
            return value, i + 1
    raise ValueError("remaining length longer than four bytes")
