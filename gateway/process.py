"""Run `ferry gateway` as a child process: for tests, benchmarks and the demo.

A real process, so tests see exactly what users run, and a SIGKILL is a real
crash: nothing in the test process can flush the gateway's store for it.
"""

from __future__ import annotations

import os
import socket
import sys
import tomllib
from pathlib import Path

from ferry.addresses import host_port
from ferry.process import ManagedProcess, free_port

READY_TIMEOUT_S = 30.0


def accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class GatewayProcess:
    """One `ferry gateway` on 127.0.0.1 with its own data dir; restartable on the same port and data."""

    def __init__(self, data_dir: Path, *, config_text: str | None = None, port: int | None = None,
                 metrics_port: int | None = None, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, allow_anonymous: bool = True) -> None:
        self.host = host
        self.env = None if env is None else {**os.environ, **env}
        self.port = port or free_port(host)
        self.metrics_port = metrics_port
        self.data_dir = data_dir
        self.config_path: Path | None = None
        self.listeners: list[tuple[str, int]] = []
        """The `[[listener]]` addresses in `config_text`: ready means they accept too."""
        if config_text is not None:
            self.listeners = [host_port(table["listen"]) for table in tomllib.loads(config_text).get("listener", [])]
            self.config_path = data_dir / "ferry.toml"
            data_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(config_text)
        self.allow_anonymous = allow_anonymous
        """Pass `--allow-anonymous` (tests and benchmarks whose clients have no password)."""
        self.starts = 0
        self.process: ManagedProcess | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "ferry", "gateway", "--listen", f"{self.host}:{self.port}",
                "--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        if self.metrics_port is not None:
            argv += ["--metrics", f"{self.host}:{self.metrics_port}"]
        if self.allow_anonymous:
            argv.append("--allow-anonymous")
        return argv

    @property
    def log_path(self) -> Path:
        return self.data_dir / "gateway.log"

    def start(self) -> "GatewayProcess":
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"gateway on port {self.port} is already running")
        self.starts += 1
        self.process = ManagedProcess(f"gateway#{self.starts}", self.argv(), self.log_path, env=self.env)
        self.process.start()
        try:
            self.process.wait_ready(self._ready, READY_TIMEOUT_S)
        except Exception:
            self.process.stop()
            raise
        return self

    def _ready(self) -> bool:
        """Every MQTT listener accepts, and so does the metrics endpoint when there is one."""
        return accepts_connections(self.host, self.port) and (
            self.metrics_port is None or accepts_connections(self.host, self.metrics_port)) and all(
            accepts_connections(host, port) for host, port in self.listeners)

    def kill(self) -> None:
        """SIGKILL: a crash or power cut, as far as the store can tell."""
        if self.process is not None:
            self.process.kill()

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        return None if self.process is None else self.process.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
