"""The worker's configuration: an optional TOML file's `[server]` table, then environment overrides,
then `ferry worker`'s flags (`--web-host`, `--web-port`, `--advertised-url`, `--api-token-file`).

Nothing here names a broker: `broker` has no default, so a worker started
without `FERRY_SERVER_BROKER` (or `broker = ...` in the file) stops with a
message saying so. Every other field has a default suitable for one worker.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "FERRY_SERVER_"
ENV_CONFIG_FILE = "FERRY_SERVER_CONFIG"
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/-]+=*")
"""What a bearer token may be made of (RFC 6750's b64token): it travels in an HTTP header as is."""


class ConfigError(ValueError):
    """A config problem, naming the key (`server.<field>` or the environment variable)."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the Faust worker needs; see docs/server.md for each field."""

    broker: str
    """Kafka bootstrap servers, `kafka://host:port[;host:port]` or bare `host:port[,host:port]`."""
    app_id: str = "ferry-server"
    """Faust app id: the consumer group and the prefix of the changelog topics."""
    telemetry_topic: str = "ferry.telemetry"
    status_topic: str = "ferry.status"
    series_topic: str = "ferry.series.1m"
    """Where closed 1-minute windows are published (docs/contract.md)."""
    series_5m_topic: str = "ferry.series.5m"
    """Where closed 5-minute (hopping) windows are published."""
    alerts_topic: str = "ferry.alerts"
    """Where anomaly and device-health alerts are published."""
    health_topic: str = "ferry.health"
    """Where a device's health is published each time it changes."""
    partitions: int = 8
    """Partitions of the telemetry/status topics; the tables' changelogs get as many."""
    web_host: str = "127.0.0.1"
    """The address the HTTP API and dashboard bind to; only this machine by default."""
    web_port: int = 6066
    advertised_url: str = ""
    """The URL the other workers of the app reach this one at (Faust's `canonical_url`), e.g.
    `http://10.0.0.5:6066`; empty: `http://web_host:web_port`, which a wildcard `web_host` (0.0.0.0, ::)
    cannot give, so binding one needs this set."""
    api_token: str = field(default="", repr=False)
    """When set, every request but the dashboard's page and files needs `Authorization: Bearer <it>`
    (the API, `/metrics`); empty: no token. Never given on the command line (see `api_token_file`)."""
    api_token_file: str = ""
    """A file holding `api_token` (surrounding whitespace ignored); `load_config` reads it."""
    data_dir: str = "ferry-server-data"
    store: str = "memory://"
    """Table store; state is rebuilt from the changelog topics on start."""
    tumbling_s: int = 60
    """The tumbling window (published to `series_topic`)."""
    hopping_size_s: int = 300
    hopping_step_s: int = 60
    allowed_lateness_s: int = 120
    """Per-device watermark = newest event time - this; older events are counted late, not applied."""
    max_clock_skew_s: int = 60
    """A synced reading stamped later than its gateway receive time + this is counted `future` and
    windowed at receive time + this, without moving the device's watermark."""
    dedupe_window: int = 1024
    """Sequence numbers below a boot's high-water mark tracked in a bitmap; older gaps kept as ranges."""
    boot_grace_s: int = 3600
    """A boot closes (its bitmap folded into the device's closed-boots summary) once a newer boot has
    begun and nothing of it was received for this long (gateway receive time)."""
    series_keep: int = 60
    """Closed windows kept per device, metric and window kind for the HTTP API (for at most 16 metrics
    per device: at most series_keep x 16 x 2 windows per device)."""
    alerts_keep: int = 1000
    """Newest alerts kept per partition of the source topics for `/alerts`, and its largest `limit`
    (all of them go to `alerts_topic`)."""
    batch_size: int = 5000
    """Records taken per batch: each device's state is read and written once per batch."""
    batch_devices: int = 2000
    """Devices per batch at most: a batch also ends before the record of a device beyond this many. A
    batch's transient memory (its records, each device's encoded state, the producer's copies) grows
    with the devices it touches, and what it peaks at the worker's resident set keeps: at 10,000
    devices a batch of 5,000 records touches ~5,000 (`ferry bench server`: 17.1 -> 15.2 KB per device
    at 2,000). With fewer devices than this batches are unchanged, each device's state written once
    for several of its records."""
    batch_within_ms: int = 500
    """The longest a record waits for its batch to fill."""
    write_timeout_s: float = 60.0
    """The longest a batch waits for Kafka to acknowledge what it wrote (series points, alerts,
    changelog records); past it, or on a refusal, the worker exits 1 without committing the batch."""
    health_check_interval_s: float = 5.0
    """How often silent devices are checked (the `offline` alert needs no incoming record)."""
    stall_timeout_s: float = 120.0
    """Exit (status 1, for the supervisor to restart) when records wait and none was processed for
    this long: Faust consumers can silently stop (server/liveness.py). 0 turns the watch off."""
    offline_after_intervals: int = 3
    """Offline after this many of the device's sample intervals without a record."""
    battery_low_mv: int = 3400
    rssi_poor_dbm: int = -80
    reboot_loop_boots: int = 3
    """A reboot loop: this many boots not caused by deep sleep within `reboot_loop_window_s`."""
    reboot_loop_window_s: int = 600
    broker_session_timeout_s: float = 60.0
    """Faust's default; tests use 6 (the local broker holds JoinGroup for half of it)."""
    producer_max_batch_size: int = 524288
    """Bytes per produce batch (Faust's default is 16384: 4 device states); tests that check
    tables after a restart use 1 (see docs/server.md)."""
    producer_linger_ms: int = 10
    consumer_max_poll_records: int = 2000
    """Records the consumer hands over from its fetched data at a time (Faust's `broker_max_poll_records`,
    unlimited by default: every partition's whole fetch at once, decoded into objects while the
    batches before them were applied). `ferry bench server`, 10,000 deep-sleep devices, settled memory
    per device: 14.1-16.8 KB in four runs unlimited, 11.3-12.9 KB in three at 2,000; the same readings/s."""
    log_level: str = "info"
    gateways: tuple[str, ...] = ()
    """Metrics endpoints of the gateways whose figures `/pipeline` and the dashboard show, e.g.
    `["http://10.0.0.7:9883/metrics"]` (in the environment: comma-separated). Empty: no gateway scraped."""
    gateway_scrape_interval_s: float = 5.0
    """How often each gateway of `gateways` is scraped."""
    gateway_scrape_timeout_s: float = 2.0
    """The longest one scrape may take; past it the gateway is shown down, with the reason."""

    def __post_init__(self) -> None:
        if not self.broker.strip():
            raise ConfigError("server.broker: must name at least one host:port")
        positive = ("partitions", "tumbling_s", "hopping_size_s", "hopping_step_s", "dedupe_window",
                    "series_keep", "producer_max_batch_size", "alerts_keep", "batch_size", "batch_devices",
                    "batch_within_ms", "consumer_max_poll_records",
                    "offline_after_intervals", "reboot_loop_boots", "reboot_loop_window_s")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"server.{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("allowed_lateness_s", "producer_linger_ms", "stall_timeout_s", "max_clock_skew_s",
                     "boot_grace_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"server.{name}: must not be negative, got {getattr(self, name)}")
        if self.hopping_size_s % self.hopping_step_s:
            raise ConfigError("server.hopping_size_s: must be a multiple of hopping_step_s")
        if not 0 <= self.web_port <= 65535:
            raise ConfigError(f"server.web_port: must be 0..65535, got {self.web_port}")
        if not self.web_host.strip():
            raise ConfigError("server.web_host: must name an address (127.0.0.1 by default)")
        if self.advertised_url:
            _check_advertised_url(self.advertised_url)
        elif is_wildcard(self.web_host):
            raise ConfigError(f"server.advertised_url: must be set when web_host is the wildcard {self.web_host} "
                              "(every address, but none another worker can reach): the URL the other workers "
                              f"reach this one at, e.g. http://10.0.0.5:{self.web_port}")
        if self.api_token and not TOKEN_CHARS.fullmatch(self.api_token):
            # Not echoed: it is a secret.
            raise ConfigError("server.api_token (or the file api_token_file names): may hold only letters, digits "
                              "and - . _ ~ + / (then = padding)")
        for index, url in enumerate(self.gateways):
            _check_gateway_url(f"server.gateways[{index}]", url)
        if len(set(self.gateways)) != len(self.gateways):
            raise ConfigError("server.gateways: a URL is given twice")
        for name in ("broker_session_timeout_s", "health_check_interval_s", "write_timeout_s",
                     "gateway_scrape_interval_s", "gateway_scrape_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"server.{name}: must be positive, got {getattr(self, name)}")

    @property
    def canonical_url(self) -> str:
        """The URL the other workers of the app reach this one at: `advertised_url`, else
        `http://web_host:web_port` (`[web_host]` for an IPv6 address)."""
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        host = f"[{self.web_host}]" if ":" in self.web_host else self.web_host
        return f"http://{host}:{self.web_port}"

    @property
    def broker_url(self) -> str:
        """The broker as Faust wants it: `kafka://h1:p1;h2:p2`."""
        if "://" in self.broker:
            return self.broker
        hosts = [h.strip() for h in self.broker.replace(";", ",").split(",") if h.strip()]
        return "kafka://" + ";".join(hosts)


def is_wildcard(host: str) -> bool:
    """0.0.0.0, ::, and their other spellings: listen on every address."""
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_unspecified
    except ValueError:
        return False


def _check_advertised_url(url: str) -> None:
    where = "server.advertised_url"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be http://host:port or https://host:port, got {url!r}")
    if is_wildcard(parts.hostname):
        raise ConfigError(f"{where}: {parts.hostname} is no address another worker can reach, got {url!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{where}: bad port in {url!r}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{where}: only scheme, host and port, got {url!r}")


def _check_gateway_url(where: str, url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be a gateway's metrics URL, http://host:port/metrics, got {url!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{where}: bad port in {url!r}") from None
    if parts.username or parts.password or parts.fragment:
        raise ConfigError(f"{where}: only scheme, host, port, path and query, got {url!r}")


def _convert(where: str, value: object, kind: object) -> object:
    if kind == tuple[str, ...]:
        if isinstance(value, str):  # the environment: comma-separated
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{where}[{index}]: expected a string, got {item!r}")
        return tuple(value)
    if kind is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def read_token_file(where: str, path: str) -> str:
    """The token in the file at `path`, without surrounding whitespace (a trailing newline)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"{where}: {path} is empty")
    return token


def load_config(environ: Mapping[str, str] | None = None, path: Path | None = None,
                overrides: Mapping[str, object] | None = None) -> ServerConfig:
    """`[server]` from `path` (or `$FERRY_SERVER_CONFIG`), overridden by `FERRY_SERVER_<FIELD>` variables,
    overridden by `overrides` (field -> value: `ferry worker`'s flags).

    `api_token_file` is read here into `api_token`; setting both is an error.
    """
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(ServerConfig)
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    values: dict[str, object] = {}
    if path is None and environ.get(ENV_CONFIG_FILE):
        path = Path(environ[ENV_CONFIG_FILE])
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        section = raw.get("server", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: server: expected a table")
        for key, value in section.items():
            if key not in fields:
                raise ConfigError(f"server.{key}: unknown key (known: {', '.join(sorted(fields))})")
            values[key] = _convert(f"server.{key}", value, hints[key])
    for name in fields:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ:
            values[name] = _convert(env_name, environ[env_name], hints[name])
    for name, value in (overrides or {}).items():
        if name not in fields:
            raise ValueError(f"not a ServerConfig field: {name}")
        values[name] = _convert(f"--{name.replace('_', '-')}", value, hints[name])
    if values.get("api_token_file"):
        if values.get("api_token"):
            raise ConfigError("server.api_token_file: set either api_token or api_token_file, not both")
        values["api_token"] = read_token_file("server.api_token_file", str(values["api_token_file"]))
    if "broker" not in values:
        raise ConfigError(f"server.broker: not set (set {ENV_PREFIX}BROKER or broker in the [server] table)")
    return ServerConfig(**values)  # type: ignore[arg-type]
