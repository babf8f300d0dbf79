"""Ferry's firmware on virtual ESP32s (real MicroPython, hw-sim shims), talking to a real
`ferry gateway` through the link simulator: normal run, outage, half-open link, gateway
restarts, commands, duty cycle, watchdog.

Every test stops what it started (boards, links, gateways). Timing is never asserted
as an upper bound; numbers worth knowing are printed (run with -s).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from ferry.hwsim.board import VirtualBoard
from ferry.hwsim.link import LinkConfig, LinkThread
from tests.device.fw_support import (
    FAST_SETTINGS, SITE, Collector, Delivery, cmd_payload, console_events, console_lines, device_id,
    install_firmware, make_board, read_config,
)

pytestmark = pytest.mark.integration

FAST = FAST_SETTINGS
EPOCH_2000_MS = 946_684_800_000


@pytest.fixture
def link(gateway: GatewayProcess) -> Iterator[LinkThread]:
    links = LinkThread([LinkConfig(upstream_host="127.0.0.1", upstream_port=gateway.port, name="devices")])
    links.start()
    try:
        yield links
    finally:
        links.stop()


@pytest.fixture
def board(tmp_path: Path, firmware: Path, link: LinkThread):
    """A factory: board(**settings) -> a powered-off board with the firmware and its config."""
    boards: list[VirtualBoard] = []

    def make(**settings: object) -> VirtualBoard:
        b = make_board(tmp_path, f"board{len(boards)}", uid_last=len(boards) + 1)
        install_firmware(b, firmware, broker_port=link.port(), **{**FAST, **settings})
        boards.append(b)
        return b

    yield make
    for b in boards:
        b.stop()


def readings_of(collector: Collector, b: VirtualBoard) -> Delivery:
    return Delivery.of(collector.readings(device_id(b)))


def wait_for_readings(collector: Collector, b: VirtualBoard, boot: int, count: int, timeout_s: float = 30) -> Delivery:
    """Wait until seq 0..count-1 of `boot` have all arrived; returns what arrived."""
    ok = collector.wait_for(lambda: readings_of(collector, b).count(boot) >= count
                            and not readings_of(collector, b).gaps(boot), timeout_s)
    got = readings_of(collector, b)
    assert ok, f"boot {boot}: {got.count(boot)} readings, gaps {got.gaps(boot)[:20]}\n{b.console()[-3000:]}"
    return got


def check_delivery(got: Delivery, boot: int, label: str) -> None:
    """No gaps, replay in order, duplicates counted and printed."""
    assert got.gaps(boot) == [], f"missing seq numbers in boot {boot}: {got.gaps(boot)}"
    assert got.first_arrival_order_ok(boot), f"boot {boot}: out of order: {got.seqs[boot]}"
    print(f"\n{label}: boot {boot}: {got.count(boot)} readings, seq 0..{max(got.seqs[boot])}, "
          f"{got.duplicates()} duplicates")


def backoff_schedule(b: VirtualBoard) -> list[int]:
    return [int(m.split()[3]) for m in console_lines(b, "mqtt: reconnect in ")]


def retained_status(port: int, device: str) -> dict:
    """The retained status a new subscriber gets."""
    c = Collector(port, client_id=f"fw-test-retained-{time.monotonic_ns()}", clean=True)
    try:
        assert c.wait_for(lambda: c.on(device, "status"), 10), "no retained status"
        message = c.on(device, "status")[0]
        assert message.retain
        return json.loads(message.payload)
    finally:
        c.close()


# ---------------------------------------------------------------------------- 1: normal run

def test_normal_run_in_order_with_birth_and_last_will(board, collector: Collector, gateway: GatewayProcess) -> None:
    # The outbox's defaults (10 readings per flush): the power cut below finds readings in RAM.
    b = board(outbox_flush_every=10, outbox_flush_interval_ms=5000)
    dev = device_id(b)
    b.power_on()
    got = wait_for_readings(collector, b, boot=1, count=25)
    check_delivery(got, 1, "normal run")
    readings = collector.readings(dev)
    assert {r.device for r in readings} == {dev} and {r.boot for r in readings} == {1}
    first = next(r for r in readings if r.seq == 0)
    assert first.synced is False and first.ts_ms < 60_000  # before NTP: ms since boot
    synced = [r for r in readings if r.synced]
    assert synced and min(r.seq for r in synced) >= 1
    assert all(r.ts_ms > EPOCH_2000_MS for r in synced)  # Unix ms, converted from the 2000 epoch
    assert all(set(r.metrics) == {"temp_c", "rh_pct"} and 3000 < r.battery_mv < 4300 for r in readings)
    assert first.rssi_dbm is None  # sampled before Wi-Fi was up: the optional key is left out
    assert all(r.rssi_dbm == -60 for r in synced)

    birth = retained_status(gateway.port, dev)
    assert birth["state"] == "online" and birth["boot"] == 1 and birth["fw"] == "0.1.0"
    assert birth["reset"] == "power_on" and birth["outbox"]["dropped"] == 0

    time.sleep(0.5)  # a few readings into RAM after the last flush (they arrive in tens)
    b.power_cut()
    assert collector.wait_for(lambda: any(s.state.value == "offline" for s in collector.statuses(dev)), 15)
    will = retained_status(gateway.port, dev)
    assert will == {"v": 1, "dev": dev, "state": "offline", "boot": 1}

    # Back on: boot 2. Every boot-1 reading is delivered (what was on flash is sent now)
    # or counted as lost in the birth's outbox.dropped, with its seq range on the console.
    b.power_on()
    wait_for_readings(collector, b, boot=2, count=5)
    birth2 = next(s for s in collector.statuses(dev) if s.boot == 2 and s.state.value == "online")
    boot_line = console_lines(b, "boot 2 ")[0]
    m = re.search(r"(\d+) lost(?: \((\d+), (\d+), (\d+)\))?$", boot_line)
    lost = set(range(int(m.group(3)), int(m.group(4)) + 1)) if m.group(2) else set()
    assert birth2.outbox_dropped == int(m.group(1)) == len(lost), boot_line
    delivered = set(readings_of(collector, b).seqs[1])
    assert not delivered & lost
    assert delivered | lost == set(range(max(delivered | lost) + 1)), (sorted(delivered), sorted(lost))
    assert birth2.reset_cause == "power_on"
    print(f"power cut: boot 1 ended at seq {max(delivered | lost)}: {len(delivered)} delivered, "
          f"{len(lost)} lost unflushed and reported, {readings_of(collector, b).duplicates()} duplicates "
          f"(acknowledged readings presented again after the power cut) ({boot_line})")


# ---------------------------------------------------------------------------- 2: outage

def test_outage_readings_are_kept_and_replayed_in_order(board, collector: Collector, link: LinkThread) -> None:
    b = board()
    b.power_on()
    before = wait_for_readings(collector, b, boot=1, count=10)
    link.set_profile("outage")
    time.sleep(3.0)
    link.set_profile("perfect")
    # Everything sampled during the outage arrives: ~20 readings at 150 ms beyond what arrived before.
    got = wait_for_readings(collector, b, boot=1, count=before.count(1) + 25)
    check_delivery(got, 1, "outage")
    assert console_lines(b, "mqtt: link lost"), "the device never noticed the outage"
    schedule = backoff_schedule(b)
    print(f"outage: reconnect delays {schedule} ms")
    assert len(schedule) >= 2
    assert all(d <= FAST["backoff_max_ms"] for d in schedule)
    statuses = collector.statuses(device_id(b))
    assert statuses[-1].state.value == "online"


def test_broker_name_is_looked_up_once_and_again_only_after_failed_connects(board, collector: Collector,
                                                                           link: LinkThread) -> None:
    b = board(broker_host="localhost")
    b.power_on()
    before = wait_for_readings(collector, b, boot=1, count=5)
    link.set_profile("outage")
    time.sleep(3.0)
    link.set_profile("perfect")
    check_delivery(wait_for_readings(collector, b, boot=1, count=before.count(1) + 20), 1, "dns")
    lookups = len(console_lines(b, "dns: looking up localhost"))
    failures = len(console_lines(b, "mqtt: connect failed"))
    print(f"dns: {lookups} lookups for {failures} failed connects and the successful ones")
    assert failures >= 3, "the outage should have failed several connects"
    assert lookups == 1 + failures // 3  # once, then again after every 3 failed connects in a row


def test_wifi_down_at_boot_then_outage_births_after_every_connect(board, collector: Collector,
                                                                  link: LinkThread) -> None:
    """Wi-Fi down at power-on: readings go into the outbox and arrive once the access point is
    up; then a mid-run link outage: after every (re)connect the birth `online` is published
    again, with the outbox counters."""
    b = board(wifi_timeout_ms=300)
    dev = device_id(b)
    b.set_wifi(False)
    b.power_on()
    assert b.wait_for(lambda: len(console_lines(b, "wifi: not associated")) >= 2, 15), b.console()[-2000:]
    time.sleep(1.0)
    assert not collector.readings(dev), "published without Wi-Fi"
    b.set_wifi(True)
    before = wait_for_readings(collector, b, boot=1, count=10)
    first = [s for s in collector.statuses(dev) if s.state.value == "online"]
    assert first and first[0].outbox_queued >= 5, first  # the readings taken while Wi-Fi was down
    link.set_profile("outage")
    assert b.wait_for(lambda: console_lines(b, "mqtt: link lost"), 15)
    time.sleep(1.5)
    link.set_profile("perfect")
    got = wait_for_readings(collector, b, boot=1, count=before.count(1) + 15)
    check_delivery(got, 1, "wifi down at boot, then outage")
    assert collector.wait_for(lambda: len([s for s in collector.statuses(dev) if s.state.value == "online"])
                              >= len(console_lines(b, "mqtt: connected")), 10)
    births = [s for s in collector.statuses(dev) if s.state.value == "online"]
    connects = console_lines(b, "mqtt: connected")
    print(f"wifi down at boot: {len(console_lines(b, 'wifi: not associated'))} association timeouts; "
          f"{len(connects)} connects, {len(births)} births, queued at each: {[s.outbox_queued for s in births]}")
    assert len(connects) >= 2
    assert len(births) >= len(connects)  # one per connect (more if the outbox reported a loss)
    assert all(s.boot == 1 and s.outbox_queued is not None and s.outbox_dropped == 0 for s in births)


# ---------------------------------------------------------------------------- 3: half-open

def test_half_open_link_is_detected_and_in_flight_readings_are_resent(board, collector: Collector,
                                                                       link: LinkThread) -> None:
    b = board()
    b.power_on()
    before = wait_for_readings(collector, b, boot=1, count=10)
    t0 = time.monotonic()
    link.set_profile("blackhole")
    assert b.wait_for(lambda: console_lines(b, "mqtt: link lost: no PUBACK"), timeout_s=15, poll_s=0.01)
    detected_s = time.monotonic() - t0
    time.sleep(max(0.0, 3.0 - detected_s))
    link.set_profile("perfect")
    got = wait_for_readings(collector, b, boot=1, count=before.count(1) + 25)
    check_delivery(got, 1, "half-open")
    resent = console_lines(b, "mqtt: resent")
    print(f"half-open: detected {detected_s * 1000:.0f} ms after the blackhole began "
          f"(ack_timeout_ms {FAST['ack_timeout_ms']}); {resent}; reconnect delays {backoff_schedule(b)} ms")
    assert resent, "nothing was resent after the reconnect"
    assert any("connect failed" in m for m in console_lines(b, "mqtt:")), "no attempt during the blackhole"


def wait_for_ping_round_trip(b, link: LinkThread, timeout_s: float = 10.0) -> None:
    """Wait until the link carried a PINGREQ alone upstream (2 bytes) and then something back."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = link.stats()
        assert b.wait_for(lambda: link.stats().bytes_upstream != before.bytes_upstream, timeout_s=5, poll_s=0.002)
        sent = link.stats()
        if sent.bytes_upstream - before.bytes_upstream == 2:
            assert b.wait_for(lambda: link.stats().bytes_downstream != sent.bytes_downstream, timeout_s=5,
                              poll_s=0.002)
            return
    raise AssertionError("no lone PINGREQ on the link")


