"""The asyncio network layer: pumps bytes between sockets, the codec, the broker core and the journal.

It owns no MQTT logic. Per loop turn it (1) feeds received bytes to each
connection's decoder and the packets to the core, (2) hands the journal's
pending records to its writer thread (group commit), and (3) writes each
connection's ready output with one `transport.write`. Commits come back from
the writer thread via `call_soon_threadsafe` and release held acknowledgements.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ferry.gateway.auth.authenticator import Authenticator
from ferry.gateway.auth.identity import Identity
from ferry.gateway.broker.core import Broker
from ferry.gateway.broker.session import Connection
from ferry.gateway.broker.stats import Limit
from ferry.gateway.limits import ConnectionGate, FlowControl, PublishBucket, set_tcp_keepalive
from ferry.gateway.mqtt import Connect, Decoder, ProtocolError, Publish, ReasonCode
from ferry.gateway.store import Journal
from ferry.gateway.tls import certificate_name

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 1.0
CLOSE_LINGER_S = 5.0
"""How long a connection the gateway closes may take to read its last bytes (a DISCONNECT or CONNACK
naming the reason) before the socket is aborted."""


AUTH_THREADS = 2
"""Threads that check passwords (scrypt), so a reconnecting fleet does not stall the event loop."""

# Why a connection is not read (MqttProtocol.paused); the first three also hold the packets
# already decoded (MqttProtocol.waiting) until they are handled, in order.
HOLD_AUTH = 1
"""Its CONNECT's password is being checked in a thread."""
HOLD_FLOW = 2
"""A connection its last packet delivered to has its output backed up (flow control)."""
HOLD_RATE = 4
"""It published faster than `max_publish_rate`: until its bucket has refilled."""
PAUSE_OUTPUT = 8
"""Its own output is backed up: what it sends would only add to it (PUBACKs it does not read)."""
_HOLDS = HOLD_AUTH | HOLD_FLOW | HOLD_RATE


