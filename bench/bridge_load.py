"""Telemetry load for `ferry bench bridge`: `python -m ferry.bench.bridge_load SPEC.json RESULT.json`.

Devices publishing contract readings at QoS 1, one uvloop loop in a process
of its own (so its CPU is its own and shows in the report): each publisher is
one device on its own connection with `window` PUBLISHes in flight, every
reading a fresh, valid 137-byte payload with the next seq (`bench/bridge_model.py`).
It publishes a fixed number of messages, or until SIGTERM, as fast as
PUBACKs come back or at a fixed rate; then it waits for the PUBACKs still
owed and writes per-device counts, so the bench can check that every
acknowledged reading is in Kafka. `ferry.bench.loadgen` is not used: its
payloads carry a binary send time, which the bridge would dead-letter.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from pathlib import Path

from ferry.bench import wire
from ferry.bench.bridge_model import (
    PAYLOAD_BYTES, PROGRESS_INTERVAL_S, SEQ_BASE, SEQ_LIMIT, TS_BASE_MS, LoadProgress, LoadResult, LoadSpec,
    device_id, payload_parts, read_json, telemetry_topic, write_json_atomic,
)
from ferry.event_loop import loop_factory
from ferry.gateway.mqtt import encode_publish, encode_topic

log = logging.getLogger(__name__)

KEEPALIVE_S = 60
CONNECT_TIMEOUT_S = 30.0
ACK_WAIT_S = 60.0
"""After the last PUBLISH: how long to wait for the PUBACKs still owed."""
PACE_TICK_S = 0.005
WRITE_HIGH_WATER_BYTES = 256 * 1024


class Run:
    """State every publisher of one run shares."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.publishing = False
        self.errors: list[str] = []
        self.acked = 0
        self.sent = 0
        self.publishers: list[Publisher] = []
        self.all_acked = asyncio.Event()

    def check_all_acked(self) -> None:
        """Once publishing stopped: set `all_acked` when no PUBACK is owed on a live connection."""
        if not self.publishing and all(p.lost or p.inflight == 0 for p in self.publishers):
            self.all_acked.set()

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


