"""The network layer's limits and its flow control (`ferry.gateway.server` drives them).

- `ConnectionGate`: `max_connections` (capped by the open-files limit) and
  `max_connections_per_address`; a connection beyond is accepted and closed at once.
- `PublishBucket`: `max_publish_rate` as a token bucket of one second's worth; a client over it
  is not dropped, its socket is not read until the bucket has refilled.
- `FlowControl`: read less when outputs back up. A client whose packet made the core deliver to a
  connection whose output is over `max_output_buffer_bytes` (`Broker.backed_up`) is not read
  until that output has drained to a quarter of it, or has been aborted: a subscriber that stays
  backed up for `max_output_blocked_s` is, so no publisher waits on it longer.
- `set_tcp_keepalive`: `tcp_keepalive_s` on a client socket.

Every hit is counted in `BrokerStats.limit_hits` and logged (throttled) by the core's `LimitHits`.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections.abc import Callable

from ferry.gateway.broker.config import BrokerConfig
from ferry.gateway.broker.limits import LimitHits
from ferry.gateway.broker.session import Connection
from ferry.gateway.broker.stats import Limit

log = logging.getLogger("ferry.gateway.limits")

FD_RESERVE = 256
"""File descriptors of the open-files limit kept for everything but client sockets: journal
segments, snapshots, the spool, librdkafka's sockets, the metrics endpoint."""
KEEPALIVE_INTERVAL_S = 30
"""Seconds between TCP keepalive probes once a connection has been idle for `tcp_keepalive_s`."""
KEEPALIVE_PROBES = 4
"""Unanswered probes after which the kernel drops the connection."""
RATE_RESUME_S = 0.1
"""A rate-limited client is read again once this much of a second's worth of tokens is back
(at least one): ten pauses a second at most, not one per message."""


def connection_cap(config: BrokerConfig) -> tuple[int, str | None]:
    """How many client connections may be open at once (0: no limit): `max_connections`, lowered
    so that FD_RESERVE descriptors of the open-files limit stay free for the store (running out
    of descriptors there would stop the gateway). The second value explains a lowered cap."""
    wanted = config.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted, None
    room = max(1, soft - FD_RESERVE)
    if wanted and wanted <= room:
        return wanted, None
    return room, (f"the open-files limit ({soft}) leaves room for {room} client connections"
                  f"{f', fewer than broker.max_connections = {wanted}' if wanted else ''}; "
                  "raise it (LimitNOFILE= in the systemd unit, ulimit -n) to serve more")


class ConnectionGate:
    """Counts open client connections, in total and per IP address, and admits or refuses new ones."""

    def __init__(self, config: BrokerConfig, hits: LimitHits) -> None:
        self.max_total, why = connection_cap(config)
        if why is not None:
            log.warning("%s", why)
        self.max_per_address = config.max_connections_per_address
        self.hits = hits
        self.open = 0
        self.per_address: dict[str, int] = {}

    def admit(self, address: str, now: float) -> bool:
        """Count a new connection from `address` in, or refuse it (counted and logged)."""
        if self.max_total and self.open >= self.max_total:
            self.hits.hit(Limit.MAX_CONNECTIONS, now, "closed a new connection from %s: %d are open "
                          "(broker.max_connections, or the open-files limit)", address, self.open)
            return False
        count = self.per_address.get(address, 0)
        if self.max_per_address and count >= self.max_per_address:
            self.hits.hit(Limit.MAX_CONNECTIONS_PER_ADDRESS, now, "closed a new connection from %s: %d are "
                          "open from that address (broker.max_connections_per_address)", address, count)
            return False
        self.open += 1
        self.per_address[address] = count + 1
        return True

    def release(self, address: str) -> None:
        self.open -= 1
        count = self.per_address.get(address, 0) - 1
        if count > 0:
            self.per_address[address] = count
        else:
            self.per_address.pop(address, None)


def set_tcp_keepalive(transport: asyncio.BaseTransport, idle_s: int) -> None:
    """Turn on TCP keepalive (`tcp_keepalive_s`): probes after `idle_s` idle seconds."""
    if not idle_s:
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, min(KEEPALIVE_INTERVAL_S, idle_s))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except OSError as exc:
        log.debug("could not set TCP keepalive: %s", exc)


class PublishBucket:
    """`max_publish_rate` for one client: tokens refill at `rate` a second up to `rate` (a burst
    of one second's worth); a PUBLISH takes one."""

    __slots__ = ("rate", "tokens", "at")

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.at = now

    def refill(self, now: float) -> float:
        """The tokens available now (the caller stores what it leaves in `tokens`)."""
        tokens = self.tokens + (now - self.at) * self.rate
        self.at = now
        if tokens > self.rate:
            tokens = float(self.rate)
        return tokens

    def wait_s(self) -> float:
        """How long until RATE_RESUME_S worth of tokens (at least one) are back."""
        target = max(1.0, self.rate * RATE_RESUME_S)
        return max(0.0, (target - self.tokens) / self.rate)


class Reader:
    """What flow control needs of a client connection's protocol (`server.MqttProtocol`)."""

    conn: Connection
    transport: asyncio.Transport

    def release_flow(self) -> None: ...


class FlowControl:
    """Who waits for which backed-up output, and since when each output is backed up.

    Cheap on the hot path: the core only sets `Broker.backed_up` on a QoS 0 delivery to an output
    that is over its bound; the network layer checks that attribute once per packet.
    """

    def __init__(self, config: BrokerConfig, hits: LimitHits, call_soon: Callable) -> None:
        self.max_blocked_s = config.max_output_blocked_s
        self.abort_bytes = config.max_output_buffer_abort_bytes
        self.hits = hits
        self._call_soon = call_soon
        self.waiters: dict[Connection, list[Reader]] = {}
        """Output connection → clients not read until it drains."""
        self.blocked: dict[Connection, tuple[float, Reader]] = {}
        """Connections whose transport stopped taking writes (over the high-water mark), since when."""

    def hold(self, reader: Reader, output: Connection) -> None:
        """`reader` is not read until `output` drains (or goes)."""
        self.hits.stats.publishers_held += 1
        waiting = self.waiters.get(output)
        if waiting is None:
            self.waiters[output] = [reader]
        else:
            waiting.append(reader)

    def output_paused(self, reader: Reader, now: float) -> None:
        self.blocked[reader.conn] = (now, reader)

    def output_resumed(self, conn: Connection) -> None:
        self.blocked.pop(conn, None)
        self._release(conn)

    def after_flush(self) -> None:
        """After the network layer wrote every output: clients held on an output that the kernel
        took after all (its transport is not over the high-water mark) are read again."""
        for output in [c for c in self.waiters if not c.output_blocked]:
            self._release(output)

    def forget(self, conn: Connection) -> None:
        """`conn` is gone: whoever waited for its output is read again."""
        self.blocked.pop(conn, None)
        self._release(conn)

    def _release(self, output: Connection) -> None:
        waiting = self.waiters.pop(output, None)
        if waiting:
            self._call_soon(_release_all, waiting)

    def stalled(self, now: float) -> list[tuple[Connection, Reader, float]]:
        """Outputs backed up for `max_output_blocked_s` or longer: (connection, reader, seconds)."""
        if not self.max_blocked_s:
            return []
        return [(conn, reader, now - since) for conn, (since, reader) in self.blocked.items()
                if now - since >= self.max_blocked_s]


def _release_all(readers: list[Reader]) -> None:
    for reader in readers:
        if not reader.conn.closed:
            reader.release_flow()
