"""What crosses the process boundary between `ferry bench` and its load generator: specs and results.

Frozen, slotted dataclasses, written as JSON files (`write_json`/`read_json`),
so the generator runs in its own process with nothing shared but two files;
plus `Histogram`, the generator's mutable latency counter.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path


class Mode(enum.Enum):
    THROUGHPUT = "throughput"
    """Publishers send as fast as the broker takes the bytes (QoS 0) or acks them (QoS 1)."""
    PACED = "paced"
    """Publishers together offer `rate_per_s` messages per second."""
    IDLE = "idle"
    """`connections` clients connect, ping on time and otherwise stay quiet."""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One run of the load generator against one broker."""

    mode: Mode
    host: str
    port: int
    qos: int = 0
    publishers: int = 10
    subscribers: int = 1
    payload_bytes: int = 64
    warmup_s: float = 2.0
    """Load runs this long before the measurement window opens."""
    duration_s: float = 10.0
    """The measurement window."""
    drain_s: float = 10.0
    """After the window: wait at most this long for deliveries still in flight (loss accounting)."""
    rate_per_s: int = 0
    """PACED only: total offered messages per second, spread over the publishers."""
    window: int = 20
    """QoS 1: unacknowledged PUBLISHes each publisher keeps in flight."""
    max_outstanding: int = 0
    """QoS 0 THROUGHPUT: publishers pause while more than this many messages per subscriber
    are published but not yet delivered (a closed loop: the broker's sustainable rate).
    0: no bound, a flood limited only by TCP backpressure (the broker's overload behaviour)."""
    persistent_subscribers: bool = False
    """Subscribers connect with clean session 0 (their deliveries go through the broker's store)."""
    topic_prefix: str = "bench"
    connections: int = 0
    """IDLE only: how many clients to hold open."""
    keepalive_s: int = 60
    """Keepalive every client announces in CONNECT."""
    ping_interval_s: float = 0.0
    """IDLE only: each client sends PINGREQ this often (staggered); 0 means keepalive_s / 2."""
    connect_concurrency: int = 64
    """IDLE only: connection attempts in flight at once (brokers' listen backlogs are small)."""
    broker_pid: int | None = None
    """Sampled for CPU time and RSS (/proc/PID) at the window's edges; None for no sampling."""
    cpu: int | None = None
    """Pin the generator to this CPU (os.sched_setaffinity); None leaves it to the scheduler."""
    client_id_prefix: str = "bench"


FINE_US = 100_000
"""Latencies below 100 ms are counted per microsecond..."""
COARSE_MS = 100_000
"""...those above per millisecond, up to 100 s (longer ones count as 100 s)."""


