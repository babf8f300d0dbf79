"""Heap cost of the update modules (device/boot_select.py, device/ota.py) as .mpy: after each import, the
Ota object, and what each chunk allocates (the one that completes the manifest, an ordinary one, the last
one: read-back verification and the switch), with the lowest free heap during the download. On the unix
port (64-bit) and, when `make test` built it, the 32-bit ESP32-like interpreter (docs/ota.md, "Heap")."""

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
BUDGET = {UNIX64: {"boot_select": 6000, "ota_trial": 1800, "ota": 16000, "object": 900, "chunk": 600,
                   "manifest": 6000, "last": 8500},
          ESP32_LIKE: {"boot_select": 4300, "ota_trial": 1300, "ota": 12000, "object": 600, "chunk": 512,
                       "manifest": 4200, "last": 5500}}

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
import ota
gc.collect()
f2o = gc.mem_free()
vfs.mount(vfs.VfsPosix({flash!r}), "/")
vfs.mount(vfs.VfsPosix({host!r}), "/host")
os.chdir("/")
boot_select.select(power_on=True)
gc.collect()
f2 = gc.mem_free()
o = ota.Ota(256)
gc.collect()
f3 = gc.mem_free()
with open("/host/offer.json") as f:
    args = json.load(f)
with open("/host/chunks.bin", "rb") as f:
    data = f.read()
o.offer("c-1", args)
rx = bytearray(640)
mv = memoryview(rx)
allocs = []
low = f3
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
    low = min(low, after)
print(json.dumps({{"bare": f0, "boot_select": f0 - f1, "ota_trial": f1 - ft, "ota": ft - f2o, "object": f2 - f3,
                  "allocs": allocs,
                  "low": low, "state": o.state}}))
"""


def compile_modules(out: Path, compiler: Path) -> None:
    out.mkdir(parents=True)
    for name in ("boot_select", "ota_trial", "ota"):
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
    code = MEASURE.format(flash=str(board.flash), host=str(board.host))
    result = run_code(code, sys_path=(tmp_path / "mpy", MP_DIR), heap_bytes=64 * 1024, interpreter_name=interp)
    assert result.returncode == 0, result.stdout + result.stderr
    m = json.loads(result.stdout.strip().splitlines()[-1])
    assert m["state"] == "installed"
    a = m["allocs"]
    print(f"{interp}: free at start {m['bare']}; import boot_select {m['boot_select']}, "
          f"ota_trial {m['ota_trial']}, ota {m['ota']}, "
          f"Ota(256) {m['object']}; per chunk: manifest {a[0]}, ordinary {max(a[1:-1])}, last (verify, switch) "
          f"{a[-1]}; lowest free {m['low']}")
    budget = BUDGET[interp]
    for k in ("boot_select", "ota_trial", "ota", "object"):
        assert m[k] <= budget[k], (k, m[k])
    # what each chunk allocates, gc disabled: an ordinary one, the one completing the manifest (JSON
    # parse), the last one (read-back of every file, the switch)
    assert max(a[1:-1]) <= budget["chunk"] and a[0] <= budget["manifest"] and a[-1] <= budget["last"], a
