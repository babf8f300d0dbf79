"""umqtt.simple on the real MicroPython interpreter sends exactly the bytes the contract expects."""

from __future__ import annotations

import socket
import threading

from ferry.hwsim.micropython import DEVICE_LIB_DIR, prelude, run_code
from tests.vectors import load as load_vectors

SESSION = load_vectors("device/umqtt_simple_session.json")
# The ESP32's usable heap is ~64 KB-110 KB; the unix port needs ~1.5-2x for the same program.
UNIX_HEAP_FOR_64K_ESP32 = 128 * 1024


def _read_frame(conn: socket.socket) -> bytes:
    """One MQTT control packet: fixed header, remaining length, body."""
    frame = bytearray(_recv(conn, 1))
    length, shift = 0, 0
    while True:
        byte = _recv(conn, 1)[0]
        frame.append(byte)
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    frame += _recv(conn, length)
    return bytes(frame)


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client closed mid-packet")
        data += chunk
    return data


class RecordingPeer:
    """A one-connection MQTT peer that records what the client sends and answers like a broker."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.frames: list[bytes] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(30)
                while True:
                    frame = _read_frame(conn)
                    self.frames.append(frame)
                    kind = frame[0] >> 4
                    if kind == 1:
                        conn.sendall(bytes.fromhex("20020000"))
                    elif kind == 3 and frame[0] & 0x06:
                        topic_len = int.from_bytes(frame[2:4], "big")
                        packet_id = frame[4 + topic_len:6 + topic_len]
                        conn.sendall(b"\x40\x02" + packet_id)
                    elif kind == 12:
                        conn.sendall(b"\xd0\x00")
                    elif kind == 14:
                        return
        except BaseException as exc:  # reported to the test thread
            self.error = exc

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def test_interpreter_runs_with_an_esp32_sized_heap() -> None:
    result = run_code("import gc\ngc.collect()\nprint(gc.mem_free())", heap_bytes=UNIX_HEAP_FOR_64K_ESP32)
    assert result.returncode == 0, result.stderr
    assert 100_000 < int(result.stdout) <= UNIX_HEAP_FOR_64K_ESP32


def test_frozen_asyncio_stays_importable_with_extra_paths() -> None:
    assert "import sys" in prelude([DEVICE_LIB_DIR])
    result = run_code("import asyncio\nprint(asyncio.sleep_ms)")
    assert result.returncode == 0, result.stderr


def test_umqtt_simple_session_matches_the_golden_bytes() -> None:
    client = SESSION["client"]
    peer = RecordingPeer()
    script = f"""
import socket
from umqtt.simple import MQTTClient
c = MQTTClient({client['client_id']!r}, "127.0.0.1", port={peer.port}, keepalive={client['keepalive_s']})
c.set_last_will({client['will_topic'].encode()!r}, {client['will_payload'].encode()!r},
                retain={client['will_retain']}, qos={client['will_qos']})
present = c.connect(clean_session={client['clean_session']})
c.sock.setsockopt(6, 1, 1)
c.publish({client['publish_topic'].encode()!r}, {client['publish_payload'].encode()!r}, qos={client['publish_qos']})
c.ping()
assert c.wait_msg() is None
c.disconnect()
print("session present", present)
"""
    try:
        result = run_code(script, heap_bytes=UNIX_HEAP_FOR_64K_ESP32, timeout_s=60)
    finally:
        peer.close()
    assert peer.error is None, peer.error
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "session present 0"
    assert [frame.hex() for frame in peer.frames] == [p["hex"] for p in SESSION["packets"]]


def test_a_missing_module_is_an_error_not_a_silent_pass() -> None:
    result = run_code("import ferry_no_such_module")
    assert result.returncode != 0
    assert "ImportError" in result.stdout + result.stderr


def test_heap_limit_is_enforced() -> None:
    result = run_code("b = bytearray(64 * 1024)", heap_bytes=16 * 1024)
    assert result.returncode != 0
    assert "MemoryError" in result.stdout + result.stderr