class Histogram:
    """Latency counts with constant memory: 1 µs buckets below 100 ms, 1 ms buckets above.

    The generator's hot loops index `fine` and `coarse` directly (see `add`).
    """

    __slots__ = ("fine", "coarse")

    def __init__(self) -> None:
        self.fine = [0] * FINE_US
        self.coarse = [0] * COARSE_MS

    def add(self, latency_ns: int) -> None:
        us = latency_ns // 1000
        if 0 <= us < FINE_US:
            self.fine[us] += 1
        else:
            self.coarse[min(max(us, 0) // 1000, COARSE_MS - 1)] += 1

    def merge(self, other: "Histogram") -> None:
        self.fine = [a + b for a, b in zip(self.fine, other.fine)]
        self.coarse = [a + b for a, b in zip(self.coarse, other.coarse)]

    def latency(self) -> "Latency":
        count = sum(self.fine) + sum(self.coarse)
        if not count:
            return Latency()
        marks = [(q, max(1, int(q * count + 0.999999))) for q in (0.50, 0.99, 0.999)]
        found: dict[float, float] = {}
        seen = 0
        top = 0.0
        buckets = [(us, n) for us, n in enumerate(self.fine) if n] + \
                  [(ms * 1000, n) for ms, n in enumerate(self.coarse) if n]
        for value_us, n in buckets:
            seen += n
            top = float(value_us)
            for q, rank in marks:
                if q not in found and seen >= rank:
                    found[q] = float(value_us)
        return Latency(count, found[0.50], found[0.99], found[0.999], top)


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles in microseconds over `count` samples (0 samples: all zero).

    Resolution 1 µs below 100 ms, 1 ms above; `max_us` is the highest bucket.
    """

    count: int = 0
    p50_us: float = 0.0
    p99_us: float = 0.0
    p999_us: float = 0.0
    max_us: float = 0.0


@dataclass(frozen=True, slots=True)
class FlowResult:
    """Publishers → subscribers, measured over the window; totals cover the whole run."""

    published_per_s: float
    """QoS 0: PUBLISHes written; QoS 1: PUBLISHes the broker acknowledged; per second in the window."""
    delivered_per_s: float
    """PUBLISHes received by all subscribers together, per second in the window."""
    latency: Latency
    """Send → receipt by a subscriber, for messages received in the window."""
    ack_latency: Latency
    """QoS 1: send → PUBACK, for acks received in the window."""
    published_total: int
    expected_total: int
    """published_total × subscribers: what a lossless broker delivers."""
    delivered_total: int
    """Received by subscribers by the end of the drain."""
    generator_cpu_pct: float
    """The generator process's CPU time over the window, in % of one core."""
    broker_cpu_pct: float
    """The broker's CPU time (all threads) over the window, in % of one core; -1 when not sampled."""
    broker_rss_kb: int
    """The broker's VmRSS at the end of the window; -1 when not sampled."""
    window_s: float
    """The window's real length."""
    max_backlog: int = 0
    """PACED: most messages that were due but not yet sent (QoS 1 window full)."""
    written_off: int = 0
    """Bounded QoS 0: deliveries given up on (nothing arrived for a while) to unblock publishers."""
    errors: tuple[str, ...] = ()

    @property
    def loss_pct(self) -> float:
        if not self.expected_total:
            return 0.0
        return max(0.0, 100.0 * (self.expected_total - self.delivered_total) / self.expected_total)


@dataclass(frozen=True, slots=True)
class IdleResult:
    """Many quiet clients held open with keepalive."""

    requested: int
    connected: int
    """Clients that got a successful CONNACK."""
    alive_at_end: int
    """Clients still connected when the hold ended."""
    pings_sent: int
    pings_answered: int
    connect_s: float
    """Time to connect all of them."""
    hold_s: float
    broker_rss_idle_kb: int
    """VmRSS before the first client connected."""
    broker_rss_connected_kb: int
    """VmRSS right after the last client connected."""
    broker_rss_end_kb: int
    broker_cpu_pct: float
    """The broker's CPU over the hold, in % of one core."""
    generator_cpu_pct: float
    generator_nofile: tuple[int, int]
    """The generator's RLIMIT_NOFILE (soft, hard) after raising soft to hard."""
    errors: tuple[str, ...] = ()


def _to_plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(kind: object, value: object) -> object:
    if value is None:
        return None
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return _from_plain(inner, value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v) for v in value)
        return tuple(_from_plain(a, v) for a, v in zip(args, value))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(value)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{k: _from_plain(hints[k], v) for k, v in value.items() if k in hints})
    return value


def to_json(obj: object) -> dict:
    """A dataclass as JSON-ready data; results also carry a `kind` tag."""
    data = _to_plain(obj)
    data["kind"] = type(obj).__name__
    return data


def write_json(obj: object, path: Path) -> None:
    path.write_text(json.dumps(to_json(obj), indent=1))


_KINDS = {cls.__name__: cls for cls in (LoadSpec, FlowResult, IdleResult)}


def read_json(path: Path) -> LoadSpec | FlowResult | IdleResult:
    data = json.loads(path.read_text())
    return _from_plain(_KINDS[data.pop("kind")], data)
