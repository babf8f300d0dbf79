"""The gateway's durable store: an append-only, group-committed journal.

* :mod:`~ferry.gateway.store.records` - record types, their frames, batches and segment
  headers: the on-disk format (pure);
* :mod:`~ferry.gateway.store.reader` - :class:`RecordReader`, the records of a segment's good
  batches (pure);
* :mod:`~ferry.gateway.store.state` - :class:`DurableState`, what the records add up to (pure);
* :mod:`~ferry.gateway.store.layout` - the data directory: segment names, manifest, salt,
  format checks, write helpers;
* :mod:`~ferry.gateway.store.recovery` - :func:`recover`, rebuilding the state after a crash;
* :mod:`~ferry.gateway.store.journal` - :class:`Journal`, the writer thread and group commit.
"""

from .journal import Durability, Journal, JournalError, JournalStats
from .layout import StoreFormatError
from .records import (
    Dequeued,
    Enqueued,
    IncomingQos2,
    IncomingReleased,
    InflightAssigned,
    MessageAdded,
    MsgIdHighWater,
    PubcompReceived,
    PubrecReceived,
    Record,
    RetainCleared,
    RetainSet,
    SessionDeleted,
    SessionSaved,
    SubscriptionAdded,
    SubscriptionRemoved,
    encode_record,
)
from .reader import CorruptRegion, RecordReader
from .recovery import RecoveryReport, recover
from .state import DurableState, QueueEntry

__all__ = [
    "CorruptRegion",
    "Dequeued",
    "DurableState",
    "Durability",
    "Enqueued",
    "IncomingQos2",
    "IncomingReleased",
    "InflightAssigned",
    "Journal",
    "JournalError",
    "JournalStats",
    "MessageAdded",
    "MsgIdHighWater",
    "PubcompReceived",
    "PubrecReceived",
    "QueueEntry",
    "Record",
    "RecordReader",
    "RecoveryReport",
    "RetainCleared",
    "RetainSet",
    "SessionDeleted",
    "SessionSaved",
    "SubscriptionAdded",
    "StoreFormatError",
    "SubscriptionRemoved",
    "encode_record",
    "recover",
]
