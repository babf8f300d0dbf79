"""Issue #4's acceptance test: a 1,000-reading backlog replayed through the whole stack inside
the unix-port equivalent of a 64 KB ESP32 heap, with the peak heap use reported from
`gc.mem_free()` (run with -s for the numbers; docs/device.md quotes them).

1. Offline: the board's own firmware (`app.App`: sensor, encoder, outbox) takes 1,000
   readings while no gateway listens (the configured port is closed), faster than
   `sample_ms` allows so the test does not wait 100 s; then the power is cut.
2. Power on with the real `main.py` and the gateway up: boot 2 recovers the outbox, says
   `online` with `queued` 1,000 and replays boot 1's readings in order while it keeps
   sampling. The firmware logs `heap_check()` (gc.collect() then gc.mem_free()) after
   its imports, after opening the outbox, after the session, after the first connect,
   every 100 PUBACKs (`heap: free F low L ...`) and on every stats line.

The board's flash folder is ~150 characters long on purpose: VfsPosix keeps that path on
the board heap, and long paths used to make the firmware fail at boot with MemoryError.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from ferry.hwsim.board import UNIX_HEAP_FOR_64K_ESP32
from tests.device.fw_support import (
    Collector, Delivery, TlsGateway, console_lines, device_id, install_firmware, make_board, start_tls_gateway,
    umqtt_release,
)

pytestmark = pytest.mark.integration

BACKLOG = 1000
FLASH_PATH_CHARS = 150
HEAP_FLOOR = 16 * 1024
"""Least free heap after a collection, on the unix port: ~8 KB on a 64 KB ESP32 (ratio 2)."""
SMALLER_HEAP = UNIX_HEAP_FOR_64K_ESP32 - HEAP_FLOOR
"""The same run with the floor taken away: still boots and replays everything (fragmentation included)."""
HEAP_LINE = re.compile(r"heap: free after imports (\d+), outbox (\d+), session (\d+)")
FREE_NUMBERS = re.compile(r"(?:heap: free|low|heap_low) (\d+)")
WATCH_LINE = re.compile(r"heap: free (\d+) low (\d+) \(after gc; seq \d+, acked \d+, pending (\d+)\)")

OFFLINE_MAIN = r"""
# Phase 1 (the test's, not a board's main.py): the firmware's own sampling path, no gateway.
import app
from hw import Hardware
from settings import Settings
cfg = Settings.load()
hw = Hardware(cfg.i2c_scl_pin, cfg.i2c_sda_pin)
a = app.App(hw, cfg)
hw.sample = lambda values: True  # the SHT31 shim waits 16 ms per measurement: skip the wait
a.metrics.values[0] = 2150
a.metrics.values[1] = 4500
while a.seq < %d:
    if not a.sample():
        raise SystemExit("sample failed")
    a.ob.poll()
a.ob.flush()
print("BACKLOG", a.seq, a.ob.pending(), a.ob.lost_total(), a.heap_low)
"""


def long_root(tmp_path: Path) -> Path:
    """A folder whose boards' flash paths (`<root>/replay/flash`) are FLASH_PATH_CHARS long."""
    pad = FLASH_PATH_CHARS - len(str(tmp_path / "x" / "replay" / "flash"))
    assert pad > 0, tmp_path
    return tmp_path / ("p" * (pad + 1))


@pytest.fixture
def tls_gateway(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TlsGateway | None]:
    """For the TLS runs: a gateway with a TLS listener and a password file (None for the others)."""
    if not request.node.callspec.params.get("tls"):
        yield None
        return
    with start_tls_gateway(tmp_path / "tls-gateway") as tg:
        yield tg


