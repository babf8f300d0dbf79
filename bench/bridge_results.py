"""The figures `ferry bench bridge` collects: settings in, one record per system and phase out.

Plain frozen dataclasses, so `bench/bridge.py` (which measures) and
`bench/bridge_report.py` (which prints and writes JSON) share them without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferry.bench.bridge_kafka import KafkaCount
from ferry.bench.bridge_systems import CpuShare


PHASES = ("sustained", "drain", "restart")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the command line chose."""

    spool: int = 1_000_000
    duration_s: float = 30.0
    warmup_s: float = 5.0
    publishers: int = 10
    window: int = 100
    """QoS 1 PUBLISHes each device keeps in flight."""
    live_rate_per_s: int = 1_000
    """Messages per second live devices publish while the spool drains."""
    peer: bool = True
    phases: tuple[str, ...] = PHASES
    """Which phases run (`--only`): a 10,000,000-reading restart alone takes ~15 minutes."""
    profile_dir: str | None = None
    """`--profile`: run Ferry's gateway under cProfile, one `gateway-N.prof` per start here (its
    figures are then not comparable: the profiler slows it)."""

    @property
    def spool_capacity(self) -> int:
        """Ferry's `bridge.spool_max_messages`: room for a spool, the live traffic meanwhile and the next."""
        return 2 * self.spool + 1_000_000

    def phase_timeout_s(self, messages: int) -> float:
        """How long a phase moving `messages` may take before the run is called failed (≥ 1,000 msg/s)."""
        return 120.0 + messages / 1_000


@dataclass(frozen=True, slots=True)
class Sustained:
    window_s: float
    kafka_per_s: float
    """Records Kafka acknowledged per second over the window."""
    pubacked_per_s: float
    """Device publishes the broker acknowledged per second over the window."""
    published: int
    """Readings PUBACKed in the whole phase."""
    rss_bytes: int
    cpu: tuple[CpuShare, ...]
    caught_up_s: float
    """After the devices stopped: until Kafka had acknowledged every reading."""


@dataclass(frozen=True, slots=True)
class Drain:
    spooled: int
    """Readings PUBACKed while Kafka was unreachable."""
    fill_s: float
    fill_per_s: float
    acked_during_outage: int
    """Records Kafka acknowledged while the link was down (in flight when it went down)."""
    rss_before_bytes: int
    """RSS when the outage began: what the sustained phase left (allocators keep their high-water mark)."""
    rss_full_bytes: int
    """RSS once the spool was full."""
    rss_fill_peak_bytes: int
    first_ack_s: float | None
    """Kafka back → the first record acknowledged (the Kafka client's reconnect)."""
    drain_s: float | None
    """First record acknowledged → every spooled reading acknowledged."""
    caught_up_s: float | None
    """Kafka back → every reading so far acknowledged, the live ones included."""
    live_offered_per_s: int
    live_published: int
    rss_drain_peak_bytes: int
    cpu: tuple[CpuShare, ...]
    """Over the drain: Kafka back → spool drained."""

    @property
    def drain_per_s(self) -> float | None:
        return self.spooled / self.drain_s if self.drain_s else None


@dataclass(frozen=True, slots=True)
class Restart:
    spooled: int
    """Readings PUBACKed during the second outage, before the SIGKILL."""
    rss_before_kill_bytes: int
    ready_s: float
    """SIGKILL → restarted → accepting MQTT connections."""
    rss_after_bytes: int
    spool_after: int | None
    """Ferry: the spool depth right after the restart; None where it cannot be seen."""
    acked_after: int
    """Records Kafka acknowledged after the restart, once the link was back."""
    drain_s: float | None
    """Kafka back → all `spooled` acknowledged; None if they never were (lost)."""


@dataclass(frozen=True, slots=True)
class SystemRun:
    label: str
    description: str
    notes: tuple[str, ...]
    sustained: Sustained | None = None
    drain: Drain | None = None
    restart: Restart | None = None
    count: KafkaCount | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The generator against a null broker that acknowledges every PUBLISH at once."""

    pubacked_per_s: float
    cpu_percent: float


@dataclass(frozen=True, slots=True)
class BridgeResults:
    settings: Settings
    ceiling: Ceiling | None
    runs: tuple[SystemRun, ...]
    date: str
    cpus: int
    cpu_model: str
    kernel: str
    python: str
    memory_bytes: int
    versions: tuple[tuple[str, str], ...]
    """(component, version): Mosquitto, librdkafka, paho-mqtt, Tansu's wheel."""