class MqttProtocol(asyncio.Protocol):
    """One client connection: bytes in → decoder → core.

    With an authenticator, the first CONNECT's credentials are checked before the core sees it
    (off the event loop when that means a password hash); packets the client sent after its
    CONNECT wait, in order, and reading pauses until then. Flow control and the publish rate
    limit hold packets the same way (`paused`).
    """

    __slots__ = ("server", "conn", "decoder", "transport", "cert_username", "waiting", "_cert_as_username",
                 "paused", "reading_paused", "bucket", "address")

    def __init__(self, server: "MqttServer", cert_as_username: bool = False) -> None:
        self.server = server
        self.conn: Connection | None = None
        """None for a connection refused by `max_connections(_per_address)`."""
        self.decoder = Decoder(server_side=True, max_packet_size=server.broker.config.max_packet_size_bytes)
        self.transport: asyncio.Transport | None = None
        self.cert_username: str | None = None
        """The verified client certificate's common name, when the listener takes it as user name."""
        self.waiting: list[tuple[list[object], ProtocolError | None]] | None = None
        """Packets (and the decoder's error) held while a HOLD_* reason lasts."""
        self._cert_as_username = cert_as_username
        self.paused = 0
        """HOLD_* and PAUSE_* bits: why the connection is not read; 0 when it is."""
        self.reading_paused = False
        self.bucket: PublishBucket | None = None
        """`max_publish_rate`; None when unlimited."""
        self.address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        server = self.server
        now = server.now()
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        if not server.gate.admit(address, now):
            transport.close()  # counted and logged by the gate
            return
        self.address = address
        config = server.broker.config
        high_water = config.max_output_buffer_bytes
        transport.set_write_buffer_limits(high_water, high_water // 4)
        set_tcp_keepalive(transport, config.tcp_keepalive_s)
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.conn = server.broker.open_connection(peer_text, now)
        server.transports[self.conn.conn_id] = transport
        server.connecting[self] = now
        if config.max_publish_rate:
            self.bucket = PublishBucket(config.max_publish_rate, now)
        if self._cert_as_username:
            self.cert_username = certificate_name(transport.get_extra_info("peercert"))

    def data_received(self, data: bytes) -> None:
        server = self.server
        conn = self.conn
        server.bytes_received += len(data)
        if conn.close_reason is not None:
            return  # closing: read only so that unread bytes do not turn the close into a reset
        try:
            packets, error = self.decoder.feed(data), None
        except ProtocolError as exc:
            packets, error = exc.packets, exc
        if self.waiting is not None:
            self.waiting.append((packets, error))
            return
        self._handle(packets, error, server.now())

    def _handle(self, packets: list[object], error: ProtocolError | None, now: float) -> None:
        server = self.server
        broker = server.broker
        conn = self.conn
        handle = broker.handle_packet
        bucket = self.bucket
        tokens = bucket.refill(now) if bucket is not None else 0.0
        broker.backed_up = None  # what an earlier caller (a will, $SYS, the bridge) left
        for i, packet in enumerate(packets):
            kind = type(packet)
            if kind is Publish:
                if bucket is not None:
                    if tokens < 1.0:
                        bucket.tokens = tokens
                        self._over_rate(now)
                        self._hold(HOLD_RATE, packets[i:], error)
                        return
                    tokens -= 1.0
            elif kind is Connect and conn.identity is None and conn.auth_refusal is None \
                    and server.authenticator is not None and self._authenticate(packet):
                self._hold(HOLD_AUTH, packets[i:], error)
                return
            handle(conn, packet, now)
            if broker.backed_up is not None:
                # An output this packet delivered to is over max_output_buffer_bytes: read no more
                # from this client until it drains (flow control).
                output, broker.backed_up = broker.backed_up, None
                if bucket is not None:
                    bucket.tokens = tokens
                server.flow.hold(self, output)
                self._hold(HOLD_FLOW, packets[i + 1:], error)
                return
        if bucket is not None:
            bucket.tokens = tokens
        if error is not None:
            broker.protocol_error(conn, error, self.decoder.protocol_version)
        server.schedule_flush()

    # ------------------------------------------------------------------ not reading

    def _hold(self, reason: int, packets: list[object], error: ProtocolError | None) -> None:
        """Stop reading for `reason` and keep `packets` (not handled yet) until it is over."""
        self.waiting = [(packets, error)]
        self._pause(reason)
        self.server.schedule_flush()

    def _pause(self, reason: int) -> None:
        self.paused |= reason
        if not self.reading_paused and self.conn.close_reason is None and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()

    def _unpause(self, reason: int) -> None:
        """`reason` is over: handle the packets held for it (unless another holds them), then read
        again if nothing else keeps the connection paused."""
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if self.waiting is not None and not self.paused & _HOLDS:
            self._replay()
        if not self.paused and self.reading_paused and not self.transport.is_closing():
            self.reading_paused = False
            self.transport.resume_reading()

    def _replay(self) -> None:
        waiting, self.waiting = self.waiting, None
        if self.conn.closed:
            return
        now = self.server.now()
        for index, (packets, error) in enumerate(waiting):
            self._handle(packets, error, now)
            if self.waiting is not None:  # held again: keep the rest behind what it held
                self.waiting.extend(waiting[index + 1:])
                return

    def resume_for_close(self) -> None:
        """The gateway is closing this connection: read (and discard) what it sends until it goes."""
        self.paused = 0
        self.waiting = None
        self.reading_paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def release_flow(self) -> None:
        """The output this client waited for drained (or went): read it again (FlowControl)."""
        self._unpause(HOLD_FLOW)

    def _over_rate(self, now: float) -> None:
        server = self.server
        server.broker.limits.hit(
            Limit.PUBLISH_RATE, now, "%s (%s) publishes faster than broker.max_publish_rate = %d/s: "
            "not read for a while (nothing is dropped)", self.conn.client_id, self.conn.peer, self.bucket.rate)
        server.loop.call_later(self.bucket.wait_s(), self._rate_refilled)

    def _rate_refilled(self) -> None:
        if not self.conn.closed:
            self._unpause(HOLD_RATE)

    # ------------------------------------------------------------------ authentication

    def _authenticate(self, packet: Connect) -> bool:
        """Authenticate the CONNECT; True when that goes on in a thread (the caller holds packets)."""
        authenticator = self.server.authenticator
        if not authenticator.needs_hash(packet.username, self.cert_username):
            self._set_identity(authenticator.authenticate(packet.username, packet.password, self.cert_username))
            return False
        future = self.server.auth_executor.submit(authenticator.authenticate, packet.username, packet.password,
                                                  self.cert_username)
        future.add_done_callback(lambda done: self.server.loop.call_soon_threadsafe(self._authenticated, done))
        return True

    def _authenticated(self, future: Future) -> None:
        if self.conn.closed:
            self.waiting = None
            return
        self._set_identity(future.result())
        self._unpause(HOLD_AUTH)

    def _set_identity(self, outcome: Identity | ReasonCode) -> None:
        if isinstance(outcome, Identity):
            self.conn.identity = outcome
        else:
            self.conn.auth_refusal = outcome

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        if conn is None:
            return  # refused by max_connections(_per_address)
        server = self.server
        server.transports.pop(conn.conn_id, None)
        server.forget_closing(conn.conn_id)
        server.gate.release(self.address)
        server.connecting.pop(self, None)
        server.flow.forget(conn)
        if isinstance(exc, TimeoutError):
            server.broker.limits.hit(Limit.DEAD_PEER, server.now(), "%s (%s): the kernel timed the connection "
                                     "out (TCP keepalive or retransmissions)", conn.client_id, conn.peer)
        if not conn.closed:
            if conn.close_reason is None and conn.session is not None:
                log.info("connection lost: %s (%s): %s", conn.client_id, conn.peer, exc or "closed by peer")
            server.broker.connection_lost(conn, server.now())
            server.schedule_flush()

    def eof_received(self) -> bool:
        return False  # the peer is done sending: close (after our output, if the gateway is closing)

    def pause_writing(self) -> None:
        """The transport holds more than `max_output_buffer_bytes` for this client."""
        conn = self.conn
        if conn is None:
            return
        conn.output_blocked = True
        self.server.flow.output_paused(self, self.server.now())
        self._pause(PAUSE_OUTPUT)

    def resume_writing(self) -> None:
        """Drained to a quarter of `max_output_buffer_bytes`: publishers held on it are read again."""
        conn = self.conn
        if conn is None:
            return
        conn.output_blocked = False
        self.server.flow.output_resumed(conn)
        self._unpause(PAUSE_OUTPUT)


class MqttServer:
    """Listens, drives the broker core and its journal, and stops cleanly."""

    def __init__(self, broker: Broker, journal: Journal,
                 housekeeping: Callable[[], None] | None = None,
                 authenticator: Authenticator | None = None) -> None:
        self.broker = broker
        self.journal = journal
        self.authenticator = authenticator
        """Checks each connection's CONNECT credentials; None: clients are not authenticated."""
        self.auth_executor = ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="ferry-auth")
        self._housekeeping = housekeeping
        self._tick_callbacks: list[Callable[[float], None]] = []
        self.transports: dict[int, asyncio.Transport] = {}
        self._closing: set[int] = set()  # connection ids half-closed by the gateway
        self.bytes_received = 0
        self.bytes_sent = 0
        self.loop = asyncio.get_running_loop()
        self.gate = ConnectionGate(broker.config, broker.limits)
        """`max_connections` and `max_connections_per_address`."""
        self.connecting: dict[MqttProtocol, float] = {}
        """Connections that have not sent their CONNECT yet → when they were accepted."""
        self.flow = FlowControl(broker.config, broker.limits, self.loop.call_soon)
        self._flush_scheduled = False
        self._servers: list[asyncio.base_events.Server] = []
        self._ticker: asyncio.Task | None = None
        self._monotonic = time.monotonic

    def now(self) -> float:
        return self._monotonic()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None,
                    cert_as_username: bool = False) -> tuple[str, int]:
        """Open one listener (call once per listener); `cert_as_username`: a verified client
        certificate's common name is the user name."""
        # A TLS handshake comes before connection_made: connect_timeout_s bounds it too.
        handshake_timeout = self.broker.config.connect_timeout_s or None if tls is not None else None
        server = await self.loop.create_server(lambda: MqttProtocol(self, cert_as_username), host, port,
                                               reuse_address=True, backlog=4096, ssl=tls,
                                               ssl_handshake_timeout=handshake_timeout)
        self._servers.append(server)
        if self._ticker is None:
            self._ticker = self.loop.create_task(self._tick_forever())
        sockname = server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def forget_closing(self, conn_id: int) -> None:
        self._closing.discard(conn_id)

    def add_tick(self, callback: Callable[[float], None]) -> None:
        """Call `callback(now)` once per tick, after the broker's own timers."""
        self._tick_callbacks.append(callback)

    def on_commit(self, batch: int) -> None:
        """Called by the journal's writer thread."""
        self.loop.call_soon_threadsafe(self._committed, batch)

    def _committed(self, batch: int) -> None:
        self.broker.commit_done(batch)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.journal.writable:
            self.journal.flush()
        transports = self.transports
        abort_bytes = self.flow.abort_bytes
        for conn in self.broker.take_ready():
            transport = transports.get(conn.conn_id)
            if transport is None:
                conn.out.clear()
                continue
            out = conn.out
            if out and conn.conn_id in self._closing:
                conn.out = bytearray()  # delivered after the gateway's FIN: nothing more can be sent
            elif out:
                self.bytes_sent += len(out)
                conn.out = bytearray()  # the transport may keep `out`: hand it over, no copy
                transport.write(out)
                if conn.output_blocked and abort_bytes and transport.get_write_buffer_size() > abort_bytes:
                    self._abort_output(conn, transport, Limit.OUTPUT_BUFFER,
                                       f"{transport.get_write_buffer_size()} bytes wait for it "
                                       "(broker.max_output_buffer_abort_bytes)")
                    continue
            if conn.close_reason is not None and conn.conn_id not in self._closing and not conn.held:
                # Not before what waits for a commit (held acknowledgements, a DISCONNECT behind them)
                # is written: the core adds nothing new once it closed the connection.
                self._close_gracefully(conn.conn_id, transport)
        if self.flow.waiters:
            self.flow.after_flush()

    def _abort_output(self, conn: Connection, transport: asyncio.Transport, limit: Limit, why: str) -> None:
        """Abort a connection that does not read what the gateway holds for it (counted)."""
        self.broker.limits.hit(limit, self.now(), "aborted %s (%s): %s", conn.client_id or "-", conn.peer, why)
        self.transports.pop(conn.conn_id, None)
        transport.abort()  # connection_lost follows: the session is detached, held publishers resume

    def _expire_connects(self, now: float) -> None:
        """Close connections that have not sent their CONNECT within `connect_timeout_s` (slow-loris);
        a CONNECT that arrived (its password being checked, or its CONNACK waiting) is not waited on."""
        timeout = self.broker.config.connect_timeout_s
        for protocol, accepted_at in list(self.connecting.items()):
            conn = protocol.conn
            if conn.session is not None or conn.close_reason is not None or conn.closed \
                    or protocol.paused & HOLD_AUTH:
                del self.connecting[protocol]
            elif timeout and now - accepted_at >= timeout:
                del self.connecting[protocol]
                self.broker.limits.hit(Limit.CONNECT_TIMEOUT, now, "closed %s: no CONNECT within %d s "
                                       "(broker.connect_timeout_s)", conn.peer, timeout)
                conn.close_reason = ReasonCode.MAXIMUM_CONNECT_TIME  # read no more; no CONNACK
                self._close_gracefully(conn.conn_id, protocol.transport)

    def _abort_stalled(self, now: float) -> None:
        """Abort connections backed up for `max_output_blocked_s`: they stopped reading, and publishers
        wait for them."""
        for conn, reader, seconds in self.flow.stalled(now):
            self.flow.blocked.pop(conn, None)
            transport = self.transports.get(conn.conn_id)
            if transport is None:
                continue
            waiting = len(self.flow.waiters.get(conn, ()))
            self._abort_output(conn, transport, Limit.OUTPUT_BLOCKED,
                               f"its output stayed over broker.max_output_buffer_bytes for {seconds:.0f} s "
                               f"(broker.max_output_blocked_s) with {waiting} client(s) waiting for it")

    def _close_gracefully(self, conn_id: int, transport: asyncio.Transport) -> None:
        """Send what is queued, then FIN, and keep reading until the peer closes (or CLOSE_LINGER_S).

        Closing a socket with unread input makes the kernel send a reset that discards output the
        peer has not read yet, such as the DISCONNECT naming why it was closed; a half-close does not.
        """
        self._closing.add(conn_id)
        protocol = transport.get_protocol() if hasattr(transport, "get_protocol") else None
        if isinstance(protocol, MqttProtocol) and protocol.reading_paused:
            protocol.resume_for_close()  # held back by flow control or the rate limit: drain its input now
        can_write_eof = getattr(transport, "can_write_eof", None)  # the bridge's in-process link has none
        if can_write_eof is not None and can_write_eof():
            transport.write_eof()
            self.loop.call_later(CLOSE_LINGER_S, self._abort, conn_id, transport)
        else:
            transport.close()

    def _abort(self, conn_id: int, transport: asyncio.Transport) -> None:
        self._closing.discard(conn_id)
        if not transport.is_closing():
            transport.abort()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            now = self.now()
            self.broker.tick(now)
            if self.connecting:
                self._expire_connects(now)
            if self.flow.blocked:
                self._abort_stalled(now)
            for callback in self._tick_callbacks:
                callback(now)
            if self._housekeeping is not None:
                self._housekeeping()
            self.schedule_flush()

    async def stop(self) -> None:
        """Stop accepting, close every connection, and wait for the journal's last commit."""
        if self._ticker is not None:
            self._ticker.cancel()
        for server in self._servers:
            server.close()
        for transport in list(self.transports.values()):
            transport.close()
        await asyncio.sleep(0)
        if self.journal.failed is None:
            self.journal.flush()
            await self.loop.run_in_executor(None, self.journal.close)
        for server in self._servers:
            await server.wait_closed()
        self.auth_executor.shutdown(wait=False, cancel_futures=True)
