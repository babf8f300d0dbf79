"""The firmware's MQTT connect under every umqtt.simple a board may have.

Stock ESP32 images freeze micropython-lib's umqtt.simple (found before `/lib`), and
`mpremote mip install` puts the current release in `/lib`; from 1.5.0 on its `connect()`
calls `sock.settimeout(None)`. Ferry sends CONNECT and reads CONNACK itself (packets.py), so
none of them is imported and the connect timeout holds under each: against a gateway that
accepts TCP and never answers the connect gives up within `connect_timeout_ms`, and a
gateway that answers gets the same CONNECT bytes whichever umqtt.simple the board has.

The releases come unmodified from `../shared/thirdparty/micropython-lib-umqtt.simple/`
(beside the project); without that folder these tests skip and say why.
"""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import pytest

from ferry.hwsim.board import FROZEN_MOUNT
from tests.device.fw_support import device_id, install_firmware, make_board, umqtt_release

pytestmark = pytest.mark.integration

CONNECT_TIMEOUT_MS = 600
SETTINGS = {"connect_timeout_ms": CONNECT_TIMEOUT_MS, "ack_timeout_ms": 600, "wdt_timeout_ms": 5000,
            "keepalive_s": 30}
CASES = [("lib", "1.3.4")] + [("frozen", v) for v in ("1.4.0", "1.5.0", "1.6.0", "1.7.0", "1.8.0")] + [("lib", "1.8.0")]

CONNECT_MAIN = r"""
# The test's main.py: the firmware's own connect path against a silent gateway, one that
# refuses, one that answers with another packet, one that accepts.
import sys, time
import app
from hw import Hardware
from settings import Settings
cfg = Settings.load()
a = app.App(Hardware(cfg.i2c_scl_pin, cfg.i2c_sda_pin), cfg)
t0 = time.ticks_ms()
up = a.session.connect(a.birth(), a.will)
print("SILENT", up, time.ticks_diff(time.ticks_ms(), t0))
print("REFUSED", a.session.connect(a.birth(), a.will), "GARBAGE", a.session.connect(a.birth(), a.will))
up = a.session.connect(a.birth(), a.will)
print("ANSWERED", up, a.session.session_present, "umqtt.simple" in sys.modules)
import os
def found(name):  # the file `import` would load (without compiling it on a full heap)
    for folder in sys.path:
        for ext in (".py", ".mpy"):
            try:
                os.stat(folder + "/" + name + ext)
                return folder + "/" + name + ext
            except OSError:
                pass
print("UMQTT", found("umqtt/simple"))
"""


def _recv_packet(conn: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    head = exactly(1)
    length, shift, more = 0, 0, b""
    while True:
        byte = exactly(1)
        more += byte
        length |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            break
        shift += 7
    return head + more + exactly(length)


ANSWERS = [None, b"\x20\x02\x00\x05", b"\xd0\x00"]
"""What the first connections get after their CONNECT: nothing (a hung gateway), a CONNACK that
refuses (5: not authorised), a PINGRESP; later ones get CONNACK with session present."""


class HungThenAnsweringBroker:
    """Accepts TCP and answers each connection's CONNECT as ANSWERS says, then SUBACK and
    PUBACK like a broker. Records the first packet of each connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.first_packets: list[bytes] = []
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._connections.append(conn)
            number = len(self._connections) - 1
            answer = ANSWERS[number] if number < len(ANSWERS) else b"\x20\x02\x01\x00"
            threading.Thread(target=self._serve, args=(conn, answer), daemon=True).start()

    def _serve(self, conn: socket.socket, answer: bytes | None) -> None:
        try:
            self.first_packets.append(_recv_packet(conn))
            if answer is None:
                return  # the connection stays open, nothing is ever sent
            conn.sendall(answer)
            while True:
                packet = _recv_packet(conn)
                kind = packet[0] >> 4
                body = packet[2:] if packet[1] < 0x80 else packet[3:]
                if kind == 8:
                    conn.sendall(b"\x90\x03" + body[:2] + b"\x01")
                elif kind == 3 and packet[0] & 0x06:
                    topic_len = int.from_bytes(body[:2], "big")
                    conn.sendall(b"\x40\x02" + body[2 + topic_len:4 + topic_len])
        except OSError:
            return

    def close(self) -> None:
        self.listener.close()
        for conn in self._connections:
            conn.close()
        self._thread.join(5)


def connect_packet(client_id: str, keepalive_s: int, will_topic: str, will: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session 0, retained QoS 1 will (flags 0x2c), as the golden vector."""
    def field(text: str) -> bytes:
        return len(text.encode()).to_bytes(2, "big") + text.encode()

    body = b"\x00\x04MQTT\x04\x2c" + keepalive_s.to_bytes(2, "big") + field(client_id) + field(will_topic) + field(will)
    n = len(body)
    assert n < 16384
    return bytes((0x10, n & 0x7F | 0x80, n >> 7) if n >= 128 else (0x10, n)) + body


@pytest.mark.parametrize(("where", "version"), CASES, ids=[f"{w}-{v}" for w, v in CASES])
def test_connect_times_out_and_sends_the_same_bytes_under_every_umqtt_simple(
        tmp_path: Path, firmware: Path, where: str, version: str) -> None:
    release = umqtt_release(version) if version != "1.3.4" else None
    frozen = release if where == "frozen" else None
    board = make_board(tmp_path, "umqtt", frozen_dir=frozen)
    broker = HungThenAnsweringBroker()
    try:
        install_firmware(board, firmware, broker_port=broker.port, **SETTINGS)
        if where == "lib" and version != "1.3.4":  # what `mpremote mip install umqtt.simple` leaves in /lib
            (board.flash_dir / "lib" / "umqtt" / "simple.mpy").unlink()
            shutil.copy(release / "umqtt" / "simple.py", board.flash_dir / "lib" / "umqtt" / "simple.py")
        (board.flash_dir / "main.py").write_text(CONNECT_MAIN)
        board.power_on()
        assert board.wait_for(lambda: "UMQTT" in board.console() or "Traceback" in board.console(),
                              10 * CONNECT_TIMEOUT_MS / 1000), f"umqtt.simple {version} ({where}): the connect hung\n" \
            + board.console()[-3000:]
    finally:
        board.stop()
        broker.close()
    console = board.console()
    assert "Traceback" not in console, console[-3000:]
    silent = console.split("SILENT")[1].split()
    answered = console.split("ANSWERED")[1].split()[:3]
    where_from = console.split("UMQTT")[1].split()[0]
    assert where_from.startswith(FROZEN_MOUNT if where == "frozen" else "/lib/"), where_from
    assert silent[0] == "False" and int(silent[1]) <= CONNECT_TIMEOUT_MS + 300, silent
    assert console.split("REFUSED")[1].split()[:3] == ["False", "GARBAGE", "False"]
    assert "mqtt: connect refused: not authorized (CONNACK return code 5)" in console
    assert "mqtt: connect failed: ValueError('packet 0xd0 instead of CONNACK',)" in console
    assert answered == ["True", "True", "False"]  # up, session present, umqtt.simple never imported
    dev = device_id(board)
    expected = connect_packet(dev, SETTINGS["keepalive_s"], f"ferry/lab/{dev}/status",
                              f'{{"v":1,"dev":"{dev}","state":"offline","boot":1}}')
    assert broker.first_packets == [expected] * 4
    print(f"\numqtt.simple {version} ({where_from}): a silent gateway gave up after {silent[1]} ms "
          f"(connect_timeout_ms {CONNECT_TIMEOUT_MS}); CONNECT bytes as the golden vector's")
