"""Which MicroPython runs a virtual board: the 64-bit PyPI unix port by default, the 32-bit
ESP32-like build (`BoardConfig.interpreter = "esp32-like"`) for heap measurements, with the shims
kept out of its heap budget unless asked (docs/virtual-board.md, "Interpreters")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferry.hwsim.board import UNIX_HEAP_FOR_64K_ESP32, BoardConfig, VirtualBoard, bare_free_bytes
from ferry.hwsim.micropython import (
    ESP32_LIKE, ESP32_LIKE_DIR_ENV, ESP32_LIKE_HEAP_BYTES, UNIX64, InterpreterNotFound, interpreter,
)
from tests.device.fw_support import esp32_like

REPORT = """
import gc, json, sys
gc.collect()
import umqtt.simple
print("REPORT " + json.dumps({"free": gc.mem_free(), "maxsize": sys.maxsize, "path": sys.path,
                              "umqtt": umqtt.simple.__file__, "small": type(2**30 - 1).__name__}))
"""


def test_defaults_the_64_bit_interpreter_with_its_own_heap() -> None:
    assert BoardConfig().interpreter == UNIX64
    assert BoardConfig().heap_bytes == UNIX_HEAP_FOR_64K_ESP32
    assert BoardConfig(interpreter=ESP32_LIKE).heap_bytes == ESP32_LIKE_HEAP_BYTES == 64 * 1024
    assert BoardConfig(interpreter=ESP32_LIKE, heap_bytes=80 * 1024).heap_bytes == 80 * 1024
    with pytest.raises(ValueError, match="interpreter"):
        BoardConfig(interpreter="esp8266")


def test_a_missing_esp32_like_build_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ESP32_LIKE_DIR_ENV, str(tmp_path))
    with pytest.raises(InterpreterNotFound, match="make test"):
        interpreter(ESP32_LIKE)
    (tmp_path / "build.log").write_text("cc1: error: -m32 is not supported\n")
    with pytest.raises(InterpreterNotFound, match="-m32 is not supported"):
        interpreter(ESP32_LIKE)


def run_report(tmp_path: Path, name: str, **config: object) -> dict:
    board = VirtualBoard(tmp_path / name, BoardConfig(**config))
    (board.flash_dir / "main.py").write_text(REPORT)
    board.power_on()
    try:
        assert board.wait_for(lambda: "REPORT" in board.console() or "Error" in board.console(), 20)
    finally:
        board.stop()
    assert "REPORT" in board.console(), board.console()[-2000:]
    return json.loads(board.console().split("REPORT ", 1)[1].splitlines()[0])


def test_an_esp32_like_board_has_31_bit_ints_frozen_umqtt_and_a_64k_heap_for_the_firmware(tmp_path: Path) -> None:
    esp32_like()
    board = run_report(tmp_path, "rom", interpreter=ESP32_LIKE)
    shims_in_heap = run_report(tmp_path, "ram", interpreter=ESP32_LIKE, shims_in_heap=True)
    bare = bare_free_bytes(ESP32_LIKE, ESP32_LIKE_HEAP_BYTES)
    print(f"\nesp32-like, 64 KB: bare interpreter {bare} free; a board's main.py sees {board['free']} "
          f"(shims out of the budget), {shims_in_heap['free']} with the shims in the heap")
    assert board["maxsize"] == 2**31 - 1 and board["small"] == "int"
    assert board["path"][:3] == ["", ".frozen", "/lib"]
    assert board["umqtt"] == "umqtt/simple.py"  # frozen (stock firmware's; this flash has no /lib/umqtt)
    # What the board's boot (the flash mount, main.py's own source) takes of a bare interpreter's free heap.
    assert bare - 4096 < board["free"] <= bare
    assert shims_in_heap["free"] < board["free"] - 8 * 1024  # the shims' bytecode (13-17 KB)
