"""`Link`: an asyncio TCP proxy on 127.0.0.1 that applies a `LinkProfile` to every connection.

Each accepted connection gets an upstream connection and two directions. A
direction is a reader task (reads a chunk, asks its `DirectionShaper` when it is
due, queues it) and a delivery task (sleeps until the chunk is due and the
connection is not stalled, writes it, drains). Queues are bounded per direction
(`max_buffered_bytes`): a full one stops reading, so a slow link pushes back on
the sender as TCP would. Stalls and resets are `loop.call_at` timers driven by a
`FaultClock`; nothing polls.

`down` closes the listening socket but keeps the port bound (SO_REUSEPORT) so
connects are refused and the port cannot be taken meanwhile; going back up
listens on the same socket. Link methods must be called on the link's loop;
`ferry.hwsim.link_runner.LinkThread` wraps them for other threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import random
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ferry.hwsim.link_profile import (
    PERFECT, LinkProfile, ProfileError, ProfileSpec, describe, profile_to_dict, resolve_profile,
)
from ferry.hwsim.link_shaper import DirectionShaper, Fault, FaultClock, read_size

log = logging.getLogger(__name__)

_RST_LINGER = struct.pack("ii", 1, 0)
ACCEPT_RETRY_S = 0.5


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """One link: where it listens, where it forwards, how it starts."""

    upstream_host: str
    """Host the link forwards every accepted connection to."""
    upstream_port: int
    """Port the link forwards every accepted connection to."""
    name: str = "link"
    """Name used by the control API, stats and logs."""
    listen_host: str = "127.0.0.1"
    """Address the link listens on."""
    listen_port: int = 0
    """Port the link listens on; 0 picks a free one (read it back from `Link.port`)."""
    profile: LinkProfile = PERFECT
    """Profile in force when the link starts."""
    seed: int = 0
    """Seeds every random draw (jitter, stalls, resets): same seed and traffic, same run."""
    max_buffered_bytes: int = 256 * 1024
    """Bytes a direction of one connection may hold undelivered before it stops reading."""
    read_chunk_bytes: int = 64 * 1024
    """Largest read from a socket (smaller under a bandwidth cap, see `read_size`)."""
    connect_timeout_s: float = 5.0
    """How long to wait for the upstream connect before cutting the client with RST."""
    listen_backlog: int = 1024
    """Listen backlog: a 200-device fleet reconnecting at once must not overflow it."""

    def __post_init__(self) -> None:
        if not isinstance(self.profile, LinkProfile):
            raise ProfileError(f"profile: expected a LinkProfile, got {self.profile!r}")
        for name in ("upstream_port", "listen_port"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"{name}: expected a port number, got {port!r}")
        for name in ("max_buffered_bytes", "read_chunk_bytes", "listen_backlog"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s: must be > 0, got {self.connect_timeout_s!r}")


def config_from_dict(data: Mapping[str, object]) -> LinkConfig:
    """A LinkConfig from its field names; `profile` may be a preset name or a field mapping."""
    fields = dict(data)
    unknown = set(fields) - {f.name for f in dataclasses.fields(LinkConfig)}
    if unknown:
        raise ValueError(f"unknown link field(s): {', '.join(sorted(unknown))}")
    if "profile" in fields:
        fields["profile"] = resolve_profile(fields["profile"])  # type: ignore[arg-type]
    return LinkConfig(**fields)  # type: ignore[arg-type]


def config_to_dict(config: LinkConfig) -> dict[str, object]:
    """Every field of `config` for JSON (the profile as its fields)."""
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(LinkConfig)}
    data["profile"] = profile_to_dict(config.profile)
    return data


@dataclass(frozen=True, slots=True)
class ScheduleStep:
    """Switch to `profile` `at_s` seconds after `Link.schedule` was called."""

    at_s: float
    profile: LinkProfile


@dataclass(frozen=True, slots=True)
class LinkStats:
    """A snapshot of a link's counters since it started."""

    name: str
    """The link's name."""
    profile: str
    """Name of the profile in force."""
    port: int
    """The listening port (0 before start)."""
    connections_total: int
    """Connections accepted."""
    connections_open: int
    """Connections currently proxied (blackholed ones included)."""
    bytes_upstream: int
    """Bytes delivered from clients to the upstream."""
    bytes_downstream: int
    """Bytes delivered from the upstream to clients."""
    bytes_dropped: int
    """Bytes read and thrown away by a blackhole."""
    resets_injected: int
    """Connections cut by `reset_probability_per_s`."""
    stalls: int
    """Stalls that started (`stall_probability_per_s`), summed over connections."""
    cuts: int
    """Connections cut by `down`, `reset_all()` or a lifted blackhole."""
    upstream_failures: int
    """Accepted connections whose upstream connect failed (the client got RST)."""


