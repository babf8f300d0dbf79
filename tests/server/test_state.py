"""A device's whole state stays bounded: a deep-sleep device starts a boot on every wake.

`python -m tests.server.test_state` prints the figures docs/server.md quotes: the table value's
JSON size and the Python memory of the table value and of the live `DeviceState`, for one device
waking every 5 minutes (a birth, two readings with two metrics, going back to sleep).
"""

from __future__ import annotations

import json
import marshal
import struct
import tracemalloc
from collections.abc import Callable

import pytest

from ferry.contract import Reading, encode_reading
from ferry.server.config import ServerConfig
from ferry.server.logic import Settings, apply_reading, apply_status
from ferry.server.state import MARSHALLED, DeviceState, decode_value, encode_state, encode_value

from tests.server.helpers import T0, asleep, status

DEVICE = "dev-sleep"
WAKE_MS = 300_000
SETTINGS = Settings.from_config(ServerConfig(broker="127.0.0.1:1"))


def deep_sleeper(boots: int, per_boot: int = 2) -> DeviceState:
    state = SETTINGS.new_state(DEVICE)
    for boot in range(1, boots + 1):
        t = T0 + (boot - 1) * WAKE_MS
        apply_status(state, status(0, dev=DEVICE, boot=boot, reset="deepsleep"), t, SETTINGS)
        for seq in range(per_boot):
            payload = encode_reading(Reading(DEVICE, boot, seq, t + seq * 1000, True,
                                             {"temp_c": 20.0 + seq * 0.1, "rh_pct": 40.0 + boot % 5}, 4000, -60))
            apply_reading(state, payload, t + seq * 1000, t + seq * 1000 + 50, SETTINGS)
        apply_status(state, asleep(dev=DEVICE, boot=boot), t + 5000, SETTINGS)
    return state


def allocated(build: Callable[[], object]) -> int:
    """Bytes of Python memory still held by what `build` returns."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = build()  # noqa: F841 (held until the second snapshot)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def figures(boots: int) -> dict:
    state = deep_sleeper(boots)
    text = json.dumps(state.to_dict())
    return {"boots": boots, "json_bytes": len(text), "table_value_bytes": allocated(lambda: json.loads(text)),
            "live_state_bytes": allocated(lambda: SETTINGS.load_state(DEVICE, json.loads(text))),
            "received": state.account.received, "gaps": state.account.gaps}


def test_a_deep_sleep_device_keeps_bounded_state() -> None:
    sizes = [len(json.dumps(deep_sleeper(boots).to_dict())) for boots in (100, 200, 300)]
    assert max(sizes) - min(sizes) < 64, sizes
    assert sizes[-1] < 6_000, sizes
    state = deep_sleeper(300)
    assert (state.account.received, state.account.duplicates, state.account.gaps) == (600, 0, 0)
    assert len(state.account.boots) <= 13  # the boots of the last hour (the grace period) and the newest


def test_a_state_is_stored_marshalled_and_reads_back_as_its_json_did() -> None:
    state = deep_sleeper(20)
    raw = encode_state(state)
    assert raw[:1] == MARSHALLED
    stored = decode_value(raw)
    # the baselines and panes as little-endian doubles, one bytes value each
    assert stored["detectors"]["metrics"]["temp_c"]["w"] == struct.pack(
        f"<{len(state.detectors.metrics['temp_c'].window)}d", *state.detectors.metrics["temp_c"].window)
    assert isinstance(stored["windows"]["rows"]["temp_c"], bytes)
    assert SETTINGS.load_state(DEVICE, stored).to_dict() == state.to_dict()
    # a state stored as JSON before reads back the same
    assert SETTINGS.load_state(DEVICE, decode_value(encode_value(state.to_dict()))).to_dict() == state.to_dict()
    with pytest.raises(ValueError, match="must be a dict"):
        decode_value(MARSHALLED + marshal.dumps([1, 2], 4))


if __name__ == "__main__":
    for n in (3, 100, 300):
        print(figures(n))
