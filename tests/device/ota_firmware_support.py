"""Shared by the tests that update the real firmware on virtual boards (this file holds no tests): the
operator's push through a gateway in a thread, update mode's heap line, and reading a board's update state
from its flash (the release of the compiled firmware is bench's, ferry.bench.ota_fleet.firmware_release)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from ferry import ota as fota
from ferry.hwsim.board import VirtualBoard

UPDATE_MODE_END = re.compile(r"ota: update mode ends: \w+ .*\(heap low (-?\d+), download's peaks (-?\d+)\)")


@dataclass
class PushThread:
    """`ferry.ota.push` (the operator's side, its own MQTT client) in a thread, as `ferry ota push` runs it."""

    port: int
    site: str
    devices: list[str]
    release: fota.Release
    rate_per_s: float = 64.0
    timeout_s: float = 120.0
    username: str | None = None
    password: str | None = None
    result: dict = field(default_factory=dict)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.client = fota.MqttClient("127.0.0.1", self.port, f"ota-test-{id(self)}", self.username, self.password)
        self.thread = threading.Thread(target=self._run, name="ota-push", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = fota.push(self.client, self.site, self.devices, self.release, chunk_bytes=576,
                                    rate_per_s=self.rate_per_s, timeout_s=self.timeout_s)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self) -> dict:
        self.thread.join(self.timeout_s + 30)
        self.client.close()
        if self.error is not None:
            raise self.error
        return self.result


def ota_state(board: VirtualBoard) -> dict[str, str]:
    """/ota/state as a dict ({} when the board never updated)."""
    path = board.flash_dir / "ota" / "state"
    if not path.exists():
        return {}
    return {k: v for k, _, v in (line.partition(" ") for line in path.read_text().splitlines() if line)}