@dataclass(slots=True)
class _Counters:
    connections_total: int = 0
    bytes_upstream: int = 0
    bytes_downstream: int = 0
    bytes_dropped: int = 0
    resets_injected: int = 0
    stalls: int = 0
    cuts: int = 0
    upstream_failures: int = 0


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close `writer`'s socket at once with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
        except OSError:
            pass
    writer.transport.abort()


class _ConnLog(logging.LoggerAdapter):
    def process(self, msg, kwargs):  # type: ignore[no-untyped-def]
        return f"[{self.extra['conn']}] {msg}", kwargs  # type: ignore[index]


@dataclass(slots=True)
class _Chunk:
    due_s: float
    data: bytes
    """b"" is the sender's EOF (a half-close), delivered as write_eof."""


class _Direction:
    """One direction of one connection: a source, a destination and what is in flight."""

    __slots__ = ("label", "src", "dst", "shaper", "rng", "queue", "queued_bytes", "room",
                 "finished")

    def __init__(self, label: str, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None,
                 rng: random.Random) -> None:
        self.label = label
        self.src = src
        self.dst = dst
        self.shaper = DirectionShaper()
        self.rng = rng
        self.queue: asyncio.Queue[_Chunk] = asyncio.Queue()
        self.queued_bytes = 0
        self.room = asyncio.Event()
        self.room.set()
        self.finished = False
        """The sender's EOF was delivered or thrown away."""