def test_idle_half_open_link_is_detected_by_ping(board, collector: Collector, link: LinkThread) -> None:
    b = board(sample_ms=20000, keepalive_s=2)  # one reading, then idle: pings every second
    b.power_on()
    wait_for_readings(collector, b, boot=1, count=1)
    wait_for_ping_round_trip(b, link)  # nothing in flight from here: a ping comes 1 s after the last send,
    link.set_profile("blackhole")      # later than any ack deadline (800 ms)
    t0 = time.monotonic()
    assert b.wait_for(lambda: console_lines(b, "mqtt: link lost: no PINGRESP"), timeout_s=15, poll_s=0.01), \
        console_lines(b, "mqtt:")
    detected_s = time.monotonic() - t0
    link.set_profile("perfect")
    assert b.wait_for(lambda: len(console_lines(b, "mqtt: connected")) >= 2, timeout_s=15)
    print(f"\nidle half-open: detected by a missing PINGRESP {detected_s * 1000:.0f} ms after the blackhole "
          f"began (pings after 1 s idle, ack_timeout_ms {FAST['ack_timeout_ms']})")


# ---------------------------------------------------------------------------- 4: gateway restarts

@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_gateway_restart_keeps_session_and_queued_commands(board, collector: Collector, link: LinkThread,
                                                          gateway: GatewayProcess, how: str) -> None:
    b = board()
    dev = device_id(b)
    b.power_on()
    before = wait_for_readings(collector, b, boot=1, count=10)
    # The device goes offline; a command waits for it in its session on the gateway.
    link.set_profile("outage")
    assert b.wait_for(lambda: console_lines(b, "mqtt: link lost"), timeout_s=10)
    collector.publish(f"ferry/{SITE}/{dev}/cmd", cmd_payload("c-restart", sample_ms=200))
    if how == "sigterm":
        gateway.stop()
    else:
        gateway.kill()
    gateway.start()
    assert collector.wait_connected(20)
    link.set_profile("perfect")
    assert collector.wait_for(lambda: collector.on(dev, "reply"), 20), b.console()[-3000:]
    reply = json.loads(collector.on(dev, "reply")[0].payload)
    assert reply == {"v": 1, "id": "c-restart", "ok": True, "result": {"sample_ms": 200}}
    assert "session present 1" in console_lines(b, "mqtt: connected")[-1]
    # A second restart while the device is connected and publishing.
    time.sleep(0.5)
    if how == "sigterm":
        gateway.stop()
    else:
        gateway.kill()
    gateway.start()
    assert collector.wait_connected(20)
    count = readings_of(collector, b).count(1)
    got = wait_for_readings(collector, b, boot=1, count=count + 15)
    check_delivery(got, 1, f"gateway {how}")
    assert got.count(1) > before.count(1)
    print(f"gateway {how}: connects {console_lines(b, 'mqtt: connected')}")


