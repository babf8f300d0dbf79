"""Journal records, the batches that carry them, and segment headers: the on-disk codec.

Pure: no files, no clocks, no threads.  All integers are big-endian.

**Segment file** (``NNN.seg`` or ``NNN.snap``, see :mod:`.layout`)::

    [8s "FERRYSEG"][u32 format version][16s salt][u32 crc32]   segment header, 32 bytes
    [batch][batch]...

``crc32`` covers the 28 bytes before it.  The *salt* is 16 random bytes drawn
with :mod:`secrets` when the store is created, kept in the manifest and in
every segment header, and never sent anywhere else.

**Batch** (one group commit, or one slice of a snapshot)::

    [4s "FBAT"][16s salt][u64 segment][u64 sequence][u64 length][u32 crc32][frames]

A 48-byte header, then ``length`` bytes of record frames.  ``segment`` is the
number of the file the batch was written to; ``sequence`` counts the batches
of that file from 1; ``crc32`` covers ``segment``, ``sequence``, ``length`` and
the frames.  A batch is valid only as a whole.  Why: a batch's frames are
parsed one after another from its start, never searched for, so a record's
bytes inside another record's payload are only ever payload.  After damage
:class:`~.reader.RecordReader` resynchronises only at ``"FBAT"`` + the salt:
bytes from the network cannot contain the salt, because nothing on the
network ever carried it.

**Record frame** (one record, the unit inside a batch)::

    [u32 length][u32 crc32][u8 type][body]

``length`` counts the type byte and the body (so it is never 0); ``crc32`` is
``zlib.crc32`` of the type byte and the body.  Body fields appear in the
dataclass field order and are encoded as:

* ``str``: u16 byte length + UTF-8 (so at most 65,535 bytes);
* ``bytes``: u32 byte length + the bytes;
* ``bool``: u8, 0 or 1;
* ``msg_id``: u64; ``packet_id``: u16; ``qos``, ``protocol_version``,
  ``retain_handling``: u8; ``expiry_interval_s``: u32;
* ``expiry_at_ms: int | None``: u8 presence flag (0/1) + u64 (0 when absent);
* ``subscription_id: int | None``: u8 presence flag + u32 (0 when absent);
* ``subscription_ids: tuple[int, ...]``: u16 count + one u32 each.

A frame is at most :data:`MAX_RECORD_BYTES` long (the MQTT maximum packet size).

The record constructors do not validate (they sit on the broker's hot path);
:func:`encode_record` raises ``ValueError`` for a record it cannot represent,
so nothing unreadable is ever written.  Batch and segment headers cost
nothing per record: the journal frames each batch once, in its writer thread.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Union
from zlib import crc32

__all__ = [
    "BATCH_HEADER",
    "BATCH_MAGIC",
    "FORMAT_VERSION",
    "MAX_RECORD_BYTES",
    "SALT_BYTES",
    "SEGMENT_HEADER",
    "Dequeued",
    "Enqueued",
    "IncomingQos2",
    "IncomingReleased",
    "InflightAssigned",
    "MessageAdded",
    "MsgIdHighWater",
    "PubcompReceived",
    "PubrecReceived",
    "Record",
    "RetainCleared",
    "RetainSet",
    "SegmentHeader",
    "SessionDeleted",
    "SessionSaved",
    "SpoolHead",
    "SubscriptionAdded",
    "SubscriptionRemoved",
    "batch_crc",
    "decode_body",
    "decode_segment_header",
    "encode_batch",
    "encode_record",
    "encode_segment_header",
]

MAX_RECORD_BYTES = 0x0FFF_FFFF  # largest value of the frame's length field
FORMAT_VERSION = 2
"""The store format in segment headers and the manifest (1: frames without batches or salt)."""
SALT_BYTES = 16
SEGMENT_MAGIC = b"FERRYSEG"
BATCH_MAGIC = b"FBAT"
SEGMENT_HEADER = struct.Struct(">8sI16sI")
"""magic, format version, salt, crc32 of the preceding 28 bytes."""
BATCH_HEADER = struct.Struct(">4s16sQQQI")
"""magic, salt, segment, sequence, length, crc32 (of segment..length and the frames)."""
_BATCH_CHECKED = struct.Struct(">QQQ")  # segment, sequence, length: what the crc covers first


# --------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class MessageAdded:
    """A QoS 1/2 message the broker accepted.

    ``properties`` is the publish's encoded MQTT 5.0 property block, opaque to
    the store; ``origin`` is the publisher's client id.
    """

    record_type: ClassVar[int] = 1

    msg_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes
    expiry_at_ms: int | None
    origin: str


@dataclass(frozen=True, slots=True)
class SessionSaved:
    """A persistent session was created or its parameters changed."""

    record_type: ClassVar[int] = 2

    client_id: str
    protocol_version: int
    expiry_interval_s: int
    owner: str | None = None
    """The user name of the client that made it ("": anonymous); only that user may resume it.
    None: not known (records written before access control): the next client adopts it."""


@dataclass(frozen=True, slots=True)
class SessionDeleted:
    """A session ended: its subscriptions, queue and QoS 2 states go with it."""

    record_type: ClassVar[int] = 3

    client_id: str


@dataclass(frozen=True, slots=True)
class SubscriptionAdded:
    """A subscription was added or replaced (same client and filter)."""

    record_type: ClassVar[int] = 4

    client_id: str
    topic_filter: str
    qos: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int
    subscription_id: int | None


@dataclass(frozen=True, slots=True)
class SubscriptionRemoved:
    """A subscription was removed."""

    record_type: ClassVar[int] = 5

    client_id: str
    topic_filter: str


@dataclass(frozen=True, slots=True)
class Enqueued:
    """A message was queued for delivery to a client, at the granted QoS."""

    record_type: ClassVar[int] = 6

    client_id: str
    msg_id: int
    qos: int
    subscription_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class InflightAssigned:
    """A queued message was sent (or is about to be) with this packet id."""

    record_type: ClassVar[int] = 7

    client_id: str
    msg_id: int
    packet_id: int


@dataclass(frozen=True, slots=True)
class Dequeued:
    """A queued message left the queue: acknowledged, expired or dropped."""

    record_type: ClassVar[int] = 8

    client_id: str
    msg_id: int


@dataclass(frozen=True, slots=True)
class PubrecReceived:
    """Outgoing QoS 2: the client sent PUBREC, so only PUBREL is pending.

    This also ends the queue entry that holds ``packet_id``: no ``Dequeued``
    is needed (one that follows is counted as a dangling reference).
    """

    record_type: ClassVar[int] = 9

    client_id: str
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubcompReceived:
    """Outgoing QoS 2 finished: the packet id is free again."""

    record_type: ClassVar[int] = 10

    client_id: str
    packet_id: int


@dataclass(frozen=True, slots=True)
class IncomingQos2:
    """PUBREC was sent for an incoming QoS 2 publish; waiting for PUBREL."""

    record_type: ClassVar[int] = 11

    client_id: str
    packet_id: int


@dataclass(frozen=True, slots=True)
class IncomingReleased:
    """PUBREL received for an incoming QoS 2 publish: the packet id is free."""

    record_type: ClassVar[int] = 12

    client_id: str
    packet_id: int


@dataclass(frozen=True, slots=True)
class RetainSet:
    """``topic``'s retained message is now ``msg_id``."""

    record_type: ClassVar[int] = 13

    topic: str
    msg_id: int


