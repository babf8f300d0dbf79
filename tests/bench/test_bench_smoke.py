"""`ferry bench broker` end to end with tiny parameters: the generator delivers, the report is well-formed.

No timing assertions: only that messages flowed and every part of the output is there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ferry.bench.broker import CaseResult, RunRecord, describe_environment
from ferry.bench.model import FlowResult, LoadSpec, Mode
from ferry.bench.report import render, results_json
from ferry.bench.runner import run_load
from ferry.bench.scenarios import Case, check_targets
from ferry.bench.targets import FERRY_FSYNC, FerryTarget

pytestmark = pytest.mark.integration

TINY = LoadSpec(Mode.THROUGHPUT, "127.0.0.1", 0, publishers=2, subscribers=1, warmup_s=0.5, duration_s=1.5,
                drain_s=3.0, max_outstanding=500)


def test_generator_delivers_through_ferry_and_the_report_is_well_formed(tmp_path: Path) -> None:
    with FerryTarget(FERRY_FSYNC, tmp_path / "ferry", None) as ferry:
        qos0 = run_load(replace(TINY, port=ferry.port, broker_pid=ferry.pid), tmp_path, "qos0")
        qos1 = run_load(replace(TINY, port=ferry.port, broker_pid=ferry.pid, qos=1, persistent_subscribers=True,
                                max_outstanding=0, topic_prefix="bench1", client_id_prefix="q1"),
                        tmp_path, "qos1")

    for result in (qos0, qos1):
        assert isinstance(result, FlowResult)
        assert result.errors == ()
        assert result.published_total > 0
        assert result.delivered_total > 0
        assert result.latency.count > 0
        assert result.broker_rss_kb > 0
    assert qos1.ack_latency.count > 0
    assert qos1.delivered_total == qos1.expected_total  # QoS 1: nothing acknowledged is missing

    case = Case("qos0-throughput", "closed-loop", "2 → 1, QoS 0, tiny", TINY, (FERRY_FSYNC,))
    results = {FERRY_FSYNC.label: qos0}
    case_result = CaseResult(case, (RunRecord(FERRY_FSYNC, qos0, None, ("durability = fsync",), (1024, 1024)),),
                             tuple(check_targets(case, results)))
    env = describe_environment(pin=False, mosquitto=None)
    text = render(env, [case_result])
    for expected in ("== qos0-throughput: 2 → 1, QoS 0, tiny ==", "Ferry", "delivered msg/s", "latency p99 ms",
                     "Mosquitto was not found", "apt-get install mosquitto", "NOT CHECKED",
                     "was the load generator the bottleneck?"):
        assert expected in text, expected
    data = json.loads(json.dumps(results_json(env, [case_result])))
    run = data["cases"][0]["runs"][0]
    assert run["broker"] == "Ferry"
    assert run["result"]["delivered_total"] == qos0.delivered_total


def test_other_bench_targets_are_not_built() -> None:
    result = subprocess.run([sys.executable, "-m", "ferry", "bench", "kafka-bridge"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "not built" in result.stderr