# ---------------------------------------------------------------------------- 5: commands

def test_cmd_sets_the_sample_interval_which_survives_a_reset(board, collector: Collector) -> None:
    b = board()
    dev = device_id(b)
    b.power_on()
    wait_for_readings(collector, b, boot=1, count=5)
    topic = f"ferry/{SITE}/{dev}/cmd"
    collector.publish(topic, cmd_payload("c-bad", sample_s=0))
    collector.publish(topic, cmd_payload("c-42", sample_s=1))
    assert collector.wait_for(lambda: len(collector.on(dev, "reply")) >= 2, 15)
    replies = {r["id"]: r for r in (json.loads(m.payload) for m in collector.on(dev, "reply"))}
    assert replies["c-bad"] == {"v": 1, "id": "c-bad", "ok": False, "error": "args.sample_s: must be 1..86400"}
    assert replies["c-42"] == {"v": 1, "id": "c-42", "ok": True, "result": {"sample_s": 1}}
    assert read_config(b)["sample_ms"] == 1000

    def spacing_after(boot: int, first_seq: int, n: int) -> list[int]:
        assert collector.wait_for(lambda: sum(1 for r in collector.readings(dev) if r.boot == boot
                                              and r.seq >= first_seq) >= n, 20)
        rs = sorted({r.seq: r for r in collector.readings(dev) if r.boot == boot and r.seq >= first_seq}.values(),
                    key=lambda r: r.seq)
        return [b_.ts_ms - a.ts_ms for a, b_ in zip(rs, rs[1:])]

    last = max(r.seq for r in collector.readings(dev))
    gaps = spacing_after(1, last + 1, 3)
    assert all(g >= 900 for g in gaps), gaps
    b.power_cut()
    b.power_on()
    gaps2 = spacing_after(2, 1, 3)  # seq 0 is taken at once after the boot
    assert all(g >= 900 for g in gaps2), gaps2
    print(f"\ncmd: sample spacing after the command {gaps} ms, after the reset {gaps2} ms")