@dataclass(frozen=True, slots=True)
class RetainCleared:
    """``topic`` has no retained message any more."""

    record_type: ClassVar[int] = 14

    topic: str


@dataclass(frozen=True, slots=True)
class MsgIdHighWater:
    """The highest message id ever assigned (emitted by snapshots only).

    A snapshot drops messages nobody references any more; this record keeps
    ``DurableState.max_msg_id`` from going backwards when it does.
    """

    record_type: ClassVar[int] = 15

    msg_id: int


@dataclass(frozen=True, slots=True)
class SpoolHead:
    """Every spool entry before ``seq`` is acknowledged by Kafka (see :mod:`.spool`)."""

    record_type: ClassVar[int] = 16

    seq: int


Record = Union[
    MessageAdded,
    SessionSaved,
    SessionDeleted,
    SubscriptionAdded,
    SubscriptionRemoved,
    Enqueued,
    InflightAssigned,
    Dequeued,
    PubrecReceived,
    PubcompReceived,
    IncomingQos2,
    IncomingReleased,
    RetainSet,
    RetainCleared,
    MsgIdHighWater,
    SpoolHead,
]

# ---------------------------------------------------------------------- encode

_HEADER = struct.Struct(">II")
FRAME_HEAD = struct.Struct(">IIB")
"""length, crc32, type: the first 9 bytes of a frame (used by :mod:`.reader`)."""
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
# Type byte + leading fixed fields + the length prefix of the first string.
_T_Q_H = struct.Struct(">BQH")  # type, msg_id, topic length
_T_H = struct.Struct(">BH")  # type, first string's length
_QOS_RETAIN_PLEN = struct.Struct(">BBI")  # qos, retain, properties length
_OPT64_H = struct.Struct(">BQH")  # expiry flag, expiry, origin length
_OPT64 = struct.Struct(">BQ")
_B_I = struct.Struct(">BI")  # protocol_version, expiry_interval_s
_SUB_TAIL = struct.Struct(">BBBBBI")  # qos, no_local, rap, retain_handling, flag, id
_Q_B_H = struct.Struct(">QBH")  # msg_id, qos, count
_Q_H = struct.Struct(">QH")  # msg_id, packet_id
_H_H = struct.Struct(">HH")