class Publisher(asyncio.Protocol):
    """One device: CONNECT, then readings with consecutive seqs, `window` unacknowledged at most."""

    def __init__(self, run: Run, index: int, quota: int) -> None:
        self.run = run
        self.device = device_id(run.spec.tag, index)
        self.quota = quota
        """Messages this device may send (count mode); it stops there."""
        frame = encode_publish(encode_topic(telemetry_topic(self.device)), bytes(PAYLOAD_BYTES), 1, packet_id=1)
        self.head = frame[:len(frame) - PAYLOAD_BYTES - 2]
        self.payload_head, self.payload_middle, self.payload_tail = payload_parts(self.device)
        self.scanner = wire.Scanner()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = run.loop.create_future()
        self.lost = False
        self.sent = 0
        self.acked = 0
        self.due = 0
        """Paced runs: messages the pacer made due and not yet sent."""
        self._packet_id = 0
        self._refill_scheduled = False

    @property
    def inflight(self) -> int:
        return self.sent - self.acked

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES)
        transport.write(wire.connect_bytes(self.device, clean=True, keepalive_s=KEEPALIVE_S))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.device}: connection lost before CONNACK: {exc}"))
        else:
            self.run.error(f"{self.device}: connection lost with {self.inflight} unacknowledged: "
                           f"{exc or 'closed by the broker'}")
        self.run.loop.call_soon(self.run.check_all_acked)

    def data_received(self, data: bytes) -> None:
        result = self.scanner.feed(data, 0)
        if result.connack_codes:
            code = result.connack_codes.pop()
            if self.ready.done():
                self.run.error(f"{self.device}: a second CONNACK")
            elif code:
                self.ready.set_exception(ConnectionError(f"{self.device}: CONNACK return code {code}"))
            else:
                self.ready.set_result(None)
        if result.unexpected:
            self.run.error(f"{self.device}: unexpected packet types {sorted(set(result.unexpected))}")
            result.unexpected.clear()
        acks = len(result.acks)
        if acks:
            result.acks.clear()
            self.acked += acks
            self.run.acked += acks
            if self.run.publishing and not self._refill_scheduled:
                # One refill per loop turn: the PUBACKs of every read in this turn share one write.
                self._refill_scheduled = True
                self.run.loop.call_soon(self._refill)
            elif not self.run.publishing:
                self.run.check_all_acked()

    def _refill(self) -> None:
        self._refill_scheduled = False
        if self.run.publishing:
            self.send()

    def send(self) -> None:
        """Send what may go now: up to the window, the quota and (paced) what is due."""
        if self.lost:
            return
        count = min(self.run.spec.window - self.inflight, self.quota - self.sent)
        if self.run.spec.rate_per_s:
            count = min(count, self.due)
        if count <= 0:
            return
        head, payload_head, middle, tail = self.head, self.payload_head, self.payload_middle, self.payload_tail
        packet_ids = wire.PACKET_IDS
        packet_id = self._packet_id
        index = self.sent
        chunks = []
        for _ in range(count):
            packet_id = packet_id + 1 if packet_id < 65_535 else 1
            chunks.append(b"%s%s%s%d%s%d%s" % (head, packet_ids[packet_id], payload_head, SEQ_BASE + index,
                                              middle, TS_BASE_MS + index, tail))
            index += 1
        self._packet_id = packet_id
        self.transport.write(b"".join(chunks))
        self.sent += count
        self.run.sent += count
        if self.run.spec.rate_per_s:
            self.due -= count

    def disconnect(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(wire.DISCONNECT)
            self.transport.close()


async def _pace(run: Run) -> None:
    """Make messages due at `rate_per_s` in total, spread evenly over the publishers."""
    publishers = run.publishers
    start = time.monotonic()
    issued = 0
    turn = 0
    while run.publishing:
        due = int((time.monotonic() - start) * run.spec.rate_per_s) - issued
        if due > 0:
            issued += due
            base, extra = divmod(due, len(publishers))
            for offset, publisher in enumerate(publishers[turn:] + publishers[:turn]):
                publisher.due += base + (1 if offset < extra else 0)
            turn = (turn + extra) % len(publishers)
            for publisher in publishers:
                publisher.send()
        await asyncio.sleep(PACE_TICK_S)


async def _report_progress(run: Run, path: Path | None, timeline: list[tuple[float, int]]) -> None:
    while True:
        now = time.monotonic()
        timeline.append((now, run.acked))
        if path is not None:
            write_json_atomic(LoadProgress(now, run.sent, run.acked, run.publishing), path)
        await asyncio.sleep(PROGRESS_INTERVAL_S)


def _quotas(spec: LoadSpec) -> list[int]:
    if not spec.total:
        return [SEQ_LIMIT] * spec.publishers
    base, extra = divmod(spec.total, spec.publishers)
    return [base + (1 if i < extra else 0) for i in range(spec.publishers)]


async def run_load(spec: LoadSpec) -> LoadResult:
    run = Run(spec)
    stop = asyncio.Event()
    run.loop.add_signal_handler(signal.SIGTERM, stop.set)
    timeline: list[tuple[float, int]] = []
    progress = run.loop.create_task(_report_progress(run, Path(spec.progress_path) if spec.progress_path else None,
                                                     timeline))
    quotas = _quotas(spec)
    try:
        for index, quota in enumerate(quotas):
            _, publisher = await run.loop.create_connection(lambda i=index, q=quota: Publisher(run, i, q),
                                                            spec.host, spec.port)
            run.publishers.append(publisher)
        await asyncio.wait_for(asyncio.gather(*(p.ready for p in run.publishers)), CONNECT_TIMEOUT_S)
        run.publishing = True
        started = time.monotonic()
        pacer = run.loop.create_task(_pace(run)) if spec.rate_per_s else None
        for publisher in run.publishers:
            publisher.send()
        while not stop.is_set():
            if spec.total and all(p.sent >= p.quota or p.lost for p in run.publishers):
                break
            try:
                await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
        run.publishing = False
        if pacer is not None:
            await pacer
        run.check_all_acked()
        try:
            await asyncio.wait_for(run.all_acked.wait(), ACK_WAIT_S)
        except asyncio.TimeoutError:
            run.error(f"{sum(p.inflight for p in run.publishers if not p.lost)} PUBACKs still owed "
                      f"{ACK_WAIT_S:g} s after the last PUBLISH")
        stopped = time.monotonic()
        progress.cancel()
        timeline.append((stopped, run.acked))
        return LoadResult(spec.tag, tuple(p.sent for p in run.publishers), tuple(p.acked for p in run.publishers),
                          started, stopped, tuple(timeline), tuple(run.errors))
    finally:
        progress.cancel()
        for publisher in run.publishers:
            publisher.disconnect()
        await asyncio.sleep(0.05)



def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m ferry.bench.bridge_load SPEC.json RESULT.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = read_json(LoadSpec, Path(argv[0]))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(run_load(spec))
    write_json_atomic(result, Path(argv[1]))
    for error in result.errors:
        log.warning("%s", error)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
