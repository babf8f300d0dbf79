"""The state a journal represents: what :func:`recover` rebuilds.  Pure, no I/O.

:class:`DurableState` applies records in journal order and can emit a minimal
record sequence that rebuilds it (:meth:`DurableState.records`), which is what
a compaction snapshot writes.

Rules worth knowing when producing records:

* A message lives while a queue entry or a retained topic references it.  When
  its last reference goes (``Dequeued``, ``PubrecReceived``, ``RetainSet`` of
  another message, ``RetainCleared``, ``SessionDeleted``) it is dropped at
  once, so a message must be (re)added with ``MessageAdded`` before it is
  referenced again.  A message added but never referenced is garbage: kept
  until :meth:`DurableState.collect_garbage` (which :func:`recover` calls),
  never emitted by :meth:`DurableState.records`.
* Per-client data (subscriptions, queue, QoS 2 states) does not require a
  ``SessionSaved`` first; ``SessionDeleted`` removes all of it.
* ``PubrecReceived`` ends the queue entry that was assigned that packet id.
* A record that references something missing (``Dequeued`` of a message not in
  the queue, ``Enqueued`` or ``RetainSet`` of an unknown message, removing
  what is not there) changes nothing and is counted in
  :attr:`DurableState.dangling_references`; it never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from .records import (
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
)

__all__ = ["DurableState", "QueueEntry", "StateSummary"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One message queued for one client; ``packet_id`` is set once it is in flight."""

    qos: int
    subscription_ids: tuple[int, ...]
    packet_id: int | None = None


@dataclass(frozen=True, slots=True)
class StateSummary:
    """Sizes of a :class:`DurableState`, for logs and metrics."""

    sessions: int
    subscriptions: int
    messages: int
    queued: int
    pubrel_pending: int
    incoming_qos2: int
    retained: int
    max_msg_id: int


