"""Shared by the tests that update the real firmware on virtual boards (this file holds no tests): a release
of the compiled firmware with another FW_VERSION (or another app), the operator's push through a gateway in a
thread, and reading a board's update state from its flash."""

from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ferry import ota as fota
from ferry.hwsim.board import VirtualBoard

DEVICE_DIR = Path(__file__).resolve().parents[2] / "device"
UPDATE_MODE_END = re.compile(r"ota: update mode ends: \w+ .*\(heap low (-?\d+), download's peaks (-?\d+)\)")


def firmware_release(build: Path, tmp: Path, version: str, compiler: Path, mpy: int,
                     app_source: str | None = None) -> fota.Release:
    """The compiled firmware in `build` as a release: app.mpy compiled from device/app.py with FW_VERSION =
    version (or from app_source), every other module as built; the boot files left out."""
    tmp.mkdir(parents=True, exist_ok=True)
    source = (DEVICE_DIR / "app.py").read_text()
    app_py = tmp / "app.py"
    app_py.write_text(app_source if app_source is not None else
                      source.replace('FW_VERSION = "0.1.0"', f'FW_VERSION = "{version}"'))
    subprocess.run([str(compiler), "-s", "app.py", "-o", str(tmp / "app.mpy"), str(app_py)], check=True, timeout=60)
    files = [fota.ReleaseFile(p.name, (tmp / "app.mpy" if p.name == "app.mpy" else p).read_bytes())
             for p in sorted(build.glob("*.mpy")) if p.name != "boot_select.mpy"]
    return fota.make_release(version, files, mpy)


@dataclass
class PushThread:
    """`ferry.ota.push` (the operator's side, its own MQTT client) in a thread, as `ferry ota push` runs it."""

    port: int
    site: str
    devices: list[str]
    release: fota.Release
    rate_per_s: float = 64.0
    timeout_s: float = 120.0
    username: str | None = None
    password: str | None = None
    result: dict = field(default_factory=dict)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.client = fota.MqttClient("127.0.0.1", self.port, f"ota-test-{id(self)}", self.username, self.password)
        self.thread = threading.Thread(target=self._run, name="ota-push", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = fota.push(self.client, self.site, self.devices, self.release, chunk_bytes=576,
                                    rate_per_s=self.rate_per_s, timeout_s=self.timeout_s)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self) -> dict:
        self.thread.join(self.timeout_s + 30)
        self.client.close()
        if self.error is not None:
            raise self.error
        return self.result


def ota_state(board: VirtualBoard) -> dict[str, str]:
    """/ota/state as a dict ({} when the board never updated)."""
    path = board.flash_dir / "ota" / "state"
    if not path.exists():
        return {}
    return {k: v for k, _, v in (line.partition(" ") for line in path.read_text().splitlines() if line)}
