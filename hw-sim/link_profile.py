"""Link profiles: what a simulated network link does to the bytes crossing it.

A profile is a frozen value; a `ferry.hwsim.link.Link` applies whichever profile is
current to every connection through it, per direction. The named presets in
`PROFILES` are documented with their numbers (and why) in docs/link-profiles.md;
a test keeps that table and this module in step.

Pure data and validation: no asyncio, no sockets, no clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union


class ProfileError(ValueError):
    """A profile that cannot exist (negative latency, unknown preset, unknown field)."""


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """How a link treats traffic. Every number applies to each direction of each connection.

    Randomness (jitter, when stalls and resets happen) comes from `random.Random`
    streams seeded from the link's `seed` and the connection number, so a run with
    the same seed and the same traffic makes the same draws.
    """

    name: str = "custom"
    """Shown in stats, logs and control replies; presets carry their preset name."""
    latency_ms: float = 0.0
    """One-way delay added to every chunk, in each direction: an echo round trip gains 2x this."""
    jitter_ms: float = 0.0
    """Each chunk's delay is drawn uniformly from latency_ms +/- jitter_ms (never below 0). Delivery
    times never go backwards, so bytes stay in order and a burst queues behind a slow chunk."""
    bandwidth_bytes_per_s: int | None = None
    """Serialization rate per direction per connection (token bucket); None is unlimited."""
    burst_bytes: int = 4096
    """Token-bucket depth: an idle direction may send this much at once before the rate applies."""
    stall_probability_per_s: float = 0.0
    """Rate (Poisson, events per second per connection) at which a connection stalls."""
    stall_ms: float = 0.0
    """How long a stall stops delivery in both directions; bytes keep queueing and arrive after."""
    reset_probability_per_s: float = 0.0
    """Rate (Poisson, events per second per connection) at which a connection is cut with RST."""
    blackhole: bool = False
    """Accept and read, never deliver, never close: a half-open link as seen from both ends.
    Connections that lost bytes to the blackhole are cut with RST when it lifts."""
    down: bool = False
    """New connections are refused (nothing listens on the port); existing ones are cut with RST."""

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "stall_probability_per_s", "stall_ms",
                     "reset_probability_per_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProfileError(f"{name}: expected a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ProfileError(f"{name}: must be a finite number >= 0, got {value!r}")
        rate = self.bandwidth_bytes_per_s
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0):
            raise ProfileError(f"bandwidth_bytes_per_s: expected an integer > 0 or None, got {rate!r}")
        if isinstance(self.burst_bytes, bool) or not isinstance(self.burst_bytes, int) \
                or self.burst_bytes < 1:
            raise ProfileError(f"burst_bytes: expected an integer >= 1, got {self.burst_bytes!r}")
        for name in ("blackhole", "down"):
            if not isinstance(getattr(self, name), bool):
                raise ProfileError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ProfileError(f"name: expected a non-empty string, got {self.name!r}")

    @property
    def faulty(self) -> bool:
        """True when stalls or resets can happen (they never do while blackholed or down)."""
        live = not (self.blackhole or self.down)
        return live and (self.stall_probability_per_s > 0 or self.reset_probability_per_s > 0)


PERFECT = LinkProfile(name="perfect")

PROFILES: dict[str, LinkProfile] = {
    "perfect": PERFECT,
    # Same room as the access point: a few ms, ~1 MB/s of real TCP throughput on an
    # ESP32, and a short hiccup every few minutes (a beacon miss, a channel scan).
    "wifi-good": LinkProfile(
        name="wifi-good", latency_ms=5, jitter_ms=2, bandwidth_bytes_per_s=1_000_000,
        burst_bytes=16_384, stall_probability_per_s=1 / 300, stall_ms=200,
    ),
    # Far from the access point or a busy 2.4 GHz band: retransmissions show as
    # jitter, the link stalls every ~20 s for 1.5 s and drops the TCP connection
    # about once a minute (roaming, DHCP renew, the AP kicking a weak client).
    "wifi-flaky": LinkProfile(
        name="wifi-flaky", latency_ms=30, jitter_ms=20, bandwidth_bytes_per_s=250_000,
        burst_bytes=8192, stall_probability_per_s=1 / 20, stall_ms=1500,
        reset_probability_per_s=1 / 60,
    ),
    # LTE-M / NB-IoT class modem: 80 +/- 40 ms each way, 50 kB/s, a 3 s stall on
    # a cell handover every ~2 min and a dropped connection every ~10 min (NAT
    # timeouts, PDP context re-establishment).
    "cellular": LinkProfile(
        name="cellular", latency_ms=80, jitter_ms=40, bandwidth_bytes_per_s=50_000,
        burst_bytes=4096, stall_probability_per_s=1 / 120, stall_ms=3000,
        reset_probability_per_s=1 / 600,
    ),
    # The link is gone: connects are refused, open connections are cut.
    "outage": LinkProfile(name="outage", down=True),
    # A middlebox that silently eats everything (a dead NAT entry, a wedged AP):
    # both ends keep a connection that never delivers and never closes.
    "blackhole": LinkProfile(name="blackhole", blackhole=True),
}

ProfileSpec = Union[LinkProfile, str, Mapping[str, object]]
"""A profile, a preset name, or a mapping of LinkProfile fields (see `profile_from_dict`)."""

_FIELDS = {f.name for f in dataclasses.fields(LinkProfile)}


def preset(name: str) -> LinkProfile:
    """The preset called `name`; ProfileError lists the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; presets: {', '.join(PROFILES)}") from None


