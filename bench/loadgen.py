"""The load generator: `python -m ferry.bench.loadgen SPEC.json RESULT.json`, one process, one uvloop loop.

It runs in its own process (started by `ferry bench`, see `bench/runner.py`)
so its CPU is its own and can be measured and pinned to a core of its own.
Written for speed: raw asyncio protocols, TCP_NODELAY, PUBLISH bytes built
once (`bench/wire.py`) and stamped with `time.monotonic_ns()` when written,
QoS 0 publishers write batches of 32 messages per syscall and stop only when
the socket pushes back, QoS 1 publishers keep a window of PUBLISHes in flight,
and subscribers scan frames with a minimal parser and ack in one write per read.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import socket
import sys
import time
from pathlib import Path

from ferry.bench import wire
from ferry.bench.model import FlowResult, Histogram, IdleResult, LoadSpec, Mode, read_json, write_json
from ferry.event_loop import loop_factory

BATCH = 32
"""QoS 0 throughput: messages per write (all stamped with the same send time)."""
BATCHES_PER_TURN = 8
"""QoS 0 throughput: writes per publisher per loop turn before others get a go."""
WRITE_HIGH_WATER_BYTES = 256 * 1024
WRITE_LOW_WATER_BYTES = 64 * 1024
TICK_S = 0.001
"""PACED: how often due messages are sent (uvloop's timers have 1 ms resolution)."""
IDLE_TICK_S = 0.1
CONNECT_TIMEOUT_S = 30.0
STALL_S = 0.5
"""Bounded QoS 0: publishers blocked this long with no delivery at all write off what they wait for
(the broker dropped it). Long enough that a slow broker turn is not mistaken for a drop."""
DRAIN_QUIET_S = 1.0
"""The drain ends early once nothing arrived for this long (and nothing is unacknowledged)."""

_now_ns = time.monotonic_ns
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- process stats

def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB (/proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class BrokerSampler:
    """CPU and RSS of the broker process at the edges of a measurement window."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._cpu0 = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = self._cpu()

    def cpu_pct(self) -> float:
        if self.pid is None:
            return -1.0
        elapsed = time.monotonic() - self._t0
        return 100.0 * (self._cpu() - self._cpu0) / elapsed if elapsed > 0 else 0.0

    def rss_kb(self) -> int:
        if self.pid is None:
            return -1
        try:
            return proc_rss_kb(self.pid)
        except OSError:
            return -1

    def _cpu(self) -> float:
        if self.pid is None:
            return 0.0
        try:
            return proc_cpu_s(self.pid)
        except OSError:
            return 0.0


# --------------------------------------------------------------------------- clients

class Run:
    """State every client of one run shares."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.publishing = False
        self.recording = False
        self.closing = False
        self.latencies = Histogram()
        self.ack_latencies = Histogram()
        self.errors: list[str] = []
        # Bounded QoS 0: publishers pause while sent × subscribers − delivered − written_off
        # exceeds the limit, and resume below half of it.
        self.bounded = spec.mode is Mode.THROUGHPUT and spec.qos == 0 and spec.max_outstanding > 0
        self.fanout = max(1, spec.subscribers)
        self.limit = spec.max_outstanding * self.fanout
        self.sent = 0
        self.delivered = 0
        self.written_off = 0
        self.blocked: list["Publisher"] = []

    def outstanding(self) -> int:
        return self.sent * self.fanout - self.delivered - self.written_off

    def on_delivered(self, count: int) -> None:
        self.delivered += count
        if self.blocked and self.outstanding() <= self.limit // 2:
            self.wake()

    def wake(self) -> None:
        blocked, self.blocked = self.blocked, []
        for pub in blocked:
            pub.schedule_pump()

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


class Client(asyncio.Protocol):
    """Connects, waits for CONNACK (then SUBACK if it subscribes); `ready` resolves after that."""

    def __init__(self, run: Run, client_id: str, *, clean: bool = True) -> None:
        self.run = run
        self.client_id = client_id
        self.clean = clean
        self.scanner = wire.Scanner()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = run.loop.create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)
        transport.write(wire.connect_bytes(self.client_id, clean=self.clean, keepalive_s=self.run.spec.keepalive_s))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.client_id}: connection lost before ready: {exc}"))
        elif not self.run.closing:
            self.run.error(f"{self.client_id}: connection lost: {exc or 'closed by the broker'}")

    def data_received(self, data: bytes) -> None:
        self._control(self.scanner.feed(data, _now_ns()))

    def _control(self, res: wire.ScanResult) -> None:
        """Handle the rare packets (CONNACK, SUBACK, unexpected ones)."""
        if res.connack_codes:
            code = res.connack_codes[0]
            res.connack_codes.clear()
            if code != 0:
                self._fail(f"CONNACK return code {code}")
            else:
                self.on_connected()
        if res.suback_codes:
            codes = list(res.suback_codes)
            res.suback_codes.clear()
            if any(c >= 0x80 for c in codes):
                self._fail(f"SUBACK refused: {codes}")
            elif not self.ready.done():
                self.ready.set_result(None)
        if res.unexpected:
            self.run.error(f"{self.client_id}: unexpected packet types {sorted(set(res.unexpected))}")
            res.unexpected.clear()

    def _fail(self, text: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.client_id}: {text}"))
        self.run.error(f"{self.client_id}: {text}")

    def on_connected(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def disconnect(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(wire.DISCONNECT)
            self.transport.close()


class Subscriber(Client):
    def __init__(self, run: Run, client_id: str, topic_filter: str, qos: int, *, clean: bool) -> None:
        super().__init__(run, client_id, clean=clean)
        self.topic_filter = topic_filter
        self.qos = qos
        self._counted = 0
        self._ack_scheduled = False

    def on_connected(self) -> None:
        self.transport.write(wire.subscribe_bytes(self.topic_filter, self.qos))

    def data_received(self, data: bytes) -> None:
        res = self.scanner.feed(data, _now_ns())
        if self.run.bounded:
            count = res.publishes
            self.run.on_delivered(count - self._counted)
            self._counted = count
        if res.publish_ids and not self._ack_scheduled:
            # Ack once per loop turn: every read of this turn shares one write.
            self._ack_scheduled = True
            self.run.loop.call_soon(self._send_acks)
        if res.connack_codes or res.suback_codes or res.unexpected:
            self._control(res)

    def _send_acks(self) -> None:
        self._ack_scheduled = False
        ids = self.scanner.result.publish_ids
        if not self.lost:
            self.transport.write(b"".join(map(wire.PUBACKS.__getitem__, ids)))
        ids.clear()

    @property
    def received(self) -> int:
        return self.scanner.result.publishes


class Publisher(Client):
    """QoS 0: pumps batches while the socket takes them. QoS 1: keeps `window` PUBLISHes in flight.

    PACED: sends only what the ticker made due (`due`), one stamp per write.
    """

    def __init__(self, run: Run, client_id: str, index: int, topic: str) -> None:
        super().__init__(run, client_id)
        spec = run.spec
        self.qos = spec.qos
        self.template = wire.PublishTemplate.build(topic, index, spec.qos, spec.payload_bytes)
        self.paced = spec.mode is Mode.PACED
        self.window = spec.window
        self.batch_parts = self.template.batch_parts(BATCH) if not spec.qos else []
        self._parts_cache: dict[int, list[bytes]] = {}
        self.paused = False
        self._scheduled = False
        self.sent = 0
        self.acked = 0
        self.inflight = 0
        self.due = 0
        self.max_backlog = 0
        self._next_pid = 0
        self._sent_at = [0] * 65_536

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if not self.qos and not self.paced:
            self.schedule_pump()

    # QoS 0, max rate -----------------------------------------------------------------

    def schedule_pump(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.run.loop.call_soon(self.pump)

    def pump(self) -> None:
        self._scheduled = False
        if self.paused or not self.run.publishing or self.lost:
            return
        run = self.run
        if run.bounded and run.outstanding() > run.limit:
            run.blocked.append(self)
            return
        write = self.transport.write
        parts = self.batch_parts
        stamp = wire.timestamp
        for _ in range(BATCHES_PER_TURN):
            write(stamp(_now_ns()).join(parts))
            self.sent += BATCH
            run.sent += BATCH
            if self.paused:
                return
        self.schedule_pump()

    # QoS 1 window and PACED ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = _now_ns()
        res = self.scanner.feed(data, now)
        acks = res.acks
        if acks:
            n = len(acks)
            self.inflight -= n
            self.acked += n
            if self.run.recording:
                sent_at = self._sent_at
                add = self.run.ack_latencies.add
                for pid in acks:
                    add(now - sent_at[pid])
            acks.clear()
            if self.run.publishing and not self._scheduled:
                # Refill once per loop turn: acks from every read of this turn share one write.
                self._scheduled = True
                self.run.loop.call_soon(self._refill)
        if res.connack_codes or res.suback_codes or res.unexpected:
            self._control(res)

    def _refill(self) -> None:
        self._scheduled = False
        if self.run.publishing:
            self.send_due(_now_ns())

    def send_due(self, now: int) -> None:
        """Send what may go now: PACED the due messages, QoS 1 up to the window."""
        if self.lost:
            return
        if self.qos:
            room = self.window - self.inflight
            count = min(room, self.due) if self.paced else room
            if count <= 0:
                if self.paced and self.due > self.max_backlog:
                    self.max_backlog = self.due
                return
            ts = wire.timestamp(now)
            one = self.template.one
            sent_at = self._sent_at
            pid = self._next_pid
            chunks = []
            for _ in range(count):
                pid = pid + 1 if pid < 65_535 else 1
                sent_at[pid] = now
                chunks.append(one(ts, pid))
            self._next_pid = pid
            self.transport.write(b"".join(chunks))
            self.inflight += count
            self.sent += count
            if self.paced:
                self.due -= count
                if self.due > self.max_backlog:
                    self.max_backlog = self.due
            return
        count = self.due
        if count <= 0:
            return
        parts = self._parts_cache.get(count)
        if parts is None:
            parts = self._parts_cache[count] = self.template.batch_parts(count)
        self.transport.write(wire.timestamp(now).join(parts))
        self.sent += count
        self.due = 0

    @property
    def published(self) -> int:
        return self.acked if self.qos else self.sent


# --------------------------------------------------------------------------- flow runs

async def _connect(run: Run, factory, what: str) -> Client:
    spec = run.spec
    _, client = await run.loop.create_connection(factory, spec.host, spec.port)
    try:
        await asyncio.wait_for(client.ready, CONNECT_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ConnectionError(f"{what}: no CONNACK/SUBACK within {CONNECT_TIMEOUT_S} s") from None
    return client


async def _unstick(run: Run) -> None:
    """Bounded QoS 0: if publishers wait and nothing was delivered for a while, what they wait
    for was dropped by the broker: write it off so the closed loop does not stall."""
    last = -1
    while run.publishing:
        await asyncio.sleep(STALL_S)
        if run.blocked and run.delivered == last:
            run.written_off = run.sent * run.fanout - run.delivered
            run.wake()
        last = run.delivered


async def _pace(run: Run, publishers: list[Publisher], rate_per_s: int) -> None:
    """Make messages due at `rate_per_s` in total, round-robin over the publishers."""
    start = _now_ns()
    issued = 0
    turn = 0
    count = len(publishers)
    while run.publishing:
        now = _now_ns()
        due = (now - start) * rate_per_s // 1_000_000_000 - issued
        if due > 0:
            issued += due
            base, extra = divmod(due, count)
            for i in range(count):
                publishers[(turn + i) % count].due += base + (1 if i < extra else 0)
            turn = (turn + extra) % count
            for pub in publishers:
                if pub.due:
                    pub.send_due(now)
        await asyncio.sleep(TICK_S)


async def run_flow(spec: LoadSpec) -> FlowResult:
    run = Run(spec)
    sampler = BrokerSampler(spec.broker_pid)
    qos = spec.qos
    subscribers: list[Subscriber] = []
    publishers: list[Publisher] = []
    clients: list[Client] = []
    try:
        gate = asyncio.Semaphore(spec.connect_concurrency)

        async def connect(factory, what: str) -> Client:
            async with gate:
                return await _connect(run, factory, what)

        sub_ids = [f"{spec.client_id_prefix}-sub-{i:05d}" for i in range(spec.subscribers)]
        subscribers += await asyncio.gather(*(connect(lambda cid=cid: Subscriber(
            run, cid, f"{spec.topic_prefix}/#", qos, clean=not spec.persistent_subscribers), cid)
            for cid in sub_ids))
        clients += subscribers
        pub_ids = [f"{spec.client_id_prefix}-pub-{i:05d}" for i in range(spec.publishers)]
        publishers += await asyncio.gather(*(connect(
            lambda cid=cid, i=i: Publisher(run, cid, i, wire.topic_for(spec.topic_prefix, i)), cid)
            for i, cid in enumerate(pub_ids)))
        clients += publishers
        # Everyone is connected: a PINGREQ per subscriber marks the start (the null sink
        # starts sending on it; a broker just answers it).
        for sub in subscribers:
            sub.transport.write(wire.PINGREQ)

        run.publishing = True
        pacer = None
        if run.bounded:
            pacer = run.loop.create_task(_unstick(run))
        if spec.mode is Mode.PACED:
            pacer = run.loop.create_task(_pace(run, publishers, spec.rate_per_s))
        elif qos:
            for pub in publishers:
                pub.send_due(_now_ns())
        else:
            for pub in publishers:
                pub.schedule_pump()

        await asyncio.sleep(spec.warmup_s)
        for sub in subscribers:
            sub.scanner.histogram = run.latencies
        run.recording = True
        delivered0 = sum(s.received for s in subscribers)
        published0 = sum(p.published for p in publishers)
        cpu0 = time.process_time()
        sampler.start()
        t0 = time.monotonic()
        await asyncio.sleep(spec.duration_s)
        window_s = time.monotonic() - t0
        delivered1 = sum(s.received for s in subscribers)
        published1 = sum(p.published for p in publishers)
        generator_cpu = 100.0 * (time.process_time() - cpu0) / window_s
        broker_cpu = sampler.cpu_pct()
        broker_rss = sampler.rss_kb()
        run.recording = False
        for sub in subscribers:
            sub.scanner.histogram = None

        run.publishing = False
        if pacer is not None:
            await pacer
        await _drain(spec, publishers, subscribers)
        published_total = sum(p.published for p in publishers)
        return FlowResult(
            published_per_s=(published1 - published0) / window_s,
            delivered_per_s=(delivered1 - delivered0) / window_s,
            latency=run.latencies.latency(),
            ack_latency=run.ack_latencies.latency(),
            published_total=published_total,
            expected_total=published_total * len(subscribers),
            delivered_total=sum(s.received for s in subscribers),
            generator_cpu_pct=generator_cpu,
            broker_cpu_pct=broker_cpu,
            broker_rss_kb=broker_rss,
            window_s=window_s,
            max_backlog=max((p.max_backlog for p in publishers), default=0),
            written_off=run.written_off,
            errors=tuple(run.errors),
        )
    finally:
        run.closing = True
        for client in clients:
            client.disconnect()
        await asyncio.sleep(0.05)


async def _drain(spec: LoadSpec, publishers: list[Publisher], subscribers: list[Subscriber]) -> None:
    """Wait for acks and deliveries still in flight, until all arrived, quiet, or `drain_s`."""
    deadline = time.monotonic() + spec.drain_s
    last = -1
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        delivered = sum(s.received for s in subscribers)
        unacked = sum(p.inflight for p in publishers)
        expected = sum(p.published for p in publishers) * len(subscribers)
        if unacked == 0 and delivered >= expected:
            return
        now = time.monotonic()
        if delivered != last:
            last, quiet_since = delivered, now
        elif now - quiet_since > DRAIN_QUIET_S:
            return
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- idle run

class IdleClient(Client):
    def data_received(self, data: bytes) -> None:
        res = self.scanner.feed(data, 0)
        if res.connack_codes or res.suback_codes or res.unexpected:
            self._control(res)

    @property
    def pongs(self) -> int:
        return self.scanner.result.pingresps


async def run_idle(spec: LoadSpec, nofile: tuple[int, int]) -> IdleResult:
    run = Run(spec)
    sampler = BrokerSampler(spec.broker_pid)
    rss_idle = sampler.rss_kb()
    gate = asyncio.Semaphore(spec.connect_concurrency)

    async def one(i: int) -> IdleClient | None:
        cid = f"{spec.client_id_prefix}-idle-{i:05d}"
        async with gate:
            try:
                return await _connect(run, lambda: IdleClient(run, cid), cid)
            except ConnectionError as exc:  # it names the client
                run.error(str(exc))
            except OSError as exc:
                run.error(f"{cid}: {exc}")
            return None

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(spec.connections)))
    clients = [c for c in results if c is not None]
    connect_s = time.monotonic() - t0
    rss_connected = sampler.rss_kb()
    try:
        interval = spec.ping_interval_s or spec.keepalive_s / 2
        slots = max(1, round(interval / IDLE_TICK_S))
        buckets: list[list[IdleClient]] = [[] for _ in range(slots)]
        rng = random.Random(1)
        for client in clients:
            buckets[rng.randrange(slots)].append(client)
        pings = 0
        cpu0 = time.process_time()
        sampler.start()
        start = time.monotonic()
        tick = 0
        while True:
            target = start + tick * IDLE_TICK_S
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - start >= spec.duration_s:
                break
            for client in buckets[tick % slots]:
                if not client.lost:
                    client.transport.write(wire.PINGREQ)
                    pings += 1
            tick += 1
        hold_s = time.monotonic() - start
        broker_cpu = sampler.cpu_pct()
        generator_cpu = 100.0 * (time.process_time() - cpu0) / hold_s
        rss_end = sampler.rss_kb()
        # The last pings' answers are a round trip away.
        deadline = time.monotonic() + 5.0
        while sum(c.pongs for c in clients) < pings and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        alive = sum(1 for c in clients if not c.lost)
        return IdleResult(
            requested=spec.connections, connected=len(clients), alive_at_end=alive,
            pings_sent=pings, pings_answered=sum(c.pongs for c in clients),
            connect_s=connect_s, hold_s=hold_s, broker_rss_idle_kb=rss_idle,
            broker_rss_connected_kb=rss_connected, broker_rss_end_kb=rss_end,
            broker_cpu_pct=broker_cpu, generator_cpu_pct=generator_cpu,
            generator_nofile=nofile, errors=tuple(run.errors),
        )
    finally:
        run.closing = True
        for client in clients:
            client.disconnect()
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- entry point


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m ferry.bench.loadgen SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = read_json(Path(argv[0]))
    assert isinstance(spec, LoadSpec)
    nofile = raise_nofile_limit()
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if spec.mode is Mode.IDLE:
            result = runner.run(run_idle(spec, nofile))
        else:
            result = runner.run(run_flow(spec))
    write_json(result, Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
