"""The link simulator's arithmetic, without asyncio or sockets (aioquic style: callers pass `now`).

* `DirectionShaper` gives each chunk of one direction of one connection its
  delivery time: serialization through a token bucket, then latency +/- jitter,
  never earlier than the chunk before it (so bytes stay in order).
* `FaultClock` decides when a connection stalls or is reset: Poisson processes
  at the profile's rates, drawn from a seeded `random.Random`. The caller asks
  `get_timer()` for the next deadline and calls `handle_timer(now)` when it
  passes; a profile change calls `retime(now, profile)` (memoryless, so drawing
  afresh from `now` is exact).

Times are seconds on any monotonic clock (the asyncio layer uses `loop.time()`).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from ferry.hwsim.link_profile import LinkProfile


def sample_latency_s(profile: LinkProfile, rng: random.Random) -> float:
    """One chunk's one-way delay: uniform in latency_ms +/- jitter_ms, clamped at 0."""
    latency_ms = profile.latency_ms
    if profile.jitter_ms > 0:
        latency_ms += rng.uniform(-profile.jitter_ms, profile.jitter_ms)
    return max(0.0, latency_ms) / 1000.0


def read_size(profile: LinkProfile, chunk_bytes: int) -> int:
    """How much to read at once: smaller under a bandwidth cap (~20 chunks per second of
    traffic, at least 512 bytes) so delivery is smooth rather than one big late chunk."""
    rate = profile.bandwidth_bytes_per_s
    if rate is None:
        return chunk_bytes
    return max(512, min(chunk_bytes, rate // 20, profile.burst_bytes))


@dataclass(slots=True)
class DirectionShaper:
    """Delivery times for one direction of one connection.

    Bandwidth is a token bucket of `burst_bytes` at `bandwidth_bytes_per_s`, kept
    as the time the wire becomes free: a chunk finishes serializing at
    `max(now - burst/rate, wire_free) + size/rate` and starts its latency then.
    """

    wire_free_at_s: float = -math.inf
    """When the previous chunk finished serializing."""
    last_due_s: float = -math.inf
    """Delivery time of the previous chunk: the next one is never due earlier."""

    def due_s(self, size: int, now_s: float, profile: LinkProfile, rng: random.Random) -> float:
        """When a chunk of `size` bytes read at `now_s` is to be delivered (size 0 = EOF)."""
        sent_s = now_s
        rate = profile.bandwidth_bytes_per_s
        if rate is not None and size > 0:
            start_s = max(now_s - profile.burst_bytes / rate, self.wire_free_at_s)
            self.wire_free_at_s = start_s + size / rate
            sent_s = max(now_s, self.wire_free_at_s)
        elif rate is not None:
            sent_s = max(now_s, self.wire_free_at_s)
        due = max(sent_s + sample_latency_s(profile, rng), self.last_due_s)
        self.last_due_s = due
        return due


class Fault(enum.Enum):
    """What `FaultClock.handle_timer` tells the caller to do."""

    STALL = "stall"
    RESET = "reset"


class FaultClock:
    """When one connection stalls or gets reset, and until when it is stalled."""

    __slots__ = ("_rng", "next_stall_s", "next_reset_s", "stalled_until_s")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.next_stall_s: float | None = None
        self.next_reset_s: float | None = None
        self.stalled_until_s = -math.inf

    def _draw(self, now_s: float, rate_per_s: float) -> float | None:
        return now_s + self._rng.expovariate(rate_per_s) if rate_per_s > 0 else None

    def retime(self, now_s: float, profile: LinkProfile) -> None:
        """Draw the next stall and reset from `now_s` for `profile` (none while blackholed or down)."""
        live = not (profile.blackhole or profile.down)
        self.next_stall_s = self._draw(now_s, profile.stall_probability_per_s if live else 0.0)
        self.next_reset_s = self._draw(now_s, profile.reset_probability_per_s if live else 0.0)
        if not live:
            self.stalled_until_s = -math.inf

    def get_timer(self) -> float | None:
        """The next deadline at which `handle_timer` has something to do, or None."""
        pending = [t for t in (self.next_stall_s, self.next_reset_s) if t is not None]
        return min(pending) if pending else None

    def handle_timer(self, now_s: float, profile: LinkProfile) -> list[Fault]:
        """The faults due by `now_s`, in time order; stalls extend `stalled_until_s`."""
        due: list[tuple[float, Fault]] = []
        if self.next_stall_s is not None and self.next_stall_s <= now_s:
            due.append((self.next_stall_s, Fault.STALL))
            start_s = max(self.next_stall_s, self.stalled_until_s)
            self.stalled_until_s = max(self.stalled_until_s, start_s + profile.stall_ms / 1000.0)
            self.next_stall_s = self._draw(now_s, profile.stall_probability_per_s)
        if self.next_reset_s is not None and self.next_reset_s <= now_s:
            due.append((self.next_reset_s, Fault.RESET))
            self.next_reset_s = self._draw(now_s, profile.reset_probability_per_s)
        return [fault for _, fault in sorted(due, key=lambda item: item[0])]

    def hold_until_s(self, due_s: float) -> float:
        """When a chunk due at `due_s` may go out: after the current stall, if any."""
        return max(due_s, self.stalled_until_s)
