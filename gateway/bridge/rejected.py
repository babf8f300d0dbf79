"""The dead-letter file: device messages Kafka refused for good, kept on disk instead of in the spool.

A record that no retry can cure (too large, invalid) would otherwise hold one
of the bridge's in-flight slots for ever and come back after every restart.
The bridge writes it here, with the reason, and PUBACKs its delivery only
once the entry is fsynced: the message leaves the spool without being lost.

Which refusals are for good is decided by `rejection`, from librdkafka's
error code:

- `too_large` and `invalid`, at the first refusal: the same bytes can never be
  accepted (MSG_SIZE_TOO_LARGE, RECORD_LIST_TOO_LARGE, INVALID_MSG_SIZE;
  INVALID_MSG, INVALID_RECORD, INVALID_TIMESTAMP, _BAD_MSG).
- `not_authorized`, `unknown_topic` and `refused`, after
  `bridge.rejected_after_attempts` refusals: an operator can fix these (grant
  the ACL, create the topic, relax a policy), so the record is produced again
  with back-off first; with the default librdkafka settings any other error
  that reaches a delivery report is one librdkafka does not retry itself.
- never: errors that only say Kafka is unreachable or slow (timeouts,
  transport, not enough replicas, leader elections, a purge or a fatal
  producer error, which the bridge answers with a new producer). An outage of
  any length only delays records; the spool rides it out.
- `not_built`: `ferry.contract.kafka_record` could not make a record of the
  message at all (a bug; never seen), so it is not produced.

Files are `<data_dir>/rejected/rejected-NNNNNNNN.jsonl`, one JSON object per
line (`RejectedRecord.to_line`). They are appended and fsynced on a thread of
their own, several entries per fsync when they come together, and rotated at
`bridge.rejected_max_file_bytes`; at most `bridge.rejected_max_files` are kept,
the oldest deleted with its entries counted. A line cut short by a crash is
followed by a newline on the next start and is not valid JSON: readers skip it
(its message was not yet PUBACKed, so it was written again).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO

from confluent_kafka import KafkaError

log = logging.getLogger(__name__)

DIRECTORY = "rejected"
"""The dead-letter files' folder under the gateway's data dir."""
FILE_RE = re.compile(r"rejected-(\d{8})\.jsonl")


class RejectReason(Enum):
    """Why a record went to the dead-letter file: the `reason` of its entry and metric label."""

    TOO_LARGE = "too_large"
    INVALID = "invalid"
    NOT_AUTHORIZED = "not_authorized"
    UNKNOWN_TOPIC = "unknown_topic"
    REFUSED = "refused"
    NOT_BUILT = "not_built"


AT_ONCE: dict[int, RejectReason] = {
    KafkaError.MSG_SIZE_TOO_LARGE: RejectReason.TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE: RejectReason.TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE: RejectReason.TOO_LARGE,
    KafkaError.INVALID_MSG: RejectReason.INVALID,
    KafkaError.INVALID_RECORD: RejectReason.INVALID,
    KafkaError.INVALID_TIMESTAMP: RejectReason.INVALID,
    KafkaError._BAD_MSG: RejectReason.INVALID,
}
"""Refusals of the record itself: the same bytes can never be accepted."""

AFTER_ATTEMPTS: dict[int, RejectReason] = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: RejectReason.NOT_AUTHORIZED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: RejectReason.NOT_AUTHORIZED,
    KafkaError.UNKNOWN_TOPIC_OR_PART: RejectReason.UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_TOPIC: RejectReason.UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION: RejectReason.UNKNOWN_TOPIC,
    KafkaError.TOPIC_EXCEPTION: RejectReason.UNKNOWN_TOPIC,
}
"""Refusals an operator can fix; any other error not in `NEVER` is `refused` after as many attempts."""

NEVER = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TIMED_OUT_QUEUE, KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._QUEUE_FULL, KafkaError._PURGE_QUEUE,
    KafkaError._PURGE_INFLIGHT, KafkaError._FATAL, KafkaError._DESTROY, KafkaError._WAIT_COORD,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION, KafkaError.BROKER_NOT_AVAILABLE,
    KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REPLICA_NOT_AVAILABLE,
    KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError.KAFKA_STORAGE_ERROR,
    KafkaError.THROTTLING_QUOTA_EXCEEDED, KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH,
})
"""Kafka unreachable, busy or electing a leader, or the bridge's own producer going away: these
only delay a record, however often they happen."""


def rejection(error: KafkaError, attempts: int, after_attempts: int) -> RejectReason | None:
    """Whether a record Kafka refused `attempts` times, the last with `error`, goes to the
    dead-letter file now (and why), or is produced again (None)."""
    code = error.code()
    if code in AT_ONCE:
        return AT_ONCE[code]
    if code in NEVER or attempts < after_attempts:
        return None
    return AFTER_ATTEMPTS.get(code, RejectReason.REFUSED)


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """One entry of the dead-letter file: the MQTT message as the broker received it, and why Kafka
    did not take it."""

    time_ms: int
    """When the bridge gave up on it (Unix ms)."""
    mqtt_topic: str
    payload: bytes
    """Byte for byte (base64 in the file)."""
    qos: int
    received_ms: int
    """The broker's receive time as in `ferry-received-ms` (Unix ms)."""
    reason: RejectReason
    error: str
    """librdkafka's error name and text, e.g. `MSG_SIZE_TOO_LARGE: Broker: Message size too large`."""
    kafka_topic: str | None
    """The topic it was for; None when no record could be made of it."""
    attempts: int
    """Times it was produced (0 when no record could be made of it)."""

    def to_line(self) -> bytes:
        return json.dumps({
            "time_ms": self.time_ms, "mqtt_topic": self.mqtt_topic, "qos": self.qos,
            "received_ms": self.received_ms, "reason": self.reason.value, "error": self.error,
            "kafka_topic": self.kafka_topic, "attempts": self.attempts,
            "payload_base64": base64.b64encode(self.payload).decode("ascii"),
        }, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> "RejectedRecord":
        """Parse one line; raises ValueError (a line cut short by a crash) or KeyError."""
        obj = json.loads(line)
        return cls(obj["time_ms"], obj["mqtt_topic"], base64.b64decode(obj["payload_base64"], validate=True),
                   obj["qos"], obj["received_ms"], RejectReason(obj["reason"]), obj["error"],
                   obj["kafka_topic"], obj["attempts"])


def read_rejected(directory: Path) -> list[RejectedRecord]:
    """Every readable entry of the dead-letter files in `directory`, oldest first."""
    entries = []
    for _, path in _files(directory):
        for line in path.read_bytes().splitlines():
            try:
                entries.append(RejectedRecord.from_line(line))
            except (ValueError, KeyError):
                continue
    return entries


def _files(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    numbered = []
    for path in directory.iterdir():
        match = FILE_RE.fullmatch(path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    return sorted(numbered)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch of appends did: its error (then nothing in it counts as written), or how many
    older entries were deleted with the files rotated out."""

    error: OSError | None
    discarded: int


class RejectedFile:
    """Appends entries to the dead-letter files on a thread of its own and reports each one once it
    is fsynced (`done(None)`) or could not be written (`done(error)`), on the event loop."""

    def __init__(self, directory: Path, max_file_bytes: int, max_files: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.discarded = 0
        """Entries deleted with the oldest file since start."""
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-rejected")
        self._waiting: list[tuple[bytes, Callable[[OSError | None], None]]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        # Only the writer thread touches these.
        self._file: BinaryIO | None = None
        self._file_number = 0
        self._file_bytes = 0

    def append(self, record: RejectedRecord, done: Callable[[OSError | None], None]) -> None:
        """Write `record`; `done` is called on the loop once it is fsynced or failed."""
        self._waiting.append((record.to_line(), done))
        if self._idle.is_set():
            self._write_waiting()

    def _write_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        self._idle.clear()
        future = self._loop.run_in_executor(self._executor, self._write, [line for line, _ in batch])
        future.add_done_callback(lambda f: self._written(f, [done for _, done in batch]))

    def _written(self, future: asyncio.Future, callbacks: list[Callable[[OSError | None], None]]) -> None:
        failure = future.exception()
        if failure is None:
            result = future.result()
        else:  # a bug in the writer: every waiter hears of it rather than waiting for ever
            log.error("the dead-letter file writer failed", exc_info=failure)
            result = WriteResult(OSError(f"dead-letter file writer failed: {failure!r}"), 0)
        self.discarded += result.discarded
        for done in callbacks:
            done(result.error)
        if self._waiting:
            self._write_waiting()
        else:
            self._idle.set()

    async def close(self) -> None:
        """Finish what was appended (its callbacks run), then close the file."""
        await self._idle.wait()
        await self._loop.run_in_executor(self._executor, self._close_file)
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ writer thread

    def _write(self, lines: list[bytes]) -> WriteResult:
        discarded = 0
        try:
            if self._file is None:
                self._open()
            for line in lines:
                if self._file_bytes and self._file_bytes + len(line) > self.max_file_bytes:
                    discarded += self._rotate()
                self._file.write(line)
                self._file_bytes += len(line)
            self._file.flush()
            os.fdatasync(self._file.fileno())  # the entries are durable: the bridge may PUBACK them
        except OSError as exc:
            self._close_file()  # reopened (after a newline if it ended mid-line) by the next batch
            return WriteResult(exc, discarded)
        return WriteResult(None, discarded)

    def _open(self) -> None:
        """Continue the newest file, or start the first one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        files = _files(self.directory)
        if not files:
            self._start_file(1)
            return
        self._file_number, path = files[-1]
        self._file = open(path, "ab")
        self._file_bytes = self._file.tell()
        if self._file_bytes:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":  # cut short by a crash: the next entry starts on its own line
                    self._file.write(b"\n")
                    self._file_bytes += 1

    def _start_file(self, number: int) -> None:
        self._file_number = number
        self._file = open(self.directory / f"rejected-{number:08d}.jsonl", "ab")
        self._file_bytes = 0
        _fsync_directory(self.directory)  # the new file's name is durable before any entry in it counts

    def _rotate(self) -> int:
        """Close the current file (its entries fsynced), start the next, delete the oldest beyond
        `max_files`; returns the entries deleted."""
        self._file.flush()
        os.fdatasync(self._file.fileno())
        self._file.close()
        self._start_file(self._file_number + 1)
        discarded = 0
        files = _files(self.directory)
        for _, path in files[:max(0, len(files) - self.max_files)]:
            entries = path.read_bytes().count(b"\n")
            path.unlink()
            discarded += entries
            log.warning("dead-letter file %s deleted to keep %d file(s); %d entries in it are gone", path,
                        self.max_files, entries)
        return discarded

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # what it held was fsynced already, or reported as not written
            self._file = None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
