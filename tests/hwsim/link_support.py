"""Upstream servers and helpers shared by the link tests (this file holds no tests).

Everything binds 127.0.0.1 on a port the kernel picks and is stopped by its
context manager.
"""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

TEST_TIMEOUT_S = 30.0


def run(coro: Awaitable[T], timeout_s: float = TEST_TIMEOUT_S) -> T:
    """Run `coro` on a fresh event loop; a hang fails the test instead of the session."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))  # type: ignore[arg-type]


class EchoServer:
    """An asyncio echo upstream: sends back whatever it reads, closes after the client's EOF."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.accepted = 0

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> EchoServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()


class SinkServer:
    """An asyncio upstream that only reads, recording each byte's arrival."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.accepted = 0
        self.received = 0
        self.changed = asyncio.Event()
        self.last_arrival = 0.0

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.changed.set()
        try:
            while data := await reader.read(65536):
                self.received += len(data)
                self.last_arrival = time.monotonic()
                self.changed.set()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def wait_for_bytes(self, n: int) -> float:
        """Wait until `n` bytes have arrived; returns when the last of them did."""
        while self.received < n:
            self.changed.clear()
            await self.changed.wait()
        return self.last_arrival

    async def __aenter__(self) -> SinkServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> float:
    """Send `payload` through an echo, read it back whole, return the seconds it took."""
    start = time.monotonic()
    writer.write(payload)
    await writer.drain()
    echoed = await reader.readexactly(len(payload))
    assert echoed == payload
    return time.monotonic() - start


async def connection_is_cut(reader: asyncio.StreamReader, timeout_s: float = 10.0) -> bool:
    """True when the peer closed or reset the connection within `timeout_s`."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout_s):
            pass
    except TimeoutError:  # asyncio's is the builtin, an OSError: catch it first
        return False
    except OSError:
        return True
    return True


async def refused(port: int) -> bool:
    """True when a connect to 127.0.0.1:port is refused, or accepted and cut at once."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    try:
        return await connection_is_cut(reader, timeout_s=1.0)
    finally:
        writer.transport.abort()


class ThreadedEchoServer:
    """A blocking echo upstream on a background thread, for tests without an event loop."""

    class _Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                while data := self.request.recv(65536):
                    self.request.sendall(data)
            except OSError:
                pass

    def __init__(self) -> None:
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._Handler)
        self.server.daemon_threads = True
        self.address: tuple[str, int] = self.server.server_address[:2]  # type: ignore[assignment]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> ThreadedEchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def blocking_round_trip(port: int, payload: bytes, timeout_s: float = 10.0) -> float:
    """Connect, echo `payload` once through 127.0.0.1:port, close; returns the round-trip seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        start = time.monotonic()
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the echo came back")
            received += chunk
        elapsed = time.monotonic() - start
    assert received == payload
    return elapsed


def blocking_refused(port: int) -> bool:
    """True when a blocking connect to 127.0.0.1:port is refused or cut at once."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    except ConnectionRefusedError:
        return True
    with sock:
        try:
            sock.sendall(b"?")
            return sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    """Poll `predicate` until true; returns its last value (the caller asserts it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
