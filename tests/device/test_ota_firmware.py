"""The firmware takes an update while it runs (docs/ota.md): a virtual board on the 32-bit ESP32-like
interpreter with a 64 KB heap, the real firmware connected to a real gateway and sampling every 200 ms,
gets an offer from `ferry.ota.push` (operator side), resets into update mode, which answers the
redelivered offer, downloads the release through the session's .../ota topic, switches and resets into
it; the new version passes its trial and confirms; every reading of both boots arrives. Update mode's heap
low-water mark (gc.mem_free() after a collection: after each chunk, and at the download's peaks inside
ota_download.py/ota_stage.py) and the updated board's steady state are reported (docs/ota.md, "Heap")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from ferry.bench.ota_fleet import firmware_release
from ferry.hwsim.micropython import ESP32_LIKE, ESP32_LIKE_HEAP_BYTES, esp32_like_mpy_cross
from tests.device.fw_support import Collector, Delivery, console_lines, device_id, install_firmware, make_board
from tests.device.ota_firmware_support import UPDATE_MODE_END, PushThread, ota_state

pytestmark = pytest.mark.integration

UPDATE_MODE_FLOOR = 2048
"""Least free heap (after a collection) update mode may have at the download's peaks on a 64 KB board:
measured 3.9-9.6 KB, depending on where the flash path's and the modules' allocations fall (docs/ota.md)."""
STATS = re.compile(r"stats seq \d+ free (\d+)")
FAST = {"sample_ms": 200, "ack_timeout_ms": 2000, "connect_timeout_ms": 2000, "backoff_min_ms": 200,
        "backoff_max_ms": 1600, "keepalive_s": 10, "wdt_timeout_ms": 10000, "outbox_flush_every": 5,
        "outbox_flush_interval_ms": 1000, "log_stats_every": 5}
HEAP = r"heap: free (\d+) low (\d+)"


def test_an_update_fits_a_64k_heap_while_the_firmware_samples(tmp_path: Path, firmware_esp32_like: Path,
                                                               gateway: GatewayProcess,
                                                               heap_report: Callable[[str], None]) -> None:
    board = make_board(tmp_path, "b", interpreter=ESP32_LIKE)
    install_firmware(board, firmware_esp32_like, broker_port=gateway.port, **FAST)
    dev = device_id(board)
    rel = firmware_release(firmware_esp32_like, tmp_path / "rel", "0.2.0", esp32_like_mpy_cross(), 6)
    collector = Collector(gateway.port, client_id="ota-fw-collector", clean=True)
    try:
        board.power_on()
        assert board.wait_for(lambda: console_lines(board, "heap: free") and
                              any(json.loads(m.payload).get("state") == "online" for m in collector.on(dev, "status")),
                              30), board.console()[-3000:]
        push = PushThread(gateway.port, "lab", [dev], rel)
        result = push.join()
        assert result[dev].state.value == "installed", (result[dev], board.console()[-3000:])
        assert board.wait_for(lambda: ota_state(board).get("last", "").startswith("confirmed"), 60), \
            board.console()[-3000:]
        births = [json.loads(m.payload) for m in collector.on(dev, "status")]
        assert births[-1]["fw"] == "0.2.0" and births[-1]["ota"]["state"] == "confirmed", births[-1]
        # the updated board's steady state: the stats lines of the confirmed new version
        confirmed_at = len(board.console())
        assert board.wait_for(lambda: len(STATS.findall(board.console()[confirmed_at:])) >= 3, 20)
        assert board.wait_for(lambda: Delivery.of(collector.readings(dev)).count(2) >= 10, 20)
        steady = [int(x) for x in STATS.findall(board.console()[confirmed_at:])]
    finally:
        board.stop()
        collector.close()
    got = Delivery.of(collector.readings(dev))
    assert got.gaps(1) == [] and got.gaps(2) == []  # the old version's readings and the new one's, all
    mode_low, peaks_low = (int(x) for x in UPDATE_MODE_END.search(board.console()).groups())
    heap_report(f"update on {ESP32_LIKE} at {ESP32_LIKE_HEAP_BYTES // 1024} KB, release {rel.size} B in "
                f"{len(rel.files)} files: update mode's lowest free heap between chunks {mode_low}, at the "
                f"download's peaks (manifest checked, read-back, switch) {peaks_low}; the updated board "
                f"(slot a, confirmed) at steady state {steady}")
    assert peaks_low >= UPDATE_MODE_FLOOR and mode_low >= peaks_low