class DurableState:
    """Sessions, subscriptions, messages, queues, QoS 2 states and retained messages.

    The containers are public for reading; change them only through
    :meth:`apply`.  Ordered containers (dicts used as ordered maps or sets)
    keep the order in which entries were first added.
    """

    __slots__ = ("sessions", "subscriptions", "messages", "queues", "pubrel_pending",
                 "incoming_qos2", "retained", "max_msg_id", "spool_head", "dangling_references",
                 "_refs", "_inflight")

    def __init__(self) -> None:
        self.sessions: dict[str, SessionSaved] = {}
        self.subscriptions: dict[str, dict[str, SubscriptionAdded]] = {}
        self.messages: dict[int, MessageAdded] = {}
        self.queues: dict[str, dict[int, QueueEntry]] = {}
        # Outgoing QoS 2 after PUBREC: packet ids waiting for PUBCOMP (ordered sets).
        self.pubrel_pending: dict[str, dict[int, None]] = {}
        # Incoming QoS 2 after our PUBREC: packet ids waiting for PUBREL (ordered sets).
        self.incoming_qos2: dict[str, dict[int, None]] = {}
        self.retained: dict[str, int] = {}
        self.max_msg_id = 0
        self.spool_head = 0
        """The first spool entry Kafka has not acknowledged (``SpoolHead``)."""
        self.dangling_references = 0
        self._refs: dict[int, int] = {}  # msg_id -> queue entries + retained topics
        self._inflight: dict[str, dict[int, int]] = {}  # client -> packet_id -> msg_id

    # ------------------------------------------------------------------ apply

    def apply(self, record: Record) -> None:
        """Apply one record.  Never raises for content; see the module docstring."""
        _APPLY[type(record)](self, record)

    def _dangling(self, record: Record) -> None:
        self.dangling_references += 1
        logger.debug("dangling reference: %r", record)

    def _release(self, msg_id: int) -> None:
        refs = self._refs[msg_id] - 1
        if refs:
            self._refs[msg_id] = refs
        else:
            del self._refs[msg_id]
            del self.messages[msg_id]

    def _message_added(self, r: MessageAdded) -> None:
        self.messages[r.msg_id] = r
        if r.msg_id > self.max_msg_id:
            self.max_msg_id = r.msg_id

    def _spool_head(self, r: SpoolHead) -> None:
        if r.seq > self.spool_head:
            self.spool_head = r.seq

    def _high_water(self, r: MsgIdHighWater) -> None:
        if r.msg_id > self.max_msg_id:
            self.max_msg_id = r.msg_id

    def _session_saved(self, r: SessionSaved) -> None:
        self.sessions[r.client_id] = r

    def _session_deleted(self, r: SessionDeleted) -> None:
        cid = r.client_id
        found = self.sessions.pop(cid, None) is not None
        found |= self.subscriptions.pop(cid, None) is not None
        found |= self.pubrel_pending.pop(cid, None) is not None
        found |= self.incoming_qos2.pop(cid, None) is not None
        self._inflight.pop(cid, None)
        queue = self.queues.pop(cid, None)
        if queue is not None:
            found = True
            for msg_id in queue:
                self._release(msg_id)
        if not found:
            self._dangling(r)

    def _subscription_added(self, r: SubscriptionAdded) -> None:
        self.subscriptions.setdefault(r.client_id, {})[r.topic_filter] = r

    def _subscription_removed(self, r: SubscriptionRemoved) -> None:
        subs = self.subscriptions.get(r.client_id)
        if subs is None or subs.pop(r.topic_filter, None) is None:
            self._dangling(r)
        elif not subs:
            del self.subscriptions[r.client_id]

    def _enqueued(self, r: Enqueued) -> None:
        if r.msg_id not in self.messages:
            self._dangling(r)
            return
        queue = self.queues.setdefault(r.client_id, {})
        old = queue.get(r.msg_id)
        if old is None:
            self._refs[r.msg_id] = self._refs.get(r.msg_id, 0) + 1
        elif old.packet_id is not None:
            self._forget_packet(r.client_id, old.packet_id, r.msg_id)
        queue[r.msg_id] = QueueEntry(r.qos, tuple(r.subscription_ids))

    def _forget_packet(self, cid: str, packet_id: int, msg_id: int) -> None:
        packets = self._inflight.get(cid)
        if packets is not None and packets.get(packet_id) == msg_id:
            del packets[packet_id]
            if not packets:
                del self._inflight[cid]

    def _inflight_assigned(self, r: InflightAssigned) -> None:
        queue = self.queues.get(r.client_id)
        entry = None if queue is None else queue.get(r.msg_id)
        if entry is None:
            self._dangling(r)
            return
        if entry.packet_id is not None:
            self._forget_packet(r.client_id, entry.packet_id, r.msg_id)
        queue[r.msg_id] = replace(entry, packet_id=r.packet_id)
        self._inflight.setdefault(r.client_id, {})[r.packet_id] = r.msg_id

    def _remove_entry(self, cid: str, msg_id: int) -> bool:
        queue = self.queues.get(cid)
        entry = None if queue is None else queue.pop(msg_id, None)
        if entry is None:
            return False
        if not queue:
            del self.queues[cid]
        if entry.packet_id is not None:
            self._forget_packet(cid, entry.packet_id, msg_id)
        self._release(msg_id)
        return True

    def _dequeued(self, r: Dequeued) -> None:
        if not self._remove_entry(r.client_id, r.msg_id):
            self._dangling(r)

    def _pubrec_received(self, r: PubrecReceived) -> None:
        self.pubrel_pending.setdefault(r.client_id, {})[r.packet_id] = None
        packets = self._inflight.get(r.client_id)
        if packets is not None:
            msg_id = packets.get(r.packet_id)
            if msg_id is not None:
                self._remove_entry(r.client_id, msg_id)

    def _pubcomp_received(self, r: PubcompReceived) -> None:
        if not _discard(self.pubrel_pending, r.client_id, r.packet_id):
            self._dangling(r)

    def _incoming_qos2(self, r: IncomingQos2) -> None:
        self.incoming_qos2.setdefault(r.client_id, {})[r.packet_id] = None

    def _incoming_released(self, r: IncomingReleased) -> None:
        if not _discard(self.incoming_qos2, r.client_id, r.packet_id):
            self._dangling(r)

    def _retain_set(self, r: RetainSet) -> None:
        if r.msg_id not in self.messages:
            self._dangling(r)
            return
        old = self.retained.get(r.topic)
        if old == r.msg_id:
            return
        self.retained[r.topic] = r.msg_id
        self._refs[r.msg_id] = self._refs.get(r.msg_id, 0) + 1
        if old is not None:
            self._release(old)

    def _retain_cleared(self, r: RetainCleared) -> None:
        old = self.retained.pop(r.topic, None)
        if old is None:
            self._dangling(r)
        else:
            self._release(old)

    # ---------------------------------------------------------------- queries

    def is_referenced(self, msg_id: int) -> bool:
        """Does a queue entry or a retained topic reference ``msg_id``?"""
        return msg_id in self._refs

    def collect_garbage(self) -> int:
        """Drop messages nothing references; returns how many were dropped."""
        garbage = [msg_id for msg_id in self.messages if msg_id not in self._refs]
        for msg_id in garbage:
            del self.messages[msg_id]
        return len(garbage)

    def records(self) -> Iterator[Record]:
        """A minimal record sequence that rebuilds this state from empty.

        Garbage messages are left out; each live message comes just before its
        first reference.  Reads the containers lazily: do not apply records
        while iterating.
        """
        if self.max_msg_id:
            yield MsgIdHighWater(self.max_msg_id)
        if self.spool_head:
            yield SpoolHead(self.spool_head)
        messages = self.messages
        emitted: set[int] = set()
        clients = dict.fromkeys(self.sessions)
        for per_client in (self.subscriptions, self.pubrel_pending, self.incoming_qos2,
                           self.queues):
            clients.update(dict.fromkeys(per_client))
        for cid in clients:
            session = self.sessions.get(cid)
            if session is not None:
                yield session
            yield from self.subscriptions.get(cid, {}).values()
            for packet_id in self.pubrel_pending.get(cid, ()):
                yield PubrecReceived(cid, packet_id)
            for packet_id in self.incoming_qos2.get(cid, ()):
                yield IncomingQos2(cid, packet_id)
            for msg_id, entry in self.queues.get(cid, {}).items():
                if msg_id not in emitted:
                    emitted.add(msg_id)
                    yield messages[msg_id]
                yield Enqueued(cid, msg_id, entry.qos, entry.subscription_ids)
                if entry.packet_id is not None:
                    yield InflightAssigned(cid, msg_id, entry.packet_id)
        for topic, msg_id in self.retained.items():
            if msg_id not in emitted:
                emitted.add(msg_id)
                yield messages[msg_id]
            yield RetainSet(topic, msg_id)

    def summary(self) -> StateSummary:
        return StateSummary(
            sessions=len(self.sessions),
            subscriptions=sum(map(len, self.subscriptions.values())),
            messages=len(self._refs),
            queued=sum(map(len, self.queues.values())),
            pubrel_pending=sum(map(len, self.pubrel_pending.values())),
            incoming_qos2=sum(map(len, self.incoming_qos2.values())),
            retained=len(self.retained),
            max_msg_id=self.max_msg_id,
        )

    def _key(self) -> tuple:
        # Live content with order where order matters (queues, subscriptions,
        # QoS 2 sets); garbage messages and the dangling count are left out.
        return (
            self.sessions,
            {cid: list(subs.items()) for cid, subs in self.subscriptions.items()},
            {msg_id: m for msg_id, m in self.messages.items() if msg_id in self._refs},
            {cid: list(queue.items()) for cid, queue in self.queues.items()},
            {cid: list(ids) for cid, ids in self.pubrel_pending.items()},
            {cid: list(ids) for cid, ids in self.incoming_qos2.items()},
            self.retained,
            self.max_msg_id,
            self.spool_head,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DurableState):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DurableState({self.summary()})"


def _discard(sets: dict[str, dict[int, None]], cid: str, packet_id: int) -> bool:
    ids = sets.get(cid)
    if ids is None or packet_id not in ids:
        return False
    del ids[packet_id]
    if not ids:
        del sets[cid]
    return True


_APPLY: dict[type, Callable[[DurableState, Record], None]] = {
    MessageAdded: DurableState._message_added,
    SessionSaved: DurableState._session_saved,
    SessionDeleted: DurableState._session_deleted,
    SubscriptionAdded: DurableState._subscription_added,
    SubscriptionRemoved: DurableState._subscription_removed,
    Enqueued: DurableState._enqueued,
    InflightAssigned: DurableState._inflight_assigned,
    Dequeued: DurableState._dequeued,
    PubrecReceived: DurableState._pubrec_received,
    PubcompReceived: DurableState._pubcomp_received,
    IncomingQos2: DurableState._incoming_qos2,
    IncomingReleased: DurableState._incoming_released,
    RetainSet: DurableState._retain_set,
    RetainCleared: DurableState._retain_cleared,
    MsgIdHighWater: DurableState._high_water,
    SpoolHead: DurableState._spool_head,
}
