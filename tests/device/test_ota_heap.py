"""Heap cost of the update modules (device/boot_select.py, ota_trial.py, ota_download.py, ota_stage.py) as
.mpy: after each import, the Ota object, what an ordinary chunk allocates, and the peak of the rare moments
(the manifest's checks, the read-back, the switch) above what the download keeps loaded. On the unix port
(64-bit) and, when `make test` built it, the 32-bit ESP32-like interpreter (docs/ota.md, "Heap")."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ferry.hwsim.micropython import ESP32_LIKE, UNIX64, run_code
from tests.device.fw_support import esp32_like, mpy_cross
from tests.device.helpers import DEVICE_DIR, MP_DIR
from tests.device.ota_support import Board, app_files, make

pytestmark = pytest.mark.integration

# Budgets (bytes): what the docs promise, with room. The firmware's own lowest free heap at 64 KB on the
# ESP32-like interpreter is a few KB (docs/device.md): an update can only run where these fit.
BUDGET = {UNIX64: {"boot_select": 6000, "ota_trial": 3300, "ota": 7500, "object": 700, "chunk": 600,
                   "peak": 19000},
          ESP32_LIKE: {"boot_select": 4300, "ota_trial": 2500, "ota": 5200, "object": 400, "chunk": 512,
                       "peak": 14500}}
"""Bytes. "ota": ota_download.py, loaded for the whole download; "peak": what the rare moments need on top
of it and the Ota object (ota_stage.py loaded for the call; the parsed manifest; the read-back buffer; the
switch with ota_trial), from Ota.heap_low. Update mode (ota_mode.py) has ~22 KB free on a
64 KB board for these (tests/device/test_ota_firmware.py): the running app could not spare them."""

MEASURE = """
import gc, json, os, sys, vfs
gc.collect()
f0 = gc.mem_free()
import boot_select
gc.collect()
f1 = gc.mem_free()
import ota_trial
gc.collect()
ft = gc.mem_free()
import ota_download as ota
gc.collect()
f2o = gc.mem_free()
vfs.mount(vfs.VfsPosix({flash!r}), "/")
vfs.mount(vfs.VfsPosix({host!r}), "/host")
vfs.mount(vfs.VfsPosix({mpy!r}), "/fw-src")
sys.path.append("/fw-src")
os.chdir("/")
boot_select.select(power_on=True)
del boot_select, ota_trial, sys.modules["boot_select"], sys.modules["ota_trial"]  # as main.py and the app leave them
gc.collect()
f2 = gc.mem_free()
o = ota.Ota(256)
gc.collect()
f3 = gc.mem_free()
with open("/host/offer.json") as f:
    args = json.load(f)
with open("/host/chunks.bin", "rb") as f:
    data = f.read()
probes = []
_heap_free = ota.heap_free
def probe(o):
    probes.append(_heap_free(o))
ota.heap_free = probe
o.offer("c-1", args)
rx = bytearray(640)
mv = memoryview(rx)
allocs = []
i = 0
while i < len(data):
    n = data[i] << 8 | data[i + 1]
    rx[:n] = data[i + 2:i + 2 + n]
    i += 2 + n
    gc.collect()
    before = gc.mem_free()
    gc.disable()
    o.chunk(mv, n, 0)
    after = gc.mem_free()
    gc.enable()
    allocs.append(before - after)
print(json.dumps({{"bare": f0, "boot_select": f0 - f1, "ota_trial": f1 - ft, "ota": ft - f2o, "object": f2 - f3,
                  "allocs": allocs, "error": o.error, "peak": f3 - o.heap_low, "probes": [f3 - p for p in probes], "state": o.state}}))
"""


def compile_modules(out: Path, compiler: Path) -> None:
    out.mkdir(parents=True)
    for name in ("boot_select", "ota_trial", "ota_download", "ota_stage", "flashfs"):
        subprocess.run([str(compiler), "-s", f"{name}.py", "-o", str(out / f"{name}.mpy"),
                        str(DEVICE_DIR / f"{name}.py")], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("interp", [UNIX64, ESP32_LIKE])
def test_update_modules_fit_the_heap_budget(tmp_path: Path, interp: str) -> None:
    if interp == ESP32_LIKE:
        esp32_like()
        from ferry.hwsim.micropython import esp32_like_mpy_cross

        compiler = esp32_like_mpy_cross()
    else:
        compiler = mpy_cross()
    compile_modules(tmp_path / "mpy", compiler)
    board = Board(tmp_path / "b")
    board.factory(app_files("0.1.0"))
    rel = make("0.2.0", app_files("0.2.0", pad=150))
    board.inputs(rel)
    (board.flash / "boot_select.py").unlink()  # the board has the boot file as .mpy, as ferry flash leaves it
    (board.flash / "boot_select.mpy").write_bytes((tmp_path / "mpy" / "boot_select.mpy").read_bytes())
    code = MEASURE.format(flash=str(board.flash), host=str(board.host), mpy=str(tmp_path / "mpy"))
    result = run_code(code, sys_path=(tmp_path / "mpy", MP_DIR), heap_bytes=64 * 1024, interpreter_name=interp)
    assert result.returncode == 0, result.stdout + result.stderr
    m = json.loads(result.stdout.strip().splitlines()[-1])
    assert m["state"] == "installed", m
    a = m["allocs"]
    print(f"{interp}: free at start {m['bare']}; import boot_select {m['boot_select']}, "
          f"ota_trial {m['ota_trial']}, ota {m['ota']}, Ota(256) {m['object']}; allocated by an ordinary chunk "
          f"{max(a[1:-1])}; the rare moments' peak (ota_stage loaded, the manifest parsed, the read-back, the "
          f"switch with ota_trial) {m['peak']} above the download's resident heap {m['probes']}")
    budget = BUDGET[interp]
    for k in ("boot_select", "ota_trial", "ota", "object", "peak"):
        assert m[k] <= budget[k], (k, m[k])
    assert max(a[1:-1]) <= budget["chunk"], a  # an ordinary chunk, gc disabled: what the hot path allocates