# ---------------------------------------------------------------------------- 6: duty cycle

def test_duty_cycle_deep_sleeps_and_sends_the_backlog(board, collector: Collector, link: LinkThread,
                                                       gateway: GatewayProcess) -> None:
    b = board(mode="duty_cycle", sample_ms=700, wake_budget_ms=1500, connect_timeout_ms=400,
              ack_timeout_ms=400, backoff_min_ms=100, backoff_max_ms=400, wdt_timeout_ms=3000)
    dev = device_id(b)
    link.set_profile("outage")  # the first wakes cannot reach the gateway
    b.power_on()
    assert b.wait_for(lambda: len(b.boots()) >= 3, timeout_s=20)
    link.set_profile("perfect")
    assert b.wait_for(lambda: len(b.boots()) >= 6, timeout_s=20)
    assert collector.wait_for(lambda: len({r.boot for r in collector.readings(dev)}) >= 5, 20)
    readings = collector.readings(dev)
    boots = sorted({r.boot for r in readings})
    assert boots == list(range(1, max(boots) + 1)), boots  # the backlog of the offline wakes arrived
    assert all(r.seq == 0 for r in readings)  # seq restarts at 0 every wake
    assert b.boots()[0] == "pwron" and set(b.boots()[1:]) == {"deepsleep"}
    assert [e.kind for e in b.events].count("deepsleep") >= 5
    wakes = console_lines(b, "wake:")
    sent = [w for w in wakes if w.startswith("wake: 0 pending")]
    assert sent, wakes
    left = [int(re.search(r"(-?\d+) ms of the budget left", w).group(1)) for w in sent]
    assert all(ms > 0 for ms in left)  # sent within the budget
    dup = Delivery.of(readings)
    print(f"\nduty cycle: boots {b.boots()}; {len(readings)} readings of boots {boots}, {dup.duplicates()} duplicates; "
          f"wake logs {wakes}")
    b.stop()
    assert retained_status(gateway.port, dev)["state"] == "offline"  # asleep says offline


# ---------------------------------------------------------------------------- 7: watchdog

def test_watchdog_is_fed_through_reconnects(board, collector: Collector, link: LinkThread) -> None:
    b = board(wdt_timeout_ms=3000, connect_timeout_ms=500, ack_timeout_ms=500)
    b.power_on()
    assert b.wait_for(lambda: console_lines(b, "watchdog:"), 10)
    wait_for_readings(collector, b, boot=1, count=5)
    link.set_profile("outage")
    time.sleep(3.5)  # longer than the watchdog's timeout, spent in backoff and failed connects
    link.set_profile("blackhole")
    time.sleep(2.0)  # connects that hang until connect_timeout_ms
    link.set_profile("perfect")
    got = wait_for_readings(collector, b, boot=1, count=readings_of(collector, b).count(1) + 10)
    assert b.boots() == ["pwron"], b.events
    assert "watchdog" not in [e.kind for e in b.events]
    check_delivery(got, 1, "watchdog")
    started = [e for e in console_events(b) if e[1].startswith("watchdog:")]
    print(f"watchdog: {started[0][1]}; running {(console_events(b)[-1][0] - started[0][0]) / 1000:.1f} s, no reset")
