"""A Plantower PMS5003 particulate sensor on a virtual board's UART, spoken with pyserial.

The sensor's default (active) mode: every `interval_s` it sends one 32-byte frame, 0x42 0x4d,
frame length 28, thirteen big-endian data words (PM1.0/PM2.5/PM10 "CF=1", the same three
"atmospheric environment", six particle counts, a reserved word), then the checksum: the sum
of the 30 bytes before it. The values follow `sensor_signals.particulates_ugm3` for the board's
seed, so a test knows what the firmware should report. Faults for the firmware's error counting:
`corrupt` (a wrong checksum), `garbage` (random bytes between frames), `truncate` (a frame cut
short, the next one right after it), `silent` (nothing at all, a dead fan or a loose wire).
Passive mode and the command frames the sensor accepts (0xe1, 0xe2, 0xe4) are not modelled:
bytes from the board are read and counted, not answered. No baud-rate timing: a frame arrives
as fast as the pty takes it.

    path = board.attach_uart(2)
    with Pms5003Model(path, seed=board.config.sensor_seed) as model:
        board.power_on()
        ...
        model.fault = "silent"
"""

from __future__ import annotations

import random
import struct
import threading
import time

import serial

from ferry.hwsim.shims import sensor_signals

FRAME_START = b"\x42\x4d"
FRAME_LENGTH = 28
FAULTS = (None, "corrupt", "garbage", "truncate", "silent")


def frame(pm_cf1: tuple[int, int, int], pm_atm: tuple[int, int, int],
          counts: tuple[int, ...] = (0, 0, 0, 0, 0, 0)) -> bytes:
    """One active-mode frame with a correct checksum (Plantower PMS5003 manual, appendix I)."""
    body = FRAME_START + struct.pack(">H", FRAME_LENGTH) + struct.pack(">13H", *pm_cf1, *pm_atm, *counts, 0)
    return body + struct.pack(">H", sum(body) & 0xFFFF)


class Pms5003Model:
    """A thread writing frames to the pty path with pyserial (9600 8N1, as the sensor runs)."""

    def __init__(self, port: str, seed: int = 1, interval_s: float = 1.0, fault: str | None = None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"fault: one of {FAULTS}, got {fault!r}")
        self.port = port
        self.seed = seed
        self.interval_s = interval_s
        self.fault = fault
        self.sent: list[tuple[float, tuple[int, int, int] | None]] = []
        """(host time, atmospheric PM values or None for a broken frame) of every frame written."""
        self.received = 0
        """Bytes the board wrote to the sensor (commands are not modelled)."""
        self.dropped = 0
        """Frames the pty had no room for (the board not reading: reset, deep sleep)."""
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._serial = serial.Serial(port=port, baudrate=9600, bytesize=8, parity="N", stopbits=1, timeout=0,
                                     write_timeout=0)
        self._thread = threading.Thread(target=self._run, name=f"pms5003-{port}", daemon=True)

    def __enter__(self) -> "Pms5003Model":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._serial.close()

    def values(self, t_s: float) -> tuple[int, int, int]:
        """The atmospheric PM1.0, PM2.5, PM10 the sensor reports at host time t_s."""
        return sensor_signals.particulates_ugm3(self.seed, t_s)

    def _write(self, data: bytes) -> bool:
        try:
            self._serial.write(data)
            return True
        except serial.SerialTimeoutException:  # the pty buffer is full: a UART drops what nobody reads
            self.dropped += 1
            return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.received += len(self._serial.read(4096) or b"")
            fault = self.fault
            if fault == "silent":
                continue
            now = time.time()
            pm = self.values(now)
            good = frame(tuple(v + v // 10 for v in pm), pm, (pm[0] * 300, pm[0] * 90, pm[1] * 20, pm[1] * 3,
                                                               pm[2], pm[2] // 3))
            if fault == "garbage":
                self._write(bytes(self._random.randrange(256) for _ in range(self._random.randrange(1, 40))))
            if fault == "corrupt":
                bad = bytearray(good)
                bad[10] ^= 0x01  # the PM1.0 word: the checksum no longer matches
                if self._write(bytes(bad)):
                    self.sent.append((now, None))
                continue
            if fault == "truncate":
                if self._write(good[:self._random.randrange(5, 31)]):
                    self.sent.append((now, None))
            if self._write(good):
                self.sent.append((now, pm))