def profile_from_dict(data: Mapping[str, object]) -> LinkProfile:
    """A profile from LinkProfile fields; `"base": "wifi-flaky"` starts from a preset.

    Without `base` the remaining fields start from `perfect`; without `name` the
    result is named "custom" (or "<base>+custom" when some base field was changed).
    """
    if not isinstance(data, Mapping):
        raise ProfileError(f"expected a profile name or an object, got {data!r}")
    fields = dict(data)
    base_name = fields.pop("base", None)
    if base_name is not None and not isinstance(base_name, str):
        raise ProfileError(f"base: expected a preset name, got {base_name!r}")
    base = preset(base_name) if base_name is not None else None
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ProfileError(f"unknown profile field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    if "name" not in fields:
        changed = base is not None and any(getattr(base, k) != v for k, v in fields.items())
        fields["name"] = base.name if base is not None and not changed else \
            f"{base.name}+custom" if base is not None else "custom"
    if "bandwidth_bytes_per_s" in fields and isinstance(fields["bandwidth_bytes_per_s"], float) \
            and fields["bandwidth_bytes_per_s"].is_integer():
        fields["bandwidth_bytes_per_s"] = int(fields["bandwidth_bytes_per_s"])
    try:
        return dataclasses.replace(base, **fields) if base is not None else LinkProfile(**fields)
    except TypeError as exc:  # pragma: no cover - unknown fields are caught above
        raise ProfileError(str(exc)) from None


def profile_to_dict(profile: LinkProfile) -> dict[str, object]:
    """Every field of `profile`, ready for JSON; `profile_from_dict` reads it back unchanged."""
    return {f.name: getattr(profile, f.name) for f in dataclasses.fields(LinkProfile)}


def resolve_profile(spec: ProfileSpec) -> LinkProfile:
    """A LinkProfile from a profile, a preset name, or a mapping of fields."""
    if isinstance(spec, LinkProfile):
        return spec
    if isinstance(spec, str):
        return preset(spec)
    return profile_from_dict(spec)


def describe(profile: LinkProfile) -> str:
    """One line for logs: `wifi-flaky (30+/-20 ms, 250000 B/s, stall 0.05/s x 1500 ms, reset 0.0167/s)`."""
    if profile.down:
        return f"{profile.name} (down)"
    if profile.blackhole:
        return f"{profile.name} (blackhole)"
    parts = [f"{profile.latency_ms:g}+/-{profile.jitter_ms:g} ms"]
    if profile.bandwidth_bytes_per_s is not None:
        parts.append(f"{profile.bandwidth_bytes_per_s} B/s")
    if profile.stall_probability_per_s > 0:
        parts.append(f"stall {profile.stall_probability_per_s:.3g}/s x {profile.stall_ms:g} ms")
    if profile.reset_probability_per_s > 0:
        parts.append(f"reset {profile.reset_probability_per_s:.3g}/s")
    return f"{profile.name} ({', '.join(parts)})"