_pack_header = _HEADER.pack
_pack_u16 = _U16.pack
_pack_u32 = _U32.pack
_pack_u64 = _U64.pack
_join = b"".join
_pack_t_q_h = _T_Q_H.pack
_pack_qos_retain_plen = _QOS_RETAIN_PLEN.pack
_pack_opt64_h = _OPT64_H.pack


def _frame(body: bytes) -> bytes:
    """``body`` starts with the type byte."""
    if len(body) > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(body)} bytes exceeds {MAX_RECORD_BYTES}")
    return _pack_header(len(body), crc32(body)) + body


def _enc_message(r: MessageAdded) -> bytes:
    # The hot path (one per accepted publish): _frame() inlined.
    topic = r.topic.encode()
    origin = r.origin.encode()
    payload = r.payload
    props = r.properties
    expiry = r.expiry_at_ms
    body = _join((
        _pack_t_q_h(1, r.msg_id, len(topic)), topic,
        _pack_u32(len(payload)), payload,
        _pack_qos_retain_plen(r.qos, 1 if r.retain else 0, len(props)), props,
        _pack_opt64_h(0, 0, len(origin)) if expiry is None
        else _pack_opt64_h(1, expiry, len(origin)),
        origin,
    ))
    if len(body) > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(body)} bytes exceeds {MAX_RECORD_BYTES}")
    return _pack_header(len(body), crc32(body)) + body


def _enc_client(r: SessionDeleted) -> bytes:
    cid = r.client_id.encode()
    return _frame(_T_H.pack(r.record_type, len(cid)) + cid)


def _enc_session(r: SessionSaved) -> bytes:
    cid = r.client_id.encode()
    return _frame(_join((
        _T_H.pack(2, len(cid)), cid, _B_I.pack(r.protocol_version, r.expiry_interval_s),
    ) + (() if r.owner is None else (_pack_u16(len(owner := r.owner.encode())), owner))))


def _enc_client_filter(r: SubscriptionRemoved) -> bytes:
    cid = r.client_id.encode()
    flt = r.topic_filter.encode()
    return _frame(_join((_T_H.pack(5, len(cid)), cid, _pack_u16(len(flt)), flt)))


def _enc_subscription(r: SubscriptionAdded) -> bytes:
    cid = r.client_id.encode()
    flt = r.topic_filter.encode()
    sid = r.subscription_id
    return _frame(_join((
        _T_H.pack(4, len(cid)), cid, _pack_u16(len(flt)), flt,
        _SUB_TAIL.pack(
            r.qos, 1 if r.no_local else 0, 1 if r.retain_as_published else 0,
            r.retain_handling, 0 if sid is None else 1, 0 if sid is None else sid,
        ),
    )))


def _enc_enqueued(r: Enqueued) -> bytes:
    cid = r.client_id.encode()
    ids = r.subscription_ids
    return _frame(_join((
        _T_H.pack(6, len(cid)), cid, _Q_B_H.pack(r.msg_id, r.qos, len(ids)),
        struct.pack(f">{len(ids)}I", *ids) if ids else b"",
    )))


def _enc_inflight(r: InflightAssigned) -> bytes:
    cid = r.client_id.encode()
    return _frame(_join((_T_H.pack(7, len(cid)), cid, _Q_H.pack(r.msg_id, r.packet_id))))


def _enc_client_msg(r: Dequeued) -> bytes:
    cid = r.client_id.encode()
    return _frame(_join((_T_H.pack(8, len(cid)), cid, _pack_u64(r.msg_id))))


def _enc_client_packet(r: PubrecReceived) -> bytes:
    cid = r.client_id.encode()
    return _frame(_join((_T_H.pack(r.record_type, len(cid)), cid, _pack_u16(r.packet_id))))


def _enc_retain_set(r: RetainSet) -> bytes:
    topic = r.topic.encode()
    return _frame(_join((_T_H.pack(13, len(topic)), topic, _pack_u64(r.msg_id))))


def _enc_retain_cleared(r: RetainCleared) -> bytes:
    topic = r.topic.encode()
    return _frame(_T_H.pack(14, len(topic)) + topic)


