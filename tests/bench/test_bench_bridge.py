"""`ferry bench bridge` end to end at a tiny size: every phase runs, the report is complete, and every
reading Ferry's gateway acknowledged is in Kafka, the ones spooled across a SIGKILL included.

Behaviour only: no figure is checked against a number (timings never are). The peer runs too when
Mosquitto is installed.
"""

from __future__ import annotations

import json
import pstats
import subprocess
import sys
from pathlib import Path

import pytest

from ferry.bench.targets import find_mosquitto

pytestmark = pytest.mark.integration

SPOOL = 2000
PUBLISHERS = 4
TAGS = ("live", "fill", "flow", "full")
"""The phases' devices: sustained load, the first outage, live traffic during the drain, the outage
before the SIGKILL."""


def test_bench_bridge_reports_every_phase_and_ferry_loses_nothing(tmp_path: Path) -> None:
    with_peer = find_mosquitto() is not None
    out = tmp_path / "bridge.json"
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "bench", "bridge", "--spool", str(SPOOL), "--duration", "1",
         "--warmup", "0.5", "--publishers", str(PUBLISHERS), "--window", "10", "--live-rate", "200",
         "--json", str(out), "--work-dir", str(tmp_path / "work"), "--peer" if with_peer else "--no-peer",
         "--profile", str(tmp_path / "prof")],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    text = result.stdout
    for expected in ("| measure | Ferry |", "records acknowledged by Kafka, per s", f"drain of {SPOOL:,} spooled",
                     f"restart with {SPOOL:,} spooled", "acknowledged readings missing in Kafka",
                     "What was saturated", "The load generator alone against a null broker", "Targets (Ferry):",
                     "≥ 20,000 msg/s", "≥ 50,000 msg/s", "≤ 150 MB at 10,000,000 spooled", "≤ 10 s"):
        assert expected in text, expected
    assert ("Mosquitto + forwarder" in text) == with_peer

    data = json.loads(out.read_text())
    runs = {run["label"]: run for run in data["runs"]}
    assert set(runs) == ({"Ferry", "Mosquitto + forwarder"} if with_peer else {"Ferry"})
    ferry = runs["Ferry"]
    assert ferry["error"] is None
    assert ferry["drain"]["spooled"] == SPOOL
    assert ferry["restart"]["spooled"] == SPOOL
    # The spool survived the SIGKILL; deliveries Kafka had just acknowledged may come back too (duplicates).
    assert ferry["restart"]["spool_after"] >= SPOOL
    count = ferry["count"]
    assert count["missing"] == 0 and count["deadlettered"] == 0
    by_tag = {tag: [d for d in count["devices"] if d["device"].startswith(f"{tag}-")] for tag in TAGS}
    for tag, devices in by_tag.items():
        assert len(devices) == PUBLISHERS, tag
        assert all(d["acknowledged"] > 0 and d["missing"] == 0 and d["distinct"] >= d["acknowledged"]
                   for d in devices), tag
    assert sum(d["acknowledged"] for d in by_tag["fill"]) == SPOOL
    assert sum(d["acknowledged"] for d in by_tag["full"]) == SPOOL
    assert {t["name"] for t in data["targets"]} == {"sustained, fsync on", "drain", "RSS", "restart"}
    # --profile: the gateway ran under cProfile; a start that ended with SIGTERM wrote its profile
    # (the one SIGKILLed for the restart phase cannot).
    profiles = sorted((tmp_path / "prof").glob("gateway-*.prof"))
    assert profiles and pstats.Stats(str(profiles[-1])).total_calls > 0
    if with_peer:
        peer = runs["Mosquitto + forwarder"]
        assert peer["error"] is None
        assert peer["sustained"]["kafka_per_s"] > 0 and peer["drain"]["spooled"] == SPOOL


def test_bench_bridge_rejects_nonsense() -> None:
    result = subprocess.run([sys.executable, "-m", "ferry", "bench", "bridge", "--spool", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "positive" in result.stderr


def test_benchmark_readings_are_contract_telemetry_of_one_size() -> None:
    from ferry.bench.bridge_model import PAYLOAD_BYTES, device_id, reading_index, reading_payload, telemetry_topic
    from ferry.contract import BridgeNaming, kafka_record, parse_reading

    naming = BridgeNaming("bench")
    for tag, publisher, index in (("live", 0, 0), ("full", 9999, 899_999_999)):
        device = device_id(tag, publisher)
        payload = reading_payload(device, index)
        assert len(payload) == PAYLOAD_BYTES
        assert reading_index(payload) == index
        reading = parse_reading(payload)
        assert reading.device == device
        record = kafka_record(naming, telemetry_topic(device), payload, 0)
        assert (record.topic, record.key, record.value) == (naming.telemetry_topic, device.encode(), payload)
