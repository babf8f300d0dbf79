"""An update through a real gateway: `ferry.ota.push` with operator credentials (its own MQTT client on the
gateway's codec) offers the release on .../cmd and streams it on .../ota; the device's side is device/ota.py
on the real MicroPython interpreter behind a paho client with the device's credentials (the firmware
itself, through its session and update mode: tests/device/test_ota_firmware.py).

With the default roles (gateway/auth/acl.py) a device may subscribe to its own .../ota and an operator
may publish there; no `[[acl]]` rule is needed."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from ferry import ota as fota
from ferry.gateway.auth.passwd_cli import provision
from ferry.gateway.process import GatewayProcess
from tests.device.ota_support import Board, app_files, ask, device, hashes, make

pytestmark = pytest.mark.integration

SITE = "lab"
DEV = "dev-0001"
OPERATOR = "ota-operator"
@contextmanager
def gateway(tmp_path: Path, acl: str) -> Iterator[tuple[GatewayProcess, str, str]]:
    passwd = tmp_path / "passwd"
    op_password = provision(passwd, OPERATOR)
    dev_password = provision(passwd, DEV)
    config = f'[auth]\npassword_file = "{passwd}"\noperators = ["{OPERATOR}"]\n\n' + acl
    gw = GatewayProcess(tmp_path / "gw", config_text=config, allow_anonymous=False).start()
    try:
        yield gw, op_password, dev_password
    finally:
        gw.stop()


class PahoDevice:
    """The board's MQTT side: .../cmd and .../ota go to the MicroPython child, its replies to .../reply."""

    def __init__(self, port: int, password: str, proc) -> None:
        self.proc = proc
        self.lock = threading.Lock()
        self.granted: list[int] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEV, protocol=mqtt.MQTTv311,
                                  clean_session=False)
        self.client.username_pw_set(DEV, password)
        self.client.on_connect = lambda c, *a: c.subscribe([(f"ferry/{SITE}/{DEV}/cmd", 1),
                                                            (f"ferry/{SITE}/{DEV}/ota", 1)])
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_subscribe(self, client, userdata, mid, reason_codes, props) -> None:
        self.granted = [int(r.value) for r in reason_codes]
        self.subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        line = ("C " + msg.payload.decode()) if msg.topic.endswith("/cmd") else \
            f"K {bytes(msg.payload).hex()} {int(time.monotonic() * 1000)}"
        with self.lock:
            reply = ask(self.proc, line)
        if reply is not None:
            client.publish(f"ferry/{SITE}/{DEV}/reply", json.dumps(reply, separators=(",", ":")), 1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_the_default_roles_open_a_devices_own_ota_topic_and_no_other(tmp_path: Path) -> None:
    board = Board(tmp_path / "b")
    board.factory(app_files("0.1.0"))
    with gateway(tmp_path, "") as (gw, op_password, dev_password), device(board) as proc:
        dev = PahoDevice(gw.port, dev_password, proc)
        try:
            assert dev.granted == [1, 1]  # its own cmd and ota
            result = dev.client.subscribe(f"ferry/{SITE}/dev-0002/ota", 1)
            assert result[0] == mqtt.MQTT_ERR_SUCCESS
            deadline = time.monotonic() + 10
            while dev.granted != [0x80] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert dev.granted == [0x80]  # another device's: refused
        finally:
            dev.close()


def test_push_through_a_real_gateway_installs_the_release(tmp_path: Path) -> None:
    board = Board(tmp_path / "b")
    board.factory(app_files("0.1.0"))
    new = {**app_files("0.2.0", pad=400), "extra.py": b"X = 1\n" * 300}
    rel = make("0.2.0", new)
    with gateway(tmp_path, "") as (gw, op_password, dev_password), device(board) as proc:
        dev = PahoDevice(gw.port, dev_password, proc)
        try:
            assert dev.granted == [1, 1]
            client = fota.MqttClient("127.0.0.1", gw.port, "ota-test", OPERATOR, op_password)
            try:
                result = fota.push(client, SITE, [DEV], rel, rate_per_s=40.0, timeout_s=60.0)
            finally:
                client.close()
        finally:
            dev.close()
    p = result[DEV]
    assert p.state is fota.PushState.INSTALLED, p
    got = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (board.flash / "ota" / "a").iterdir()
           if f.name not in ("manifest.json", "offer", "index")}
    assert got == hashes(new)
    assert p.chunks_sent == -(-rel.size // p.chunk_bytes)  # no loss here: every chunk sent once