def _enc_high_water(r: MsgIdHighWater) -> bytes:
    return _frame(b"\x0f" + _pack_u64(r.msg_id))


def _enc_spool_head(r: SpoolHead) -> bytes:
    return _frame(b"\x10" + _pack_u64(r.seq))


_ENCODERS: dict[type, Callable] = {
    MessageAdded: _enc_message,
    SessionSaved: _enc_session,
    SessionDeleted: _enc_client,
    SubscriptionAdded: _enc_subscription,
    SubscriptionRemoved: _enc_client_filter,
    Enqueued: _enc_enqueued,
    InflightAssigned: _enc_inflight,
    Dequeued: _enc_client_msg,
    PubrecReceived: _enc_client_packet,
    PubcompReceived: _enc_client_packet,
    IncomingQos2: _enc_client_packet,
    IncomingReleased: _enc_client_packet,
    RetainSet: _enc_retain_set,
    RetainCleared: _enc_retain_cleared,
    MsgIdHighWater: _enc_high_water,
    SpoolHead: _enc_spool_head,
}


def encode_record(record: Record) -> bytes:
    """One framed record.

    Raises ``ValueError`` if a field does not fit its wire type (a string over
    65,535 UTF-8 bytes, a negative or too large int, a lone surrogate, a frame
    over :data:`MAX_RECORD_BYTES`), and ``TypeError`` for a non-record.
    """
    try:
        return _ENCODERS[type(record)](record)
    except KeyError:
        raise TypeError(f"not a journal record: {record!r}") from None
    except struct.error as exc:
        raise ValueError(f"cannot encode {type(record).__name__}: {exc}") from None


# ---------------------------------------------------------------------- decode


class _Malformed(Exception):
    """A body that does not parse; only ever caught inside this module."""


MALFORMED = (_Malformed, struct.error, UnicodeDecodeError)
"""What a body decoder raises for a body that does not parse."""


def _str(b: bytes, o: int, e: int) -> tuple[str, int]:
    if o + 2 > e:
        raise _Malformed
    stop = o + 2 + b[o] * 256 + b[o + 1]
    if stop > e:
        raise _Malformed
    return b[o + 2:stop].decode(), stop


def _fixed(st: struct.Struct, b: bytes, o: int, e: int) -> tuple[tuple, int]:
    stop = o + st.size
    if stop > e:
        raise _Malformed
    return st.unpack_from(b, o), stop


def _flag(value: int) -> bool:
    if value > 1:
        raise _Malformed
    return value == 1


def _end(o: int, e: int) -> None:
    if o != e:
        raise _Malformed


def _dec_message(b: bytes, o: int, e: int) -> MessageAdded:
    (msg_id,), o = _fixed(_U64, b, o, e)
    topic, o = _str(b, o, e)
    (plen,), o = _fixed(_U32, b, o, e)
    if o + plen > e:
        raise _Malformed
    payload = b[o:o + plen]
    (qos, retain, prlen), o = _fixed(_QOS_RETAIN_PLEN, b, o + plen, e)
    if o + prlen > e:
        raise _Malformed
    props = b[o:o + prlen]
    (has_expiry, expiry), o = _fixed(_OPT64, b, o + prlen, e)
    if not _flag(has_expiry) and expiry:
        raise _Malformed
    origin, o = _str(b, o, e)
    _end(o, e)
    return MessageAdded(msg_id, topic, payload, qos, _flag(retain), props,
                        expiry if has_expiry else None, origin)




def _dec_session(b: bytes, o: int, e: int) -> SessionSaved:
    cid, o = _str(b, o, e)
    (version, expiry), o = _fixed(_B_I, b, o, e)
    owner = None
    if o < e:
        owner, o = _str(b, o, e)
    _end(o, e)
    return SessionSaved(cid, version, expiry, owner)


def _dec_client(cls: type) -> Callable[[bytes, int, int], Record]:
    def decode(b: bytes, o: int, e: int) -> Record:
        cid, o = _str(b, o, e)
        _end(o, e)
        return cls(cid)
    return decode


def _dec_subscription(b: bytes, o: int, e: int) -> SubscriptionAdded:
    cid, o = _str(b, o, e)
    flt, o = _str(b, o, e)
    (qos, no_local, rap, rh, has_id, sid), o = _fixed(_SUB_TAIL, b, o, e)
    _end(o, e)
    if not _flag(has_id) and sid:
        raise _Malformed
    return SubscriptionAdded(cid, flt, qos, _flag(no_local), _flag(rap), rh,
                             sid if has_id else None)


