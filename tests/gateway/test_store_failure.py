"""A store that cannot write (here: a file-size limit, as a full disk would) stops the gateway loudly.

Nothing is acknowledged that is not on disk: every message PUBACKed before the
failure is delivered after a restart with room to write.
"""

from __future__ import annotations

import subprocess
import sys
import time

import paho.mqtt.client as mqtt

from ferry.process import free_port
from ferry.gateway.process import GatewayProcess, accepts_connections
from tests.gateway.paho_client import TestClient

FILE_SIZE_LIMIT_BYTES = 256 * 1024
LIMITED_GATEWAY = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from ferry.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_write_failure_exits_with_status_3_and_keeps_what_was_acked(tmp_path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    gateway = GatewayProcess(data_dir, port=port)
    argv = [sys.executable, "-c", LIMITED_GATEWAY.format(limit=FILE_SIZE_LIMIT_BYTES)] + gateway.argv()[3:]
    data_dir.mkdir(parents=True)
    with open(gateway.log_path, "wb") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not accepts_connections("127.0.0.1", port):
            assert child.poll() is None and time.monotonic() < deadline, gateway.log_text()
            time.sleep(0.05)
        keeper = TestClient(port, "keeper", clean=False)
        keeper.subscribe("fill", 1)
        keeper.close()
        acked: list[int] = []
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="filler")
        publisher.connect("127.0.0.1", port)
        publisher.loop_start()
        payload = b"x" * 1000
        for seq in range(2000):
            info = publisher.publish("fill", seq.to_bytes(4, "big") + payload, 1)
            info.wait_for_publish(2)
            if not info.is_published():
                break
            acked.append(seq)
        publisher.loop_stop()
        assert child.wait(30) == 3
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    log_text = gateway.log_text()
    assert "the store cannot write" in log_text
    assert 0 < len(acked) < 2000

    received: list[int] = []
    with gateway:
        with TestClient(port, "keeper", clean=False) as back:
            assert back.session_present
            while True:
                try:
                    (message,) = back.expect(1, timeout_s=3)
                except Exception:
                    break
                received.append(int.from_bytes(message.payload[:4], "big"))
    assert set(acked) <= set(received)


def test_a_store_of_an_older_format_stops_the_gateway_with_status_2_and_touches_nothing(tmp_path) -> None:
    """Restarting cannot help (systemd's unit does not retry exit 2), and nothing is rewritten."""
    store = tmp_path / "data" / "store"
    store.mkdir(parents=True)
    manifest = store / "MANIFEST"
    manifest.write_bytes(b'{"format": "ferry-journal", "version": 1, "base": 1}\n')
    (store / "00000001.seg").write_bytes(b"\x00" * 64)
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    result = subprocess.run([sys.executable, "-m", "ferry", "gateway", "--data-dir", str(tmp_path / "data"),
                             "--listen", f"127.0.0.1:{free_port()}", "--allow-anonymous"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "ferry gateway: store error:" in result.stderr and "format 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
