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
from ferry.gateway.mqtt import Connect, Decoder, ProtocolError, ReasonCode
from ferry.gateway.store import Journal
from ferry.gateway.tls import certificate_name

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 1.0
CLOSE_LINGER_S = 5.0
"""How long a connection the gateway closes may take to read its last bytes (a DISCONNECT or CONNACK
naming the reason) before the socket is aborted."""


AUTH_THREADS = 2
"""Threads that check passwords (scrypt), so a reconnecting fleet does not stall the event loop."""


class MqttProtocol(asyncio.Protocol):
    """One client connection: bytes in → decoder → core.

    With an authenticator, the first CONNECT's credentials are checked before the core sees it
    (off the event loop when that means a password hash); packets the client sent after its
    CONNECT wait, in order, and reading pauses until then.
    """

    __slots__ = ("server", "conn", "decoder", "transport", "cert_username", "waiting", "_cert_as_username")

    def __init__(self, server: "MqttServer", cert_as_username: bool = False) -> None:
        self.server = server
        self.conn: Connection | None = None
        self.decoder = Decoder(server_side=True, max_packet_size=server.broker.config.max_packet_size_bytes)
        self.transport: asyncio.Transport | None = None
        self.cert_username: str | None = None
        """The verified client certificate's common name, when the listener takes it as user name."""
        self.waiting: list[tuple[list[object], ProtocolError | None]] | None = None
        """Packets (and the decoder's error) held while the CONNECT is being authenticated."""
        self._cert_as_username = cert_as_username

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        high_water = self.server.broker.config.max_output_buffer_bytes
        transport.set_write_buffer_limits(high_water, high_water // 4)
        peer = transport.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.conn = self.server.broker.open_connection(peer_text, self.server.now())
        self.server.transports[self.conn.conn_id] = transport
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
        broker = self.server.broker
        conn = self.conn
        handle = broker.handle_packet
        for i, packet in enumerate(packets):
            if type(packet) is Connect and conn.identity is None and conn.auth_refusal is None \
                    and self.server.authenticator is not None and self._authenticate(packet):
                self.waiting = [(packets[i:], error)]
                return
            handle(conn, packet, now)
        if error is not None:
            broker.protocol_error(conn, error, self.decoder.protocol_version)
        self.server.schedule_flush()

    def _authenticate(self, packet: Connect) -> bool:
        """Authenticate the CONNECT; True when that goes on in a thread (the caller holds packets)."""
        authenticator = self.server.authenticator
        if not authenticator.needs_hash(packet.username, self.cert_username):
            self._set_identity(authenticator.authenticate(packet.username, packet.password, self.cert_username))
            return False
        self.transport.pause_reading()
        future = self.server.auth_executor.submit(authenticator.authenticate, packet.username, packet.password,
                                                  self.cert_username)
        future.add_done_callback(lambda done: self.server.loop.call_soon_threadsafe(self._authenticated, done))
        return True

    def _authenticated(self, future: Future) -> None:
        waiting, self.waiting = self.waiting, None
        if self.conn.closed:
            return
        self._set_identity(future.result())
        self.transport.resume_reading()
        now = self.server.now()
        for packets, error in waiting:
            self._handle(packets, error, now)
            if self.waiting is not None:  # cannot happen: the CONNECT has its identity now
                break

    def _set_identity(self, outcome: Identity | ReasonCode) -> None:
        if isinstance(outcome, Identity):
            self.conn.identity = outcome
        else:
            self.conn.auth_refusal = outcome

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        server = self.server
        server.transports.pop(conn.conn_id, None)
        server.forget_closing(conn.conn_id)
        if not conn.closed:
            if conn.close_reason is None and conn.session is not None:
                log.info("connection lost: %s (%s): %s", conn.client_id, conn.peer, exc or "closed by peer")
            server.broker.connection_lost(conn, server.now())
            server.schedule_flush()

    def eof_received(self) -> bool:
        return False  # the peer is done sending: close (after our output, if the gateway is closing)

    def pause_writing(self) -> None:
        self.conn.output_blocked = True

    def resume_writing(self) -> None:
        self.conn.output_blocked = False


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
        server = await self.loop.create_server(lambda: MqttProtocol(self, cert_as_username), host, port,
                                               reuse_address=True, backlog=4096, ssl=tls)
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
        for conn in self.broker.take_ready():
            transport = transports.get(conn.conn_id)
            if transport is None:
                conn.out.clear()
                continue
            out = conn.out
            if out:
                self.bytes_sent += len(out)
                conn.out = bytearray()  # the transport may keep `out`: hand it over, no copy
                transport.write(out)
            if conn.close_reason is not None and conn.conn_id not in self._closing:
                self._close_gracefully(conn.conn_id, transport)

    def _close_gracefully(self, conn_id: int, transport: asyncio.Transport) -> None:
        """Send what is queued, then FIN, and keep reading until the peer closes (or CLOSE_LINGER_S).

        Closing a socket with unread input makes the kernel send a reset that discards output the
        peer has not read yet, such as the DISCONNECT naming why it was closed; a half-close does not.
        """
        self._closing.add(conn_id)
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