@pytest.mark.parametrize(("heap_bytes", "frozen_umqtt", "tls"), [
    (UNIX_HEAP_FOR_64K_ESP32, None, False), (SMALLER_HEAP, None, False), (UNIX_HEAP_FOR_64K_ESP32, "1.7.0", False),
    (UNIX_HEAP_FOR_64K_ESP32, None, True), (SMALLER_HEAP, None, True),
], ids=["128K", "112K", "128K-stock-image-umqtt-1.7.0", "128K-tls", "112K-tls"])
def test_backlog_of_1000_replays_in_order_within_the_heap(tmp_path: Path, firmware: Path, frozen_umqtt: str | None,
                                                          gateway: GatewayProcess, heap_bytes: int, tls: bool,
                                                          tls_gateway: TlsGateway | None) -> None:
    # A stock ESP32 image freezes umqtt.simple (before /lib): the firmware must not care.
    frozen = umqtt_release(frozen_umqtt) if frozen_umqtt else None
    board = make_board(long_root(tmp_path), "replay", heap_bytes=heap_bytes, frozen_dir=frozen)
    assert len(str(board.flash_dir)) == FLASH_PATH_CHARS
    dev = device_id(board)
    # TLS: the CA on flash, the provisioned password, the TLS listener; else plain MQTT, anonymous.
    online: dict = {"broker_port": gateway.port}
    offline: dict = {"broker_port": 1}
    ca = None
    if tls_gateway is not None:
        ca = tls_gateway.ca_der
        online = {"broker_tls_port": tls_gateway.tls_port, "mqtt_password": tls_gateway.provision(dev)}
        offline = {"broker_tls_port": 1, "mqtt_password": online["mqtt_password"]}
    # Phase 1: offline. Port 1 is closed; outbox_capacity is the default, 1,000.
    install_firmware(board, firmware, ca=ca, sample_ms=100, log_stats_every=10, **offline)
    main_py = (board.flash_dir / "main.py").read_text()
    (board.flash_dir / "main.py").write_text(OFFLINE_MAIN % BACKLOG)
    t0 = time.monotonic()
    board.power_on()
    try:
        assert board.wait_for(lambda: "BACKLOG" in board.console() or "Error" in board.console(), 120), \
            board.console()[-3000:]
    finally:
        board.power_cut()
    offline_s = time.monotonic() - t0
    phase1 = board.console()
    taken, pending, lost, _ = map(int, phase1.split("BACKLOG")[1].split()[:4])
    assert (taken, pending, lost) == (BACKLOG, BACKLOG, 0), phase1[-2000:]
    fresh = tuple(map(int, HEAP_LINE.search(phase1).groups()))

    # Phase 2: the real firmware, gateway up.
    install_firmware(board, firmware, ca=ca, sample_ms=100, log_stats_every=10, **online)
    assert (board.flash_dir / "main.py").read_text() == main_py
    collector = Collector(gateway.port) if tls_gateway is None else tls_gateway.collector()
    mark = len(phase1)
    try:
        t1 = time.monotonic()
        board.power_on()
        done = collector.wait_for(lambda: Delivery.of(collector.readings(dev)).count(1) >= BACKLOG, 60)
        replay_s = time.monotonic() - t1
        # A few more boot-2 stats lines after the replay, so heap_low has seen its end.
        n_stats = len(console_lines(board, "stats"))
        board.wait_for(lambda: len(console_lines(board, "stats")) >= n_stats + 2, 10)
        got = Delivery.of(collector.readings(dev))
        births = [s for s in collector.statuses(dev) if s.state.value == "online"]
    finally:
        board.stop()
        collector.close()
    console = board.console()[mark:]
    assert done, f"boot 1: {got.count(1)} of {BACKLOG} delivered\n" + console[-3000:]
    assert "Error" not in console, console[-3000:]
    assert all(m.endswith(", tls") == tls for m in console_lines(board, "mqtt: connected")), console[-3000:]

    # Every reading of the backlog exactly once, in order; boot 2's too.
    assert got.gaps(1) == [] and got.count(1) == BACKLOG and max(got.seqs[1]) == BACKLOG - 1
    assert got.first_arrival_order_ok(1) and got.first_arrival_order_ok(2)
    assert got.gaps(2) == []
    assert got.duplicates() == 0, got.duplicates()  # no link faults here: nothing to resend
    first_birth = next(s for s in births if s.boot == 2)
    assert first_birth.outbox_queued >= BACKLOG and first_birth.outbox_dropped == 0

    after_cut = tuple(map(int, HEAP_LINE.search(console).groups()))
    connected = int(re.search(r"heap: free (\d+) after the first connect", console).group(1))
    low = min(int(m) for m in FREE_NUMBERS.findall(console))
    during = [tuple(map(int, m)) for m in WATCH_LINE.findall(console)]
    assert len(during) >= BACKLOG // 100 - 1 and during[0][2] >= BACKLOG // 2, during  # checked mid-replay
    image = (f", frozen umqtt.simple {frozen_umqtt}" if frozen_umqtt else "") + (", over TLS" if tls else "")
    print(f"\n-X heapsize={heap_bytes // 1024}K{image}, flash path {FLASH_PATH_CHARS} chars; gc.mem_free() after "
          f"gc: fresh boot: imports {fresh[0]}, outbox {fresh[1]}, session {fresh[2]}; after a power cut with "
          f"{BACKLOG} queued: imports {after_cut[0]}, outbox {after_cut[1]}, session {after_cut[2]}, first "
          f"connect {connected}; lowest during the replay {low} (peak heap use {heap_bytes - low} of "
          f"{heap_bytes}; free after gc every 100 PUBACKs: {[d[0] for d in during]}); {BACKLOG} readings "
          f"replayed in {replay_s:.2f} s including the boot "
          f"({got.count(2)} boot-2 readings by the end, {got.duplicates()} duplicates); offline phase "
          f"{offline_s:.1f} s")
    if heap_bytes == UNIX_HEAP_FOR_64K_ESP32:
        assert low >= HEAP_FLOOR, low
    else:
        assert low > 0
