"""What crosses process boundaries in `ferry bench bridge`, and the telemetry every message carries.

The bench runs its load generator (`bench/bridge_load.py`) and the peer's
forwarder (`bench/forwarder.py`) as child processes; they share nothing with
it but small JSON files: a spec in, progress and a result (or a status) out,
written atomically so a reader never sees half a file.

Every message is a contract telemetry reading of exactly `PAYLOAD_BYTES`
bytes (the size of the longest canonical reading in
`tests/vectors/contract/readings.json`), for device `<phase tag>-<publisher>`
and a fixed-width seq, so the Kafka check can read a record's seq by slicing
instead of parsing JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

SITE = "bench"
PAYLOAD_BYTES = 137
TAG_CHARS = 4
"""Phase tags are exactly this long, so every device id (and payload) has the same size."""
SEQ_BASE = 100_000_000
"""Seq of a device's first message: nine digits from the first to the 900,000,000th."""
SEQ_LIMIT = 999_999_999 - SEQ_BASE
"""Messages one device can send before its seq would need a tenth digit."""
PROGRESS_INTERVAL_S = 0.1
"""How often the generator and the forwarder write their counters."""
TS_BASE_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z; reading i of a device is stamped TS_BASE_MS + i (13 digits)."""
_SEQ_AT = len(b'{"v":1,"dev":"') + TAG_CHARS + len(b"-0000") + len(b'","boot":1,"seq":')


def device_id(tag: str, publisher: int) -> str:
    if len(tag) != TAG_CHARS:
        raise ValueError(f"phase tags have {TAG_CHARS} characters, got {tag!r}")
    return f"{tag}-{publisher:04d}"


def telemetry_topic(device: str) -> str:
    return f"ferry/{SITE}/{device}/telemetry"


def payload_parts(device: str) -> tuple[bytes, bytes, bytes]:
    """(before the seq, between seq and ts, after the ts): a reading is
    `head + b"%d" % (SEQ_BASE + i) + middle + b"%d" % (TS_BASE_MS + i) + tail`."""
    head = b'{"v":1,"dev":"%s","boot":1,"seq":' % device.encode()
    middle = b',"ts":'
    tail = b',"sync":true,"m":{"temp_c":21.5,"rh_pct":40.5},"bat":3910,"rssi":-61}'
    if len(head) != _SEQ_AT:
        raise ValueError(f"device id {device!r} does not have the benchmark's fixed width")
    return head, middle, tail


def reading_payload(device: str, index: int) -> bytes:
    head, middle, tail = payload_parts(device)
    return b"%s%d%s%d%s" % (head, SEQ_BASE + index, middle, TS_BASE_MS + index, tail)


def reading_index(payload: bytes) -> int:
    """Which of its device's readings a benchmark payload is (0 for the first)."""
    return int(payload[_SEQ_AT:_SEQ_AT + 9]) - SEQ_BASE


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One run of the telemetry generator: `publishers` devices, each on its own connection."""

    host: str
    port: int
    tag: str
    """Phase tag: the devices are `<tag>-0000`, `<tag>-0001`, ..."""
    publishers: int = 10
    total: int = 0
    """Publish exactly this many messages in all, then stop; 0 means until SIGTERM."""
    rate_per_s: int = 0
    """Offer this many messages per second in all; 0 means as fast as PUBACKs come back."""
    window: int = 100
    """Unacknowledged QoS 1 PUBLISHes each publisher keeps in flight."""
    progress_path: str = ""
    """Where the generator writes its counters every `PROGRESS_INTERVAL_S`."""


@dataclass(frozen=True, slots=True)
class LoadProgress:
    """The generator's counters at one moment (CLOCK_MONOTONIC, shared by every process on the host)."""

    at_s: float
    sent: int
    acked: int
    publishing: bool
    """True once every publisher is connected and the first PUBLISH went out."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one generator run did; `sent` and `acked` are per device, in publisher order."""

    tag: str
    sent: tuple[int, ...]
    acked: tuple[int, ...]
    started_s: float
    """CLOCK_MONOTONIC when the first PUBLISH went out."""
    stopped_s: float
    """CLOCK_MONOTONIC when the last PUBACK came back (or the wait for it ended)."""
    timeline: tuple[tuple[float, int], ...]
    """(CLOCK_MONOTONIC, PUBACKs so far), every `PROGRESS_INTERVAL_S`: rates over any window."""
    errors: tuple[str, ...] = ()

    @property
    def acked_total(self) -> int:
        return sum(self.acked)

    def acked_at(self, at_s: float) -> float:
        """PUBACKs received by `at_s`, interpolated between timeline points."""
        points = self.timeline
        if not points or at_s <= points[0][0]:
            return 0.0 if not points else float(points[0][1])
        for (t0, a0), (t1, a1) in zip(points, points[1:]):
            if t0 <= at_s <= t1:
                return a0 + (a1 - a0) * (at_s - t0) / (t1 - t0) if t1 > t0 else float(a1)
        return float(points[-1][1])


@dataclass(frozen=True, slots=True)
class ForwarderStatus:
    """The peer forwarder's counters, written every `PROGRESS_INTERVAL_S`."""

    at_s: float
    received: int
    """PUBLISHes from Mosquitto (redeliveries included)."""
    acked: int
    """Records Kafka acknowledged (acks=all) and PUBACKed to Mosquitto."""
    errors: int
    """Records Kafka failed (left unacknowledged: Mosquitto delivers them again on reconnect)."""
    connected: bool
    """Attached to Mosquitto with the subscription granted."""


def write_json_atomic(obj: object, path: Path) -> None:
    """A dataclass as JSON, written to a temporary name and renamed over `path`."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(dataclasses.asdict(obj)))
    os.replace(temporary, path)


def read_json(kind: type, path: Path):
    """The dataclass `kind` from `path` (lists come back as the tuples the fields declare)."""
    data = json.loads(path.read_text())
    return kind(**{key: _tuples(value) for key, value in data.items()})


def _tuples(value: object) -> object:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value
