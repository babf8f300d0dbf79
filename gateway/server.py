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
import time
from collections.abc import Callable

from ferry.gateway.broker.core import Broker
from ferry.gateway.broker.session import Connection
from ferry.gateway.mqtt import Decoder, ProtocolError
from ferry.gateway.store import Journal

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 1.0
CLOSE_LINGER_S = 5.0
"""How long a connection the gateway closes may take to read its last bytes (a DISCONNECT or CONNACK
naming the reason) before the socket is aborted."""


class MqttProtocol(asyncio.Protocol):
    """One client connection: bytes in → decoder → core."""

    __slots__ = ("server", "conn", "decoder", "transport")

    def __init__(self, server: "MqttServer") -> None:
        self.server = server
        self.conn: Connection | None = None
        self.decoder = Decoder(server_side=True, max_packet_size=server.broker.config.max_packet_size_bytes)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        high_water = self.server.broker.config.max_output_buffer_bytes
        transport.set_write_buffer_limits(high_water, high_water // 4)
        peer = transport.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.conn = self.server.broker.open_connection(peer_text, self.server.now())
        self.server.transports[self.conn.conn_id] = transport

    def data_received(self, data: bytes) -> None:
        server = self.server
        broker = server.broker
        conn = self.conn
        server.bytes_received += len(data)
        if conn.close_reason is not None:
            return  # closing: read only so that unread bytes do not turn the close into a reset
        now = server.now()
        try:
            packets = self.decoder.feed(data)
        except ProtocolError as error:
            for packet in error.packets:
                broker.handle_packet(conn, packet, now)
            broker.protocol_error(conn, error, self.decoder.protocol_version)
            server.schedule_flush()
            return
        handle = broker.handle_packet
        for packet in packets:
            handle(conn, packet, now)
        server.schedule_flush()

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
                 housekeeping: Callable[[], None] | None = None) -> None:
        self.broker = broker
        self.journal = journal
        self._housekeeping = housekeeping
        self._tick_callbacks: list[Callable[[float], None]] = []
        self.transports: dict[int, asyncio.Transport] = {}
        self._closing: set[int] = set()  # connection ids half-closed by the gateway
        self.bytes_received = 0
        self.bytes_sent = 0
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.Task | None = None
        self._monotonic = time.monotonic

    def now(self) -> float:
        return self._monotonic()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await self._loop.create_server(lambda: MqttProtocol(self), host, port,
                                                      reuse_address=True, backlog=4096)
        self._ticker = self._loop.create_task(self._tick_forever())
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def forget_closing(self, conn_id: int) -> None:
        self._closing.discard(conn_id)

    def add_tick(self, callback: Callable[[float], None]) -> None:
        """Call `callback(now)` once per tick, after the broker's own timers."""
        self._tick_callbacks.append(callback)

    def on_commit(self, batch: int) -> None:
        """Called by the journal's writer thread."""
        self._loop.call_soon_threadsafe(self._committed, batch)

    def _committed(self, batch: int) -> None:
        self.broker.commit_done(batch)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

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
            self._loop.call_later(CLOSE_LINGER_S, self._abort, conn_id, transport)
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
        if self._server is not None:
            self._server.close()
        for transport in list(self.transports.values()):
            transport.close()
        await asyncio.sleep(0)
        if self.journal.failed is None:
            self.journal.flush()
            await self._loop.run_in_executor(None, self.journal.close)
        if self._server is not None:
            await self._server.wait_closed()
