"""The firmware in the field: bad commands, failed starts, a hung start-up and boards without
a sensor's pin, on virtual ESP32s (real MicroPython) talking to a real `ferry gateway`.

Each test shows that the board keeps working (or comes back by itself) and says what went
wrong where the server can see it: a reply, the status message, the crash file on flash.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from ferry.hwsim.board import VirtualBoard
from ferry.hwsim.micropython import ESP32_LIKE
from ferry.process import free_port
from tests.device.fw_support import (
    FAST_SETTINGS, SITE, Collector, Delivery, console_events, console_lines, device_id, install_firmware,
    make_board,
)

pytestmark = pytest.mark.integration

FAST = FAST_SETTINGS
CRASH_FILE = "ferry_crash"


@pytest.fixture
def board(tmp_path: Path, firmware: Path, gateway: GatewayProcess):
    """A factory: board(board_config={...}, **settings) -> a powered-off board with the firmware."""
    boards: list[VirtualBoard] = []

    def make(board_config: dict | None = None, **settings: object) -> VirtualBoard:
        b = make_board(tmp_path, f"board{len(boards)}", uid_last=len(boards) + 1, **(board_config or {}))
        install_firmware(b, firmware, broker_port=gateway.port, **{**FAST, **settings})
        boards.append(b)
        return b

    yield make
    for b in boards:
        b.stop()


def count(collector: Collector, b: VirtualBoard, boot: int) -> int:
    return Delivery.of(collector.readings(device_id(b))).count(boot)


def births(collector: Collector, b: VirtualBoard) -> list[dict]:
    return [json.loads(m.payload) for m in collector.on(device_id(b), "status")
            if json.loads(m.payload)["state"] == "online"]


# ---------------------------------------------------------------------------- commands

def test_bad_commands_are_answered_and_never_crash_the_loop(board, collector: Collector) -> None:
    """Non-UTF-8, too large (within the receive buffer and beyond it), unknown, not JSON: each is
    answered with an error and PUBACKed. The session is persistent, so a command the board
    crashed on would come back after every reset: one reset here would be a reset loop."""
    b = board()
    dev = device_id(b)
    b.power_on()
    assert collector.wait_for(lambda: count(collector, b, 1) >= 5, 20), b.console()[-3000:]
    big = json.dumps({"v": 1, "id": "c-big", "op": "get", "pad": "x" * 560}).encode()
    huge = json.dumps({"v": 1, "id": "c-huge", "op": "get", "pad": "x" * 3000}).encode()
    sent = [
        b"\xff\xfe{\"v\":1,\"id\":\"c-bin\",\"op\":\"get\"}",
        big,
        huge,
        b'{"v":1,"id":"c-op","op":"reboot"}',
        b'{"v":1,"id":"c-json",',
        b'{"v":1,"id":"c-get","op":"get"}',
    ]
    for payload in sent:
        collector.publish(f"ferry/{SITE}/{dev}/cmd", payload)
    assert collector.wait_for(lambda: len(collector.on(dev, "reply")) >= len(sent), 20), b.console()[-3000:]
    before = count(collector, b, 1)
    assert collector.wait_for(lambda: count(collector, b, 1) >= before + 10, 20), "it stopped publishing"
    replies = [json.loads(m.payload) for m in collector.on(dev, "reply")]
    assert replies == [
        {"v": 1, "id": None, "ok": False, "error": "payload: not UTF-8"},
        {"v": 1, "id": None, "ok": False, "error": f"payload: {len(big)} bytes, more than 480"},
        {"v": 1, "id": None, "ok": False, "error": f"payload: {len(huge)} bytes, more than 480"},
        {"v": 1, "id": "c-op", "ok": False, "error": "op: unknown 'reboot' (known: set get ota)"},
        {"v": 1, "id": None, "ok": False, "error": "payload: not JSON"},
        {"v": 1, "id": "c-get", "ok": True, "result": {"sample_s": 0, "sample_ms": 150, "mode": "always_on"}},
    ]
    assert b.boots() == ["pwron"], b.events
    assert not console_lines(b, "fatal"), b.console()[-3000:]
    got = Delivery.of(collector.readings(dev))
    assert got.gaps(1) == [] and got.first_arrival_order_ok(1)
    print(f"\nbad commands: {len(sent)} answered ({console_lines(b, 'cmd:')}); {got.count(1)} readings, no reset")


# ---------------------------------------------------------------------------- start-up failures

def test_a_failed_start_is_logged_counted_backed_off_and_reported_in_the_status(board, collector: Collector) -> None:
    """A module that cannot be imported (here a .mpy of another version, as an old mpy-cross
    makes it: ValueError): main.py writes the crash file, waits, resets; once the module is
    fixed the board starts, and its status says how many starts failed before it."""
    b = board()
    good = (b.flash_dir / "reading.mpy").read_bytes()
    (b.flash_dir / "reading.mpy").write_bytes(b"M\x05" + good[2:])
    b.power_on()
    assert b.wait_for(lambda: console_lines(b, "fatal:"), 15), b.console()[-3000:]
    crash = (b.flash_dir / CRASH_FILE).read_text()
    assert crash.startswith("failures 1\n") and "Error" in crash, crash
    assert len(crash.encode()) <= 512
    fatal = console_lines(b, "fatal:")[0]
    assert "reset in 2000 ms" in fatal, fatal
    (b.flash_dir / "reading.mpy").write_bytes(good)
    assert b.wait_for(lambda: len(b.boots()) >= 2, 10), b.events
    assert b.boots()[:2] == ["pwron", "hard"]
    # The failed start never reached its first reading, so it took no boot number.
    assert collector.wait_for(lambda: births(collector, b) and count(collector, b, 1) >= 3, 20), b.console()[-3000:]
    birth = births(collector, b)[0]
    assert birth["boot"] == 1 and birth["reset"] == "hard"
    assert birth["boot_failures"] == 1 and birth["faults"] == []
    # Counted once: the next start that fails again starts over at the shortest back-off.
    assert b.wait_for(lambda: (b.flash_dir / CRASH_FILE).read_text().startswith("failures 0\n"), 10)
    assert "Error" in (b.flash_dir / CRASH_FILE).read_text()  # the last crash stays readable
    print(f"\nfailed start: {fatal}; crash file {crash.splitlines()[:2]}; birth {birth}")


@pytest.mark.parametrize("heap_kb", [40, 52])
def test_memory_error_while_importing_the_firmware_resets_the_board(tmp_path: Path, firmware_esp32_like: Path,
                                                                    gateway: GatewayProcess, heap_kb: int) -> None:
    """A heap too small for the firmware (on the ESP32-like interpreter, whose heap is an ESP32's:
    the firmware needs ~60 KB, docs/device.md): `import app` raises MemoryError; main.py still logs
    it, writes the crash file and resets after the back-off (instead of stopping at the REPL)."""
    b = make_board(tmp_path, "small", interpreter=ESP32_LIKE, heap_bytes=heap_kb * 1024)
    install_firmware(b, firmware_esp32_like, broker_port=gateway.port, **FAST)
    try:
        b.power_on()
        assert b.wait_for(lambda: len(b.boots()) >= 2, 20), b.console()[-3000:]
        assert b.boots()[:2] == ["pwron", "hard"]
        assert "MemoryError" in console_lines(b, "fatal:")[0], b.console()[-3000:]
        crash = (b.flash_dir / CRASH_FILE).read_text()
        assert crash.startswith(("failures 1\n", "failures 2\n")) and "MemoryError" in crash, crash
        # What the failed import got to is dropped from sys.modules before the crash file is written:
        # at 40 KB 22,736 bytes are free then (6,464 when the half-built modules stayed).
        free = int(console_lines(b, "fatal:")[0].rsplit("heap free ", 1)[1])
        assert heap_kb != 40 or free >= 16 * 1024, free
        print(f"\nMemoryError at import ({heap_kb} KB): {console_lines(b, 'fatal:')}")
    finally:
        b.stop()


def test_the_watchdog_runs_before_the_firmware_is_imported(board) -> None:
    """A start-up that hangs (here in `import app`) ends in a watchdog reset."""
    b = board()
    (b.flash_dir / "app.mpy").unlink()
    (b.flash_dir / "app.py").write_text("while True:\n    pass\n")
    b.power_on()
    assert b.wait_for(lambda: len(b.boots()) >= 2, 20), b.console()[-3000:]
    assert b.boots()[:2] == ["pwron", "wdt"], b.events
    watchdog = [e for e in b.events if e.kind == "watchdog"]
    assert watchdog and watchdog[0].detail == f"not fed for {FAST['wdt_timeout_ms']} ms"


@pytest.mark.parametrize(("chip", "settings", "faults"), [
    ("esp32s3", {"i2c_scl_pin": 9, "i2c_sda_pin": 8}, ["battery"]),
    ("esp32c3", {}, ["sht31", "battery"]),
], ids=["esp32s3", "esp32c3"])
def test_a_board_without_a_sensor_pin_runs_and_says_so_in_its_status(board, collector: Collector, chip: str,
                                                                     settings: dict, faults: list[str]) -> None:
    """No ADC on pin 35 (ESP32-S3, -C3), no GPIO 22 for the I2C clock (-C3): the firmware runs
    without that sensor and names it in its status."""
    b = board(board_config={"chip": chip}, **settings)
    b.power_on()
    assert collector.wait_for(lambda: births(collector, b), 20), b.console()[-3000:]
    birth = births(collector, b)[0]
    assert birth["faults"] == faults and birth["boot_failures"] == 0
    if "sht31" in faults:  # nothing to measure: no readings, but connected, answering, alive
        time.sleep(1.0)
        assert count(collector, b, 1) == 0
    else:
        assert collector.wait_for(lambda: count(collector, b, 1) >= 5, 20)
        readings = collector.readings(device_id(b))
        assert all(r.battery_mv is None and set(r.metrics) == {"temp_c", "rh_pct"} for r in readings)
    assert b.boots() == ["pwron"]
    print(f"\n{chip}: birth {birth}; {console_lines(b, 'hw:')}")


def test_a_silent_ntp_server_is_retried_less_and_less_and_never_stalls_the_readings(board, collector: Collector) -> None:
    """Each NTP try blocks for ntptime's timeout (1 s; a DNS lookup can hang longer). Retried every
    minute, while readings waited for their PUBACKs, it could outlast ack_timeout_ms and drop the
    link. Now: retried after ntp_retry_s, doubling, and only while nothing is in flight."""
    b = board(ntp_retry_s=1, sample_ms=200)
    b.set_sensor_faults("ntp")
    b.power_on()

    def tries() -> list[tuple[int, str]]:
        return [(t, m) for t, m in console_events(b) if m.startswith("clock: NTP failed")]

    assert b.wait_for(lambda: len(tries()) >= 3, 30), b.console()[-3000:]
    assert count(collector, b, 1) >= 25  # ~8 s of readings at 200 ms went on meanwhile
    tries = tries()
    waits = [int(m.rsplit(" in ", 1)[1].split()[0]) for _, m in tries]
    assert waits[:3] == [1, 2, 4], tries  # backed off: 1, 2, 4 s ...
    gaps = [(b2 - a2) / 1000 for (a2, _), (b2, _) in zip(tries, tries[1:])]
    assert all(gap >= wait for gap, wait in zip(gaps, waits)), (gaps, waits)
    console = b.console()
    assert "mqtt: connected" in console and console.count("mqtt: connected") == 1, console[-3000:]
    assert "lost" not in " ".join(m for _, m in console_events(b) if m.startswith("mqtt:")), console[-3000:]


def test_a_duty_cycle_back_off_longer_than_the_watchdog_is_slept_in_fed_steps(tmp_path: Path, firmware: Path) -> None:
    """Awake in duty-cycle mode with the gateway unreachable, the board backs off between connects;
    a back-off (here 2.5-5 s) longer than the watchdog (2.5 s) was one sleep, and the watchdog reset
    the board in it. Now it sleeps in steps of at most half the watchdog, feeding it."""
    b = make_board(tmp_path, "sleeper")
    install_firmware(b, firmware, broker_port=free_port(), **{**FAST, "mode": "duty_cycle", "sample_ms": 60_000,
                                                                "wake_budget_ms": 12_000, "wdt_timeout_ms": 2_500,
                                                                "connect_timeout_ms": 400, "ack_timeout_ms": 400,
                                                                "backoff_min_ms": 5_000, "backoff_max_ms": 5_000})
    try:
        b.power_on()
        assert b.wait_for(lambda: sum(m.startswith("mqtt: reconnect in") for _, m in console_events(b)) >= 3, 30), \
            b.console()[-3000:]
        assert not [e for e in b.events if e.kind == "watchdog"], b.events
        assert b.boots() == ["pwron"], b.boots()
    finally:
        b.stop()