class _Connection:
    """A client connection, its upstream connection and the two directions between them."""

    def __init__(self, link: Link, conn_id: int, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        seed = link.config.seed
        self.link = link
        self.loop = asyncio.get_running_loop()
        self.log = _ConnLog(log, {"conn": f"{link.name}#{conn_id}"})
        self.client_writer = client[1]
        self.upstream_writer = upstream[1] if upstream else None
        self.lost = upstream is None
        """Bytes or an EOF vanished into a blackhole: the connection can never be whole again."""
        self.faults = FaultClock(random.Random(f"{seed}:{conn_id}:faults"))
        self.directions = [_Direction("up", client[0], self.upstream_writer,
                                      random.Random(f"{seed}:{conn_id}:up"))]
        if upstream is not None:
            self.directions.append(_Direction("down", upstream[0], client[1],
                                              random.Random(f"{seed}:{conn_id}:down")))
        self.tasks: list[asyncio.Task[None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def start(self) -> None:
        for direction in self.directions:
            self.tasks.append(self.loop.create_task(self._read_loop(direction)))
            if direction.dst is not None:
                self.tasks.append(self.loop.create_task(self._deliver_loop(direction)))
        self.retime()

    # -- faults -------------------------------------------------------------------------------

    def retime(self) -> None:
        """Redraw the next stall and reset for the link's current profile."""
        self.faults.retime(self.loop.time(), self.link.profile)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        deadline = self.faults.get_timer()
        if deadline is not None and not self.closed:
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        profile = self.link.profile
        for fault in self.faults.handle_timer(self.loop.time(), profile):
            if fault is Fault.STALL:
                self.link._counters.stalls += 1
                self.log.debug("stalled for %g ms", profile.stall_ms)
            else:
                self.link._counters.resets_injected += 1
                self.log.info("reset injected (%s)", profile.name)
                self.abort(rst=True)
                return
        self._arm_timer()

    # -- the two loops of a direction ---------------------------------------------------------

    async def _read_loop(self, d: _Direction) -> None:
        counters = self.link._counters
        try:
            while True:
                profile = self.link.profile
                data = await d.src.read(read_size(profile, self.link.config.read_chunk_bytes))
                profile = self.link.profile
                if profile.blackhole or d.dst is None:
                    self.lost = True
                    counters.bytes_dropped += len(data)
                    if not data:
                        d.finished = True
                        return
                    continue
                d.queue.put_nowait(_Chunk(d.shaper.due_s(len(data), self.loop.time(), profile, d.rng), data))
                if not data:
                    return
                d.queued_bytes += len(data)
                if d.queued_bytes >= self.link.config.max_buffered_bytes:
                    d.room.clear()
                    await d.room.wait()
        except (ConnectionError, OSError) as exc:
            self._side_failed(d, exc)

    async def _deliver_loop(self, d: _Direction) -> None:
        assert d.dst is not None
        counters = self.link._counters
        try:
            while True:
                chunk = await d.queue.get()
                while (wait_s := self.faults.hold_until_s(chunk.due_s) - self.loop.time()) > 0:
                    await asyncio.sleep(wait_s)  # a stall may begin meanwhile: look again
                d.queued_bytes -= len(chunk.data)
                if d.queued_bytes < self.link.config.max_buffered_bytes:
                    d.room.set()
                if self.link.profile.blackhole:
                    self.lost = True
                    counters.bytes_dropped += len(chunk.data)
                elif chunk.data:
                    d.dst.write(chunk.data)
                    if d.label == "up":
                        counters.bytes_upstream += len(chunk.data)
                    else:
                        counters.bytes_downstream += len(chunk.data)
                    await d.dst.drain()
                    continue
                elif d.dst.can_write_eof():
                    d.dst.write_eof()
                if not chunk.data:
                    d.finished = True
                    self._maybe_close()
                    return
        except (ConnectionError, OSError) as exc:
            self._side_failed(d, exc)

    def _side_failed(self, d: _Direction, exc: BaseException) -> None:
        if self.link.profile.blackhole:
            # Half-open: the failed end is gone, the other end must not notice.
            self.lost = True
            d.finished = True
            self.log.debug("%s side failed inside the blackhole: %r", d.label, exc)
            return
        self.log.debug("%s side failed: %r; cutting the connection", d.label, exc)
        self.abort(rst=True)

    def _maybe_close(self) -> None:
        """Both EOFs went through: close both ends politely (a blackholed connection never closes)."""
        if all(d.finished for d in self.directions) and len(self.directions) == 2 and not self.lost:
            self.abort(rst=False)

    def abort(self, rst: bool) -> None:
        """End the connection now: RST to both ends (`rst`) or a plain close."""
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        current = asyncio.current_task() if self.loop.is_running() else None
        for task in self.tasks:
            if task is not current:
                task.cancel()
        for writer in (self.client_writer, self.upstream_writer):
            if writer is None:
                continue
            if rst:
                abort_with_rst(writer)
            else:
                writer.close()
        self.link._connections.discard(self)


class Link:
    """A TCP proxy from `port` on 127.0.0.1 to an upstream, shaped by its current profile.

    Use `async with Link(upstream=(host, port), profile="wifi-flaky") as link:`
    and point clients at `link.port`; or build it from a `LinkConfig`.
    """

    def __init__(self, upstream: tuple[str, int] | None = None, profile: ProfileSpec = PERFECT, *,
                 config: LinkConfig | None = None, **options: object) -> None:
        if config is None:
            if upstream is None:
                raise TypeError("Link needs upstream=(host, port) or config=LinkConfig(...)")
            config = LinkConfig(upstream_host=upstream[0], upstream_port=upstream[1],
                                profile=resolve_profile(profile), **options)  # type: ignore[arg-type]
        elif upstream is not None or options:
            raise TypeError("pass either config or upstream/options, not both")
        self.config = config
        self.name = config.name
        self._profile = config.profile
        self._counters = _Counters()
        self._connections: set[_Connection] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._holder: socket.socket | None = None
        self._port: int | None = None
        self._schedule: list[asyncio.TimerHandle] = []
        self._accept_retry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        """The listening port (also while down: it stays reserved)."""
        if self._port is None:
            raise RuntimeError(f"link {self.name} is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self.config.listen_host, self.port

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    @property
    def upstream(self) -> tuple[str, int]:
        return self.config.upstream_host, self.config.upstream_port

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Link:
        if self._loop is not None:
            raise RuntimeError(f"link {self.name} already started")
        self._loop = asyncio.get_running_loop()
        sock = self._bind(self.config.listen_port)
        self._port = sock.getsockname()[1]
        if self._profile.down:
            self._holder = sock
        else:
            self._listen(sock)
        log.info("link %s on %s:%d -> %s:%d, profile %s", self.name, self.config.listen_host,
                 self._port, *self.upstream, describe(self._profile))
        return self

    async def stop(self) -> None:
        """Stop listening, release the port and close every connection."""
        self.cancel_schedule()
        if self._accept_retry is not None:
            self._accept_retry.cancel()
        self._stopped = True
        self._unlisten(hold=False)
        tasks = [t for conn in self._connections for t in conn.tasks] + list(self._pending)
        for conn in list(self._connections):
            conn.abort(rst=False)
        for task in list(self._pending):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the closed transports call connection_lost

    async def __aenter__(self) -> Link:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.config.listen_host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _listen(self, sock: socket.socket) -> None:
        assert self._loop is not None
        sock.listen(self.config.listen_backlog)
        self._listener = sock
        self._loop.add_reader(sock.fileno(), self._on_acceptable)

    def _unlisten(self, hold: bool) -> None:
        """Stop accepting; with `hold`, keep the port bound (not listening) so connects are refused."""
        if hold and self._holder is None and self._port is not None:
            try:
                self._holder = self._bind(self._port)
            except OSError as exc:  # still refused, but the port is free for others meanwhile
                log.warning("link %s: cannot hold port %d while down: %s", self.name, self._port, exc)
        if self._listener is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if not hold and self._holder is not None:
            self._holder.close()
            self._holder = None

    def _relisten(self) -> None:
        sock, self._holder = self._holder, None
        try:
            if sock is None:
                sock = self._bind(self.port)
            self._listen(sock)
        except OSError as exc:
            log.error("link %s: cannot listen on port %d again: %s", self.name, self.port, exc)
            if sock is not None:
                sock.close()

    def _on_acceptable(self) -> None:
        assert self._loop is not None and self._listener is not None
        for _ in range(64):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("link %s: accept failed: %s; retrying in %g s", self.name, exc, ACCEPT_RETRY_S)
                listener = self._listener
                self._loop.remove_reader(listener.fileno())
                self._accept_retry = self._loop.call_later(ACCEPT_RETRY_S, self._resume_accept, listener)
                return
            sock.setblocking(False)
            task = self._loop.create_task(self._open(sock))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _resume_accept(self, listener: socket.socket) -> None:
        self._accept_retry = None
        if self._listener is listener and self._loop is not None:
            self._loop.add_reader(listener.fileno(), self._on_acceptable)

    async def _open(self, sock: socket.socket) -> None:
        conn_id = next(self._ids)
        self._counters.connections_total += 1
        client = await asyncio.open_connection(sock=sock)
        if self._profile.down:
            abort_with_rst(client[1])
            return
        upstream = None
        if not self._profile.blackhole:
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(*self.upstream),
                                                  self.config.connect_timeout_s)
            except (OSError, asyncio.TimeoutError) as exc:
                self._counters.upstream_failures += 1
                log.warning("link %s: upstream %s:%d failed for connection #%d: %r", self.name,
                            *self.upstream, conn_id, exc)
                abort_with_rst(client[1])
                return
            if self._profile.down or self._profile.blackhole:  # changed while connecting
                abort_with_rst(upstream[1])
                if self._profile.down:
                    abort_with_rst(client[1])
                    return
                upstream = None
        conn = _Connection(self, conn_id, client, upstream)
        self._connections.add(conn)
        conn.start()
        conn.log.debug("open (profile %s)", self._profile.name)

    # -- run-time control ---------------------------------------------------------------------

    def set_profile(self, spec: ProfileSpec) -> LinkProfile:
        """Switch profile now, for new and existing connections alike; returns the new profile.

        Chunks already queued keep their delivery times. Going down cuts every connection;
        lifting a blackhole cuts the connections that lost bytes to it.
        """
        new = resolve_profile(spec)
        old, self._profile = self._profile, new
        if self._loop is None or self._stopped:  # not running: nothing else to change
            return new
        if new.down and not old.down:
            self._unlisten(hold=True)
            self._cut(list(self._connections), "down")
        elif old.down and not new.down:
            self._relisten()
        if old.blackhole and not new.blackhole:
            self._cut([c for c in self._connections if c.lost], "blackhole lifted")
        for conn in list(self._connections):
            conn.retime()
        if new != old:
            log.info("link %s: profile %s", self.name, describe(new))
        return new

    def schedule(self, steps: Iterable[ScheduleStep | tuple[float, ProfileSpec]]) -> list[ScheduleStep]:
        """Replace any pending schedule: switch to each step's profile `at_s` seconds from now."""
        if self._loop is None:
            raise RuntimeError(f"link {self.name} is not started")
        resolved = []
        for step in steps:
            if not isinstance(step, ScheduleStep):
                at_s, spec = step
                step = ScheduleStep(float(at_s), resolve_profile(spec))
            if not (math.isfinite(step.at_s) and step.at_s >= 0):
                raise ProfileError(f"schedule: at_s must be >= 0, got {step.at_s!r}")
            resolved.append(step)
        self.cancel_schedule()
        self._schedule = [self._loop.call_later(s.at_s, self.set_profile, s.profile) for s in resolved]
        log.info("link %s: scheduled %s", self.name,
                 ", ".join(f"{s.profile.name} at +{s.at_s:g} s" for s in resolved) or "nothing")
        return resolved

    def cancel_schedule(self) -> None:
        for handle in self._schedule:
            handle.cancel()
        self._schedule = []

    def reset_all(self) -> int:
        """Cut every current connection with RST; returns how many."""
        conns = list(self._connections)
        self._cut(conns, "reset_all")
        return len(conns)

    def _cut(self, conns: Sequence[_Connection], why: str) -> None:
        for conn in conns:
            conn.abort(rst=True)
        self._counters.cuts += len(conns)
        if conns:
            log.info("link %s: cut %d connection(s) (%s)", self.name, len(conns), why)

    def stats(self) -> LinkStats:
        c = self._counters
        return LinkStats(
            name=self.name, profile=self._profile.name, port=self._port or 0,
            connections_total=c.connections_total, connections_open=len(self._connections),
            bytes_upstream=c.bytes_upstream, bytes_downstream=c.bytes_downstream,
            bytes_dropped=c.bytes_dropped, resets_injected=c.resets_injected, stalls=c.stalls,
            cuts=c.cuts, upstream_failures=c.upstream_failures,
        )
