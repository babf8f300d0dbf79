"""Shared test data for the store suites: one record of each type, hypothesis strategies,
segment files built by hand."""

from __future__ import annotations

import threading

from hypothesis import strategies as st

from ferry.gateway.store.reader import RecordReader
from ferry.gateway.store.records import (
    Dequeued,
    Enqueued,
    IncomingQos2,
    IncomingReleased,
    InflightAssigned,
    MessageAdded,
    MsgIdHighWater,
    SpoolHead,
    PubcompReceived,
    PubrecReceived,
    Record,
    RetainCleared,
    RetainSet,
    SessionDeleted,
    SessionSaved,
    SubscriptionAdded,
    SubscriptionRemoved,
    encode_batch,
    encode_record,
    encode_segment_header,
)
from ferry.gateway.store.state import DurableState

SALT = bytes(range(16))
"""The salt of the segments built by :func:`segment_bytes`."""

ONE_OF_EACH: list[Record] = [
    MessageAdded(7, "ferry/site-1/dev-01/telemetry", b"\x00\xff" * 32, 1, True,
                 b"\x01\x01\x02\x00\x00\x00\x3c", 1_732_480_000_123, "dev-01"),
    MessageAdded(2**64 - 1, "", b"", 2, False, b"", None, ""),
    SessionSaved("dev-01", 5, 2**32 - 1),
    SessionDeleted("dev-01"),
    SubscriptionAdded("app", "ferry/+/+/telemetry", 1, True, True, 2, 268_435_455),
    SubscriptionAdded("app", "#", 0, False, False, 0, None),
    SubscriptionRemoved("app", "#"),
    Enqueued("app", 7, 1, (1, 2, 268_435_455)),
    Enqueued("app", 8, 0, ()),
    InflightAssigned("app", 7, 65535),
    Dequeued("app", 7),
    PubrecReceived("app", 1),
    PubcompReceived("app", 1),
    IncomingQos2("dev-01", 42),
    IncomingReleased("dev-01", 42),
    RetainSet("ferry/site-1/dev-01/status", 7),
    RetainCleared("ferry/site-1/dev-01/status"),
    MsgIdHighWater(123),
    SpoolHead(2**40),
]

text = st.text(st.characters(codec="utf-8"), max_size=12)
u8 = st.integers(0, 255)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
blob = st.binary(max_size=40)

records = st.one_of(
    st.builds(MessageAdded, u64, text, blob, u8, st.booleans(), blob, st.none() | u64, text),
    st.builds(SessionSaved, text, u8, u32),
    st.builds(SessionDeleted, text),
    st.builds(SubscriptionAdded, text, text, u8, st.booleans(), st.booleans(), u8,
              st.none() | u32),
    st.builds(SubscriptionRemoved, text, text),
    st.builds(Enqueued, text, u64, u8, st.lists(u32, max_size=4).map(tuple)),
    st.builds(InflightAssigned, text, u64, u16),
    st.builds(Dequeued, text, u64),
    st.builds(PubrecReceived, text, u16),
    st.builds(PubcompReceived, text, u16),
    st.builds(IncomingQos2, text, u16),
    st.builds(IncomingReleased, text, u16),
    st.builds(RetainSet, text, u64),
    st.builds(RetainCleared, text),
    st.builds(MsgIdHighWater, u64),
    st.builds(SpoolHead, u64),
)

# Small id spaces so that random operations hit each other: the same client,
# message, packet id or topic comes up again and again, dangling or not.
_client = st.sampled_from(["c0", "c1", "c2"])
_msg = st.integers(1, 8)
_packet = st.integers(1, 4)
_topic = st.sampled_from(["t/0", "t/1", "t/2"])
_filter = st.sampled_from(["t/#", "t/+", "#"])

state_ops = st.one_of(
    st.builds(MessageAdded, _msg, _topic, st.binary(max_size=8), st.integers(1, 2),
              st.booleans(), st.just(b""), st.none() | st.integers(0, 10**13), _client),
    st.builds(SessionSaved, _client, st.sampled_from([4, 5]), st.integers(0, 3600)),
    st.builds(SessionDeleted, _client),
    st.builds(SubscriptionAdded, _client, _filter, st.integers(0, 2), st.booleans(),
              st.booleans(), st.integers(0, 2), st.none() | st.integers(1, 9)),
    st.builds(SubscriptionRemoved, _client, _filter),
    st.builds(Enqueued, _client, _msg, st.integers(0, 2),
              st.lists(st.integers(1, 9), max_size=2).map(tuple)),
    st.builds(InflightAssigned, _client, _msg, _packet),
    st.builds(Dequeued, _client, _msg),
    st.builds(PubrecReceived, _client, _packet),
    st.builds(PubcompReceived, _client, _packet),
    st.builds(IncomingQos2, _client, _packet),
    st.builds(IncomingReleased, _client, _packet),
    st.builds(RetainSet, _topic, _msg),
    st.builds(RetainCleared, _topic),
)


def build_state(ops: list[Record]) -> DurableState:
    state = DurableState()
    for op in ops:
        state.apply(op)
    return state


def busy_state(clients: int = 5, messages: int = 40) -> tuple[DurableState, list[Record]]:
    """A state with a bit of everything, and the records that built it."""
    ops: list[Record] = []
    for c in range(clients):
        cid = f"client-{c}"
        ops.append(SessionSaved(cid, 5, 3600))
        ops.append(SubscriptionAdded(cid, f"site/{c}/#", 1, False, False, 0, c or None))
    for m in range(1, messages + 1):
        ops.append(MessageAdded(m, f"site/{m % clients}/x", bytes([m]) * 20, 1 + m % 2,
                                m % 5 == 0, b"", None if m % 3 else 10**12 + m, "pub"))
        ops.append(Enqueued(f"client-{m % clients}", m, 1, (m % clients,)))
        if m % 5 == 0:
            ops.append(RetainSet(f"site/{m % clients}/x", m))
        if m % 4 == 0:
            ops.append(InflightAssigned(f"client-{m % clients}", m, m % 60000 + 1))
        if m % 7 == 0:
            ops.append(Dequeued(f"client-{m % clients}", m))
    ops.append(IncomingQos2("client-1", 9))
    ops.append(PubrecReceived("client-2", 77))
    return build_state(ops), ops


class Commits:
    """An ``on_commit`` callback that remembers what it was called with, and where."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, batch_no: int) -> None:
        with self._cond:
            self.numbers.append(batch_no)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, batch_no: int, timeout_s: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(
                lambda: bool(self.numbers) and self.numbers[-1] >= batch_no, timeout_s
            ), f"batch {batch_no} not committed; got {self.numbers}"


def batch_bytes(records: list[Record], sequence: int, *, salt: bytes = SALT,
                segment: int = 1) -> bytes:
    """One batch as the journal's writer thread frames it."""
    return encode_batch(salt, segment, sequence, b"".join(map(encode_record, records)))


def segment_bytes(batches: list[list[Record]], *, salt: bytes = SALT, segment: int = 1) -> bytes:
    """A segment file holding these batches, numbered from 1, as the journal writes them."""
    return encode_segment_header(salt) + b"".join(
        batch_bytes(records, sequence, salt=salt, segment=segment)
        for sequence, records in enumerate(batches, 1))


def read_segment(data: bytes, *, salt: bytes = SALT,
                 segment: int = 1) -> tuple[list[Record], RecordReader]:
    """Every record a :class:`RecordReader` takes from ``data``, and the reader."""
    reader = RecordReader(data, salt, segment)
    return list(reader), reader
