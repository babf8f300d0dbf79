"""Profiles, the sans-IO shaper and fault clock, and the control protocol, without sockets or clocks."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from ferry.hwsim.link import (
    PROFILES, ControlError, ControlOp, Link, LinkProfile, ProfileError, ScheduleStep, config_from_dict,
    config_to_dict, handle_line, parse_request, profile_from_dict, profile_to_dict, resolve_profile,
)
from ferry.hwsim.link_core import LinkConfig
from ferry.hwsim.link_shaper import DirectionShaper, Fault, FaultClock, read_size

DOC = (Path(__file__).resolve().parents[2] / "docs" / "link-profiles.md").read_text()


def _doc_cell(value: object) -> str:
    if value is None:
        return "unlimited"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not value.is_integer():
        return f"1/{round(1 / value):d}"
    return f"{value:,}" if isinstance(value, int) and value >= 1000 else f"{value:g}"


def test_the_docs_table_shows_every_preset_with_its_numbers() -> None:
    for name, p in PROFILES.items():
        cells = [name, p.latency_ms, p.jitter_ms, p.bandwidth_bytes_per_s, p.burst_bytes,
                 p.stall_probability_per_s, p.stall_ms, p.reset_probability_per_s, p.blackhole, p.down]
        row = "| " + " | ".join(f"`{name}`" if i == 0 else _doc_cell(c) for i, c in enumerate(cells)) + " |"
        assert row in DOC, f"docs/link-profiles.md lacks the row\n{row}"


def test_presets_are_named_after_their_keys_and_the_required_ones_exist() -> None:
    assert {"perfect", "wifi-good", "wifi-flaky", "cellular", "outage"} <= set(PROFILES)
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert resolve_profile(name) is profile
    assert PROFILES["outage"].down and not PROFILES["perfect"].faulty


def test_profiles_round_trip_through_json() -> None:
    for profile in PROFILES.values():
        assert profile_from_dict(json.loads(json.dumps(profile_to_dict(profile)))) == profile


def test_a_dict_profile_starts_from_a_base_preset_or_from_perfect() -> None:
    slower = profile_from_dict({"base": "cellular", "latency_ms": 300})
    assert slower.latency_ms == 300 and slower.bandwidth_bytes_per_s == 50_000
    assert slower.name == "cellular+custom"
    assert profile_from_dict({"base": "cellular"}) == PROFILES["cellular"]
    plain = profile_from_dict({"latency_ms": 100})
    assert plain == LinkProfile(name="custom", latency_ms=100)


@pytest.mark.parametrize("bad", [
    {"latency_ms": -1}, {"jitter_ms": "5"}, {"bandwidth_bytes_per_s": 0}, {"burst_bytes": 0},
    {"blackhole": 1}, {"stall_ms": float("nan")}, {"colour": "red"}, {"base": "moon"},
])
def test_impossible_profiles_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ProfileError):
        profile_from_dict(bad)


def test_unknown_preset_names_list_the_known_ones() -> None:
    with pytest.raises(ProfileError, match="wifi-flaky"):
        resolve_profile("wifi-terrible")


def test_link_config_round_trips_and_validates() -> None:
    config = LinkConfig(upstream_host="127.0.0.1", upstream_port=1883, name="devices",
                        profile=PROFILES["wifi-flaky"], seed=4)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    assert config_from_dict({"upstream_host": "h", "upstream_port": 1, "profile": "cellular"}).profile \
        is PROFILES["cellular"]
    with pytest.raises(ValueError):
        LinkConfig(upstream_host="h", upstream_port=70000)
    with pytest.raises(ValueError):
        config_from_dict({"upstream_host": "h", "upstream_port": 1, "speed": 3})


# -- shaper -----------------------------------------------------------------------------------

def test_latency_without_jitter_is_exact_and_one_way() -> None:
    shaper = DirectionShaper()
    profile = LinkProfile(latency_ms=100)
    assert shaper.due_s(10, 5.0, profile, random.Random(0)) == pytest.approx(5.1)


def test_delivery_times_never_go_backwards_under_jitter() -> None:
    shaper, rng = DirectionShaper(), random.Random(1)
    profile = LinkProfile(latency_ms=30, jitter_ms=30)
    dues = [shaper.due_s(100, i * 0.001, profile, rng) for i in range(2000)]
    assert dues == sorted(dues)
    assert all(due >= i * 0.001 for i, due in enumerate(dues))


def test_jitter_is_reproducible_from_the_seed() -> None:
    profile = PROFILES["wifi-flaky"]

    def dues(seed: int) -> list[float]:
        shaper, rng = DirectionShaper(), random.Random(seed)
        return [shaper.due_s(100, i * 0.1, profile, rng) for i in range(50)]

    assert dues(3) == dues(3) != dues(4)


def test_token_bucket_paces_to_the_rate_after_the_burst() -> None:
    shaper, rng = DirectionShaper(), random.Random(0)
    profile = LinkProfile(bandwidth_bytes_per_s=50_000, burst_bytes=4096)
    assert shaper.due_s(1000, 0.0, profile, rng) == 0.0  # an idle link sends a small chunk at once
    dues = [shaper.due_s(1000, 0.0, profile, rng) for _ in range(99)]  # 100 kB read at t=0
    assert dues[-1] == pytest.approx((100_000 - 4096) / 50_000)
    assert shaper.due_s(0, 0.0, profile, rng) == dues[-1]  # the EOF queues behind the data


def test_read_size_shrinks_under_a_bandwidth_cap() -> None:
    assert read_size(PROFILES["perfect"], 65536) == 65536
    assert read_size(PROFILES["cellular"], 65536) == 2500
    assert read_size(LinkProfile(bandwidth_bytes_per_s=1000), 65536) == 512


# -- fault clock ------------------------------------------------------------------------------

def test_fault_clock_has_no_timer_without_faults_or_while_blackholed() -> None:
    clock = FaultClock(random.Random(0))
    clock.retime(0.0, PROFILES["perfect"])
    assert clock.get_timer() is None
    clock.retime(0.0, dataclasses.replace(PROFILES["wifi-flaky"], blackhole=True))
    assert clock.get_timer() is None


def test_fault_clock_draws_reproducible_poisson_events() -> None:
    profile = LinkProfile(stall_probability_per_s=2, stall_ms=250, reset_probability_per_s=0.5)

    def events(seed: int) -> list[tuple[float, Fault]]:
        clock, out = FaultClock(random.Random(seed)), []
        clock.retime(0.0, profile)
        while (t := clock.get_timer()) is not None and t < 100:
            out += [(t, fault) for fault in clock.handle_timer(t, profile)]
        return out

    first = events(9)
    assert first == events(9) != events(10)
    stalls = sum(1 for _, f in first if f is Fault.STALL)
    resets = sum(1 for _, f in first if f is Fault.RESET)
    assert 120 < stalls < 280 and 25 < resets < 80  # ~200 and ~50 expected over 100 s


def test_a_stall_holds_chunks_until_it_ends() -> None:
    profile = LinkProfile(stall_probability_per_s=1, stall_ms=500)
    clock = FaultClock(random.Random(2))
    clock.retime(0.0, profile)
    start = clock.next_stall_s
    assert start is not None
    assert clock.handle_timer(start, profile) == [Fault.STALL]
    assert clock.hold_until_s(start + 0.1) == pytest.approx(start + 0.5)
    assert clock.hold_until_s(start + 0.7) == start + 0.7


# -- control protocol -------------------------------------------------------------------------

def test_control_requests_parse_with_or_without_op() -> None:
    request = parse_request(b'{"link": "devices", "profile": "outage"}\n')
    assert request.op is ControlOp.SET_PROFILE and request.link == "devices"
    assert request.profile is PROFILES["outage"]
    request = parse_request('{"schedule": [[0.5, "outage"], {"at_s": 2, "profile": {"latency_ms": 9}}]}')
    assert request.op is ControlOp.SCHEDULE and request.link is None
    assert request.schedule == (ScheduleStep(0.5, PROFILES["outage"]),
                                ScheduleStep(2.0, LinkProfile(latency_ms=9)))
    assert parse_request('{"op": "stats"}').op is ControlOp.STATS


@pytest.mark.parametrize("line", [
    b"not json", b"[1]", b'{"op": "explode"}', b'{"op": "set_profile"}', b'{"profile": "moon"}',
    b'{"schedule": [[-1, "outage"]]}', b'{"schedule": "soon"}', b'{"link": 3, "profile": "perfect"}',
])
def test_bad_control_requests_are_refused(line: bytes) -> None:
    with pytest.raises((ControlError, ProfileError)):
        parse_request(line)


def test_handle_line_answers_errors_instead_of_raising() -> None:
    links = {"devices": Link(upstream=("127.0.0.1", 1), name="devices"),
             "kafka": Link(upstream=("127.0.0.1", 2), name="kafka")}
    reply = json.loads(handle_line(links, b'{"link": "devices", "profile": "cellular"}'))
    assert reply["ok"] and reply["profile"]["name"] == "cellular"
    assert links["devices"].profile is PROFILES["cellular"]  # not started: only the profile changes
    assert json.loads(handle_line(links, b'{"profile": "outage"}')) == \
        {"ok": False, "error": "say which link: devices, kafka"}
    assert not json.loads(handle_line(links, b'{"link": "nope", "profile": "outage"}'))["ok"]
    assert not json.loads(handle_line(links, b"{"))["ok"]
