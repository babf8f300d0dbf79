"""The boot side of an update on a virtual board running the real firmware against a real gateway.

The board runs the firmware's own main.py (boot_select.start() before the app, docs/ota.md "Hooks").
The release is the compiled firmware with another FW_VERSION (or an app that crashes), written into
the board's flash by device/ota_download.py from a pipe while the board is off (the download through
the session is tests/device/test_ota_firmware.py's), then the board is powered on:

- the whole firmware runs from /ota/a (birth `fw` 0.2.0, `ota` trial), confirms itself, and the
  readings the old version queued while the link was down are delivered by the new one: the outbox
  survives the switch;
- a release whose app crashes at start is rolled back by itself after crashlog's count reaches 2:
  the factory version runs again and says `boot_failures` 2.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferry import ota as fota
from ferry.gateway.process import GatewayProcess
from ferry.hwsim.board import VirtualBoard
from tests.device.fw_support import (
    Collector, Delivery, console_lines, device_id, install_firmware, make_board, mpy_cross,
)
from tests.device.ota_firmware_support import ota_state
from tests.device.ota_support import Board, ask, device

pytestmark = pytest.mark.integration

FAST = {"sample_ms": 200, "ack_timeout_ms": 800, "connect_timeout_ms": 800, "backoff_min_ms": 200,
        "backoff_max_ms": 1600, "keepalive_s": 10, "wdt_timeout_ms": 5000, "outbox_flush_every": 1,
        "outbox_flush_interval_ms": 200}
def release(build: Path, tmp: Path, version: str, app_source: str | None = None) -> fota.Release:
    """The compiled firmware as a release, app.mpy built from app.py with FW_VERSION = version (or app_source)."""
    tmp.mkdir(parents=True, exist_ok=True)
    app_py = tmp / "app.py"
    source = (Path(__file__).resolve().parents[2] / "device" / "app.py").read_text()
    app_py.write_text(app_source if app_source is not None else
                      source.replace('FW_VERSION = "0.1.0"', f'FW_VERSION = "{version}"'))
    subprocess.run([str(mpy_cross()), "-s", "app.py", "-o", str(tmp / "app.mpy"), str(app_py)], check=True,
                   timeout=60)
    files = [fota.ReleaseFile(p.name, (tmp / "app.mpy" if p.name == "app.mpy" else p).read_bytes())
             for p in sorted(build.glob("*.mpy")) if p.name != "boot_select.mpy"]
    return fota.make_release(version, files, 6)


def download(board: VirtualBoard, rel: fota.Release, tmp: Path) -> None:
    """What update mode does with the offer and the chunks: device/ota_download.py on the board's flash."""
    pipe = Board(tmp / "pipe")
    pipe.root.mkdir(exist_ok=True)
    pipe_flash = pipe.flash
    pipe_flash.rmdir()
    pipe_flash.symlink_to(board.flash_dir)
    with device(pipe) as proc:
        r = ask(proc, "C " + fota.offer_command(rel, "c-1").decode())
        assert r is not None and r["result"]["ota"] == "download", r
        s = rel.stream
        for off in range(0, len(s), 256):
            r = ask(proc, f"K {fota.encode_chunk(rel.tag, off, s[off:off + 256]).hex()} {off}") or r
        assert r["result"]["ota"] == "installed" and r["result"]["slot"] == "a", r


@pytest.fixture
def ota_board(tmp_path: Path, firmware: Path, gateway: GatewayProcess) -> Iterator[Callable[[], VirtualBoard]]:
    boards: list[VirtualBoard] = []

    def make() -> VirtualBoard:
        b = make_board(tmp_path, "board")
        install_firmware(b, firmware, broker_port=gateway.port, **FAST)
        boards.append(b)
        return b

    yield make
    for b in boards:
        b.stop()


@pytest.fixture
def collector(gateway: GatewayProcess) -> Iterator[Collector]:
    c = Collector(gateway.port, client_id="ota-collector", clean=True)
    try:
        yield c
    finally:
        c.close()


def births(collector: Collector, dev: str) -> list[dict]:
    return [json.loads(m.payload) for m in collector.on(dev, "status") if json.loads(m.payload)["state"] == "online"]


def test_the_firmware_runs_from_its_slot_and_delivers_what_the_old_version_queued(
        ota_board, collector: Collector, firmware: Path, tmp_path: Path) -> None:
    b = ota_board()
    dev = device_id(b)
    b.set_wifi(False)  # the old version samples with the link down: readings wait in its outbox
    b.power_on()
    assert b.wait_for(lambda: console_lines(b, "boot 1 "), 20), b.console()[-3000:]
    time.sleep(1.5)  # ~7 readings at 200 ms, flushed one by one
    b.power_cut()
    rel = release(firmware, tmp_path / "rel", "0.2.0")
    download(b, rel, tmp_path)
    b.set_wifi(True)
    b.power_on()  # a power-on: the trial's tries stay 0
    assert b.wait_for(lambda: any(x["fw"] == "0.2.0" for x in births(collector, dev)), 30), b.console()[-3000:]
    first = next(x for x in births(collector, dev) if x["fw"] == "0.2.0")
    assert first["ota"] == {"slot": "a", "state": "trial", "ver": "0.2.0", "last": ""}, first
    # the health check (3 readings acknowledged, the outbox intact) confirms it; the birth says so again
    assert b.wait_for(lambda: births(collector, dev)[-1]["ota"]["state"] == "confirmed", 30), b.console()[-3000:]
    assert ota_state(b) == {"cur": "a", "ver": "0.2.0", "last": "confirmed 0.2.0"}
    # the readings boot 1 (the old version) queued reach the gateway, sent by the new version
    assert b.wait_for(lambda: Delivery.of(collector.readings(dev)).count(1) >= 5, 30)
    assert Delivery.of(collector.readings(dev)).gaps(1) == []
    assert all(x["fw"] == "0.2.0" for x in births(collector, dev))  # the old version never got online
    print(f"release {rel.size} bytes in {len(rel.files)} files; boot 1 (0.1.0, offline) readings delivered by "
          f"0.2.0: {Delivery.of(collector.readings(dev)).count(1)}")


def test_a_release_that_crashes_at_start_rolls_back_by_itself(ota_board, collector: Collector, firmware: Path,
                                                               tmp_path: Path) -> None:
    b = ota_board()
    dev = device_id(b)
    rel = release(firmware, tmp_path / "rel", "0.3.0", app_source="raise RuntimeError('broken release')\n")
    download(b, rel, tmp_path)
    b.power_on()
    # crash, back-off 2 s, reset (tries 1), crash, back-off 4 s, reset: 2 failed starts -> rollback
    assert b.wait_for(lambda: any(x["fw"] == "0.1.0" for x in births(collector, dev)), 40), b.console()[-3000:]
    birth = births(collector, dev)[0]
    assert birth["boot_failures"] == 2
    assert b.console().count("broken release") >= 2
    last = [line for line in (b.flash_dir / "ota" / "state").read_text().splitlines() if line.startswith("last")]
    assert last == ["last rolled_back 0.3.0: crash loop (2 failed starts)"]
