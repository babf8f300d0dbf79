"""The distribution as a user gets it: sdist and wheel built from the tree, the wheel installed into a
fresh virtual environment (no checkout on its path), and there `ferry --version`, `ferry gateway`
(a QoS 1 publish gets its PUBACK) and `ferry flash` onto a virtual board whose firmware then
publishes through that gateway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import ferry
from ferry import firmware, ota
from ferry.hwsim.board import BoardConfig
from ferry.hwsim.serial_bridge import SerialBridge
from ferry.process import ManagedProcess, free_port
from ferry.gateway.process import accepts_connections
from tests.device.fw_support import SITE, Collector

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", ".git", "__pycache__", "build", "dist", ".pytest_cache", ".hypothesis", "var"}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not firmware.UMQTT_SOURCE.exists(), reason="umqtt.simple missing: run `make install`"),
]


@dataclass(frozen=True, slots=True)
class Installed:
    wheel: Path
    sdist: Path
    bin: Path

    def run(self, *argv: str, timeout_s: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=timeout_s, **kwargs)


def _copy_tree(destination: Path) -> None:
    """The source tree as a user's clone has it after `make install` (fetched umqtt and uPlot included)."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")}
    shutil.copytree(REPO, destination, ignore=ignore)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source, dist, env_dir = base / "src", base / "dist", base / "venv"
    _copy_tree(source)
    # `python -m build` makes the sdist, then builds the wheel from the unpacked sdist, so a file the
    # sdist leaves out is missing from the wheel too.
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next(dist.glob("ferry_iot-*.whl"))
    sdist = next(dist.glob("ferry_iot-*.tar.gz"))
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    pip = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[device]"],
                         capture_output=True, text=True, timeout=900, cwd=base)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return Installed(wheel, sdist, bin_dir)


def test_wheel_holds_one_namespace_and_the_firmware(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ferry", f"{installed.wheel.name.split('-py3')[0]}.dist-info"}
    for module in firmware.modules():
        assert f"ferry/device/{module.name}" in names
    assert "ferry/device/lib/umqtt/simple.py" in names
    assert "ferry/gateway/deploy/ferry-gateway.service" in names
    assert "ferry/hwsim/shims/machine.py" in names
    assert "ferry/server/dashboard/index.html" in names
    # `ferry ota push ... WHEEL` takes this wheel's firmware: the same release as the checkout's folder
    assert ota.build_release(installed.wheel, "0.2.0").stream == ota.build_release(firmware.SOURCE_DIR, "0.2.0").stream
    with tarfile.open(installed.sdist) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "device/app.py", "gateway/deploy/ferry.toml"} <= members


def test_installed_ferry_runs_from_the_venv_not_the_checkout(installed: Installed, tmp_path: Path) -> None:
    result = installed.run("ferry", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ferry {ferry.__version__}"
    where = installed.run("python", "-c", "import ferry.gateway, ferry.firmware as f; "
                                          "print(ferry.gateway.__file__); print(f.SOURCE_DIR)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert "site-packages" in line and str(REPO) not in line


@pytest.fixture(scope="module")
def gateway(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """The installed `ferry gateway` with a password file made by the installed `ferry passwd`."""
    work = tmp_path_factory.mktemp("installed-gateway")
    made = subprocess.run([str(installed.bin / "ferry"), "passwd", str(work / "passwd"), "wheel-test", "--random"],
                          capture_output=True, text=True, timeout=60, cwd=work)
    assert made.returncode == 0, made.stderr
    port = free_port()
    process = ManagedProcess("installed-gateway", [str(installed.bin / "ferry"), "gateway", "--listen",
                                                   f"127.0.0.1:{port}", "--data-dir", str(work / "data"),
                                                   "--password-file", str(work / "passwd"), "--allow-anonymous"],
                             work / "gateway.log", cwd=work)
    process.start()
    try:
        process.wait_ready(lambda: accepts_connections("127.0.0.1", port), 30)
        yield port, made.stdout.strip()
    finally:
        assert process.stop() == 0


def test_installed_gateway_acknowledges_a_qos1_publish(gateway: tuple[int, str]) -> None:
    port, password = gateway
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wheel-test", protocol=mqtt.MQTTv311)
    client.username_pw_set("wheel-test", password)
    connected: list[int] = []
    client.on_connect = lambda c, u, flags, reason, props: connected.append(reason.value)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        info = client.publish("ferry/lab/wheel-test/telemetry", b"hello", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()  # the PUBACK arrived
        assert connected == [0]  # accepted with the password `ferry passwd` made
    finally:
        client.loop_stop()
        client.disconnect()


def test_installed_flash_puts_the_firmware_on_a_virtual_board(installed: Installed, gateway: tuple[int, str],
                                                              tmp_path: Path) -> None:
    gateway, _ = gateway
    board = SerialBridge(tmp_path / "board", BoardConfig(uid=bytes.fromhex("240ac4f1a501")))
    board.power_on()
    collector = Collector(gateway, client_id="wheel-collector", clean=True)
    try:
        device = "wheel-board"
        result = installed.run(
            "ferry", "flash", "--port", board.pty_path, "--site", SITE, "--device-id", device,
            "--wifi-ssid", BoardConfig().wifi_ssid, "--broker", f"127.0.0.1:{gateway}", "--no-tls",
            "--no-mqtt-password", "--sample-s", "1", cwd=tmp_path,
            env=dict(os.environ, TMPDIR=str(tmp_path), FERRY_WIFI_PASSWORD="pw"))
        assert result.returncode == 0, result.stdout + result.stderr
        on_board = {p.name for p in board.flash_dir.iterdir()}
        assert {"main.py", "app.mpy", "ferry_config.json"} <= on_board
        assert "__init__.py" not in on_board and "__init__.mpy" not in on_board
        assert (board.flash_dir / "lib" / "umqtt" / "simple.mpy").exists()
        deadline = time.monotonic() + 30
        while not collector.readings(device) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert collector.readings(device), board.console()[-2000:]
    finally:
        collector.close()
        board.close()


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_gateway_dependencies_resolve_to_aarch64_wheels(installed: Installed, tmp_path: Path, python: str) -> None:
    """What `pip install ferry-iot` pulls onto a 64-bit Raspberry Pi OS: wheels only, no compiler.

    pip resolves the built wheel and its runtime dependencies for CPython `python` on manylinux
    aarch64 (glibc 2.17 or 2.28: Raspberry Pi OS 11 has 2.31, 12 has 2.36), binary only.
    """
    report = tmp_path / "report.json"
    platforms = [arg for tag in ("manylinux2014_aarch64", "manylinux_2_28_aarch64") for arg in ("--platform", tag)]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--target", str(tmp_path / "target"), "--only-binary=:all:", *platforms, "--implementation", "cp",
         "--python-version", python, "--report", str(report), str(installed.wheel)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    files = {item["metadata"]["name"]: item["download_info"]["url"].rsplit("/", 1)[1]
             for item in json.loads(report.read_text())["install"]}
    assert set(files) == {"ferry-iot", "confluent-kafka", "orjson", "uvloop"}, files
    tag = "cp" + python.replace(".", "")
    for name, filename in files.items():
        assert filename.endswith("-py3-none-any.whl") or (f"-{tag}-" in filename and "aarch64" in filename), \
            f"{name}: {filename}"
