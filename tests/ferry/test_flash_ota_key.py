"""`ferry flash --ota-key-file FILE` (docs/ota.md, "Security"): a new random key on the board, the
device's line in the keys file `ferry ota push --keys` reads, written only after a verified copy, the key
never printed; and a flash clears a pending request for update mode with the update state."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ferry import flash
from ferry import ota as fota
from tests.ferry.test_flash import flash_with

PLAIN = ("--no-tls", "--no-mqtt-password")


@pytest.fixture(autouse=True)
def wifi_password_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(flash.WIFI_PASSWORD_ENV, "wifi-pw")


def test_the_board_gets_a_new_key_and_the_keys_file_its_line(tmp_path: Path) -> None:
    keys = tmp_path / "ota.keys"
    keys.write_text("other-1 " + "ab" * 32 + "\n")
    code, out, err, copied = flash_with(tmp_path, *PLAIN, "--device-id", "kitchen-1", "--ota-key-file", str(keys))
    assert code == 0, err
    key = copied["ferry_ota.key"].decode()
    assert len(key) == 64 and bytes.fromhex(key)
    assert fota.load_keys(keys) == {"other-1": bytes.fromhex("ab" * 32), "kitchen-1": bytes.fromhex(key)}
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert key not in out + err and "ferry ota push --keys" in out
    # flashed again: a new key, the device's old line replaced
    code, out, err, copied = flash_with(tmp_path, *PLAIN, "--device-id", "kitchen-1", "--ota-key-file", str(keys))
    assert code == 0, err
    assert copied["ferry_ota.key"].decode() != key
    assert fota.load_keys(keys)["kitchen-1"] == bytes.fromhex(copied["ferry_ota.key"].decode())
    assert len(keys.read_text().splitlines()) == 2


def test_a_failed_copy_leaves_the_keys_file_alone(tmp_path: Path) -> None:
    keys = tmp_path / "ota.keys"
    keys.write_text("other-1 " + "ab" * 32 + "\n")

    def failing(args: list[str], answer_timeout_s: float, total_timeout_s: float) -> flash.RunResult:
        return flash.RunResult(1, flash.READY_MARKER + "\n", "mpremote: boom\n", answered=True)

    code = flash.main(["--port", "socket://127.0.0.1:9", "--site", "s", "--wifi-ssid", "w", "--broker", "gw",
                       "--no-mpy", *PLAIN, "--device-id", "kitchen-2", "--ota-key-file", str(keys)], runner=failing)
    assert code == 1 and keys.read_text() == "other-1 " + "ab" * 32 + "\n"


def test_the_key_file_needs_a_device_id_and_a_writable_place(tmp_path: Path) -> None:
    code, out, err, copied = flash_with(tmp_path, *PLAIN, "--ota-key-file", str(tmp_path / "k"))
    assert code == 2 and "--ota-key-file needs --device-id" in err and not copied
    code, out, err, copied = flash_with(tmp_path, *PLAIN, "--device-id", "d", "--ota-key-file",
                                        str(tmp_path / "missing" / "k"))
    assert code == 2 and "not writable" in err and not copied


def test_a_flash_clears_the_update_state_and_a_request_for_update_mode(tmp_path: Path) -> None:
    args = flash.build_parser().parse_args(["--port", "p", "--site", "s", "--wifi-ssid", "w", "--broker", "gw",
                                            "--no-mpy", *PLAIN])
    plan = flash.build_plan(args, {}, tmp_path)
    assert {"/ota/state", "/ota/state.tmp", "/ota/update"} <= set(plan.remove)
    assert not any(f.remote == flash.OTA_KEY_REMOTE for f in plan.files)  # no key unless asked for