def _dec_sub_removed(b: bytes, o: int, e: int) -> SubscriptionRemoved:
    cid, o = _str(b, o, e)
    flt, o = _str(b, o, e)
    _end(o, e)
    return SubscriptionRemoved(cid, flt)


def _dec_enqueued(b: bytes, o: int, e: int) -> Enqueued:
    cid, o = _str(b, o, e)
    (msg_id, qos, count), o = _fixed(_Q_B_H, b, o, e)
    _end(o + 4 * count, e)
    ids = struct.unpack_from(f">{count}I", b, o) if count else ()
    return Enqueued(cid, msg_id, qos, ids)


def _dec_inflight(b: bytes, o: int, e: int) -> InflightAssigned:
    cid, o = _str(b, o, e)
    (msg_id, packet_id), o = _fixed(_Q_H, b, o, e)
    _end(o, e)
    return InflightAssigned(cid, msg_id, packet_id)


def _dec_client_msg(cls: type) -> Callable[[bytes, int, int], Record]:
    def decode(b: bytes, o: int, e: int) -> Record:
        name, o = _str(b, o, e)
        (msg_id,), o = _fixed(_U64, b, o, e)
        _end(o, e)
        return cls(name, msg_id)
    return decode


def _dec_client_packet(cls: type) -> Callable[[bytes, int, int], Record]:
    def decode(b: bytes, o: int, e: int) -> Record:
        cid, o = _str(b, o, e)
        (packet_id,), o = _fixed(_U16, b, o, e)
        _end(o, e)
        return cls(cid, packet_id)
    return decode


def _dec_high_water(b: bytes, o: int, e: int) -> MsgIdHighWater:
    (msg_id,), o = _fixed(_U64, b, o, e)
    _end(o, e)
    return MsgIdHighWater(msg_id)


def _dec_spool_head(b: bytes, o: int, e: int) -> SpoolHead:
    (seq,), o = _fixed(_U64, b, o, e)
    _end(o, e)
    return SpoolHead(seq)


# type byte -> decoder(buffer, body start, body end); raises MALFORMED.
BODY_DECODERS: dict[int, Callable[[bytes, int, int], Record]] = {
    1: _dec_message,
    2: _dec_session,
    3: _dec_client(SessionDeleted),
    4: _dec_subscription,
    5: _dec_sub_removed,
    6: _dec_enqueued,
    7: _dec_inflight,
    8: _dec_client_msg(Dequeued),
    9: _dec_client_packet(PubrecReceived),
    10: _dec_client_packet(PubcompReceived),
    11: _dec_client_packet(IncomingQos2),
    12: _dec_client_packet(IncomingReleased),
    13: _dec_client_msg(RetainSet),
    14: _dec_client(RetainCleared),
    15: _dec_high_water,
    16: _dec_spool_head,
}
assert {cls.record_type for cls in _ENCODERS} == set(BODY_DECODERS)


def decode_body(record_type: int, body: bytes) -> Record:
    """The record for one frame's type byte and body (CRC already checked).

    Raises ``ValueError`` for an unknown type or a body that does not parse.
    """
    decoder = BODY_DECODERS.get(record_type)
    if decoder is None:
        raise ValueError(f"unknown record type {record_type}")
    try:
        return decoder(body, 0, len(body))
    except MALFORMED:
        raise ValueError(f"malformed body for record type {record_type}") from None


# ------------------------------------------------- batches and segment headers


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """What a segment file says about itself."""

    format_version: int
    salt: bytes


def encode_segment_header(salt: bytes) -> bytes:
    """The 32 bytes every segment file starts with."""
    head = SEGMENT_MAGIC + _U32.pack(FORMAT_VERSION) + salt
    return head + _U32.pack(crc32(head))


def decode_segment_header(data: bytes) -> SegmentHeader | None:
    """The header ``data`` starts with, or None if it does not start with one that checks out
    (whatever its format version: the caller decides what it can read)."""
    if len(data) < SEGMENT_HEADER.size:
        return None
    magic, version, salt, crc = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC or crc32(data[:SEGMENT_HEADER.size - 4]) != crc:
        return None
    return SegmentHeader(version, salt)


def batch_crc(segment: int, sequence: int, frames: bytes | memoryview) -> int:
    """The crc32 a batch header carries for these fields and frames."""
    return crc32(frames, crc32(_BATCH_CHECKED.pack(segment, sequence, len(frames))))


def encode_batch(salt: bytes, segment: int, sequence: int, frames: bytes) -> bytes:
    """One batch: its header, then ``frames`` (records made by :func:`encode_record`)."""
    return BATCH_HEADER.pack(BATCH_MAGIC, salt, segment, sequence, len(frames),
                             batch_crc(segment, sequence, frames)) + frames
