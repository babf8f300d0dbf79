"""The operator's sender (ferry.ota.DevicePush) against the device's receiver (device/ota.py on the real
MicroPython interpreter) over a lossy, duplicating, reordering channel with resets of the board: the
window, the rate limit, the rewinds on the device's replies and the re-offers when it goes quiet must
bring the whole release over, byte for byte, with the chunk count staying within a bound."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from ferry import ota as fota
from tests.device.ota_support import Board, app_files, ask, device, hashes, make

pytestmark = pytest.mark.integration

NEW = {**app_files("0.2.0", pad=600), "extra.py": b"X = 1\n" * 400}  # ~8.8 KB: 35 chunks of 256


@pytest.mark.parametrize("loss", [0.0, 0.15])
def test_a_push_over_a_lossy_channel_installs_the_release(tmp_path: Path, loss: float) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    board = Board(tmp_path / "b")
    board.factory(app_files("0.1.0"))
    rel = make("0.2.0", NEW)
    push = fota.DevicePush("dev-0001", rel, "c-7", chunk_bytes=256, window=8, rate_per_s=16.0, quiet_s=2.0)
    now = 0.0
    late: list[str] = []  # messages the "broker" holds back (delivered out of order)
    resets = 0
    with device(board) as proc:
        for _ in range(20000):
            if push.done:
                break
            now += 0.05
            msgs = []
            for channel, payload in push.due(now):
                if channel == "cmd":
                    msgs.append("C " + fota.offer_command(rel, push.cid).decode())
                else:
                    msgs.append(f"K {payload.hex()} {int(now * 1000)}")
            if loss and rng.random() < 0.01 and resets < 3:  # the board resets: the chunks in flight are gone
                ask(proc, "R")
                resets += 1
                msgs = []
            delivered = []
            for m in msgs:
                r = rng.random()
                if r < loss:
                    continue  # lost with the link (QoS 1 to a session that reconnects clean of it)
                if r < loss * 1.3:
                    late.append(m)
                    continue
                delivered.append(m)
                if r > 1 - loss / 3:
                    delivered.append(m)  # a duplicate (QoS 1 redelivery)
            if late and rng.random() < 0.3:
                delivered.append(late.pop(0))
            for m in delivered:
                reply = ask(proc, m)
                if reply is not None and reply.get("id") == push.cid:
                    push.on_reply(reply, now)
    assert push.state is fota.PushState.INSTALLED, (seed, push)
    slot = board.flash / "ota" / "a"
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in slot.iterdir()
           if p.name not in ("manifest.json", "offer", "index")}
    assert got == hashes(NEW)
    chunks = -(-rel.size // 256)
    print(f"seed {seed}, loss {loss}: {rel.size} bytes, {push.chunks_sent} chunks sent for {chunks} "
          f"({push.bytes_sent} bytes), {push.rewinds} rewinds, {push.offers} offers, {resets} resets, "
          f"{now:.1f} s simulated")
    # A reset of the board loses what was in flight: up to a window of chunks to send again each time.
    assert push.chunks_sent <= (chunks * 1.05 if not loss else chunks * 4 + resets * push.window), \
        (seed, push.chunks_sent, resets)
    # the rate limit holds: at most rate x time + one window
    assert push.chunks_sent <= 16.0 * now + push.window
