"""The source topics' records handed to the worker a batch at a time, past Faust's per-record machinery.

Why: an agent's stream delivers each record through the consumer's drain loop (two tasks per
record: `wait_first(callback(message), suspend_flow.wait())`, faust/transport/consumer.py
`_drain_messages`), the conductor (flow control, producer buffer check, decoding into an
`Event`, a queue) and the stream's iterator (a turn of the event loop, sensors, processors, a
context variable), and `take_events` then gathers the values back into a list. Measured with
py-spy on `ferry bench server` (200 devices): that was ~35 % of the worker's event loop, about
as much as its whole logic, and the batch in progress held up the next one's filling.

Here the consumer's drain loop (`BatchingConsumer`, the aiokafka driver's consumer with that
one method replaced) appends each record of the source topics to a `SourceBuffer`, and the
worker takes its batches from there (`server/streams.py`). What Faust's stream did per record
that exactness rests on is kept, per batch:

* a record is *tracked* (in `consumer.unacked`) when its batch is taken and *acked*
  (`consumer.ack`) only once the batch's writes are in Kafka, so Faust commits no offset
  before that, and a rebalance or a shutdown waits for the batch in progress
  (`Consumer.wait_empty`);
* the buffer is one of the queues Faust's flow control clears when a rebalance begins and
  when recovery ends (`FlowControlEvent.clear`), and a batch drops records fetched in an
  older consumer generation or while the flow is suspended, as the stream did: Faust seeks
  the partitions to their committed offsets after a rebalance, so they are fetched again;
* the buffer holds at most one batch besides the one being applied: when full, the drain loop
  waits (backpressure), as a full stream queue made it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, ClassVar

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message
from faust.transport.consumer import CONSUMER_FETCHING


class SourceBuffer:
    """Records of the source topics fetched and not yet taken, in fetch order (bounded)."""

    def __init__(self, topics: Iterable[str], batch_size: int, batch_devices: int | None = None) -> None:
        self.topics = frozenset(topics)
        self.batch_size = batch_size
        self.batch_devices = batch_devices or batch_size
        """A batch ends before the record of its (batch_devices + 1)-th device (record key)."""
        self.full = False
        """The last batch taken was full: `batch_size` records, or cut at `batch_devices` devices (more
        records were waiting)."""
        self.maxsize = batch_size
        self._messages: list[Message] = []
        self._batch_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, message: Message) -> None:
        self._messages.append(message)
        if len(self._messages) >= self.batch_size:
            self._batch_ready.set()
        if len(self._messages) >= self.maxsize:
            self._room.clear()

    async def room(self) -> None:
        """Return once the buffer has room for another record."""
        await self._room.wait()

    async def take(self, within_s: float) -> list[Message]:
        """Up to `batch_size` records of at most `batch_devices` devices: as soon as that many wait, else
        what came within `within_s` (possibly none)."""
        if len(self._messages) < self.batch_size and self._cut() == len(self._messages):
            try:
                await asyncio.wait_for(self._batch_ready.wait(), within_s)
            except TimeoutError:
                pass
        n = self._cut()
        self.full = n == self.batch_size or n < len(self._messages)
        batch, self._messages = self._messages[:n], self._messages[n:]
        self._settle()
        return batch

    def _cut(self) -> int:
        """How many of the waiting records the next batch takes: at most `batch_size`, ending before the
        first record of a device beyond `batch_devices`."""
        limit = min(len(self._messages), self.batch_size)
        if self.batch_devices >= limit:
            return limit
        seen: set = set()
        for i, message in enumerate(self._messages[:limit]):
            key = message.key
            if key not in seen:
                if len(seen) == self.batch_devices:
                    return i
                seen.add(key)
        return limit

    def clear(self) -> None:
        """Drop every record waiting (Faust's flow control calls this when a rebalance begins and when
        recovery ends; the records are fetched again from the committed offsets)."""
        self._messages = []
        self._settle()

    def _settle(self) -> None:
        if len(self._messages) < self.batch_size:
            self._batch_ready.clear()
        if len(self._messages) < self.maxsize:
            self._room.set()


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose drain loop puts the source topics' records in the app's
    `SourceBuffer` (`app.source_buffer`) instead of calling the conductor once per record; records of
    any other topic go to the conductor as before."""

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - run by the real worker
        # Faust's loop (faust/transport/consumer.py `_drain_messages`), with the per-record
        # `wait_first(callback(message), ...)` replaced by `buffer.add` for the source topics.
        buffer: SourceBuffer | None = getattr(self.app, "source_buffer", None)
        if buffer is None:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        topics = buffer.topics
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        since_yield += 1
                        if since_yield > 100:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if message.topic in topics:
                            await buffer.room()
                            buffer.add(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class BatchingTransport(faust_aiokafka.Transport):
    """The aiokafka transport with `BatchingConsumer`."""

    Consumer: ClassVar[type] = BatchingConsumer


def current(app: Any, messages: list[Message]) -> list[Message]:
    """The records of a batch the worker may apply: none while the flow is suspended (a rebalance),
    and only those fetched in the consumer's current generation (as Faust's stream skips the others)."""
    if not app.flow_control.is_active():
        return []
    generation = app.consumer_generation_id
    return [m for m in messages if m.generation_id == generation]
