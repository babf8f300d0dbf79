"""The gateway's configuration: one TOML file, validated at start-up, into frozen dataclasses.

Each section maps to one component's config dataclass; a key that the
dataclass does not have, or a value of the wrong type or range, stops the
gateway with a message naming `section.key` and the problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ferry.addresses import host_port
from ferry.gateway.auth.acl import AclRule, parse_rule
from ferry.gateway.auth.config import AuthConfig
from ferry.gateway.bridge.config import BridgeConfig, check_bridge
from ferry.gateway.broker.config import BrokerConfig
from ferry.gateway.store import Durability


class ConfigError(ValueError):
    """A config file problem, with the offending key in the message."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """`[store]`: how the broker's journal makes state durable."""

    durability: Durability = Durability.FSYNC
    """fsync: acknowledged = on disk (survives power loss); os: written to the OS (survives a crash
    of the gateway, not of the machine); memory: nothing on disk."""
    segment_max_bytes: int = 64 * 1_048_576
    """A journal segment is closed and a new one started beyond this size."""
    compact_after_bytes: int = 256 * 1_048_576
    """Write a snapshot of the live state once the journal has grown this much since the last."""
    min_free_disk_bytes: int | None = None
    """Below this much free space on the data dir's filesystem, QoS 1/2 publishes that need the
    store are refused as for a full queue, until space returns. Unset: 5 % of the filesystem,
    at most 1 GiB."""


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """`[gateway]`: where the gateway listens and keeps its data (each also a `ferry gateway` option,
    which wins over the file)."""

    listen: str | None = None
    """Plain MQTT listener, `HOST:PORT` (`--listen`); `0.0.0.0:1883` serves the whole network.
    Unset: 127.0.0.1:1883 when there is no `[[listener]]` table, else none."""
    data_dir: str | None = None
    """Folder of the store: the journal, its snapshots, the bridge's spool (`--data-dir`; required)."""
    metrics: str | None = None
    """Prometheus metrics over HTTP at `http://HOST:PORT/metrics` (`--metrics`); off when unset."""


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One `[[listener]]` table: an MQTT listener, plain or TLS."""

    listen: str = ""
    """`HOST:PORT` (required)."""
    tls_cert: str | None = None
    """PEM certificate chain of the gateway; with `tls_key`, makes this a TLS listener (TLS 1.2+)."""
    tls_key: str | None = None
    """PEM private key of `tls_cert`."""
    tls_client_ca: str | None = None
    """PEM CA certificates that client certificates are verified against; unset: none asked for."""
    require_client_cert: bool = False
    """Refuse the TLS handshake of a client without a certificate signed by `tls_client_ca`."""
    cert_cn_as_username: bool = True
    """A verified client certificate's common name is the client's user name (no password needed)."""

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole file."""

    gateway: ServiceConfig = field(default_factory=ServiceConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    listener: tuple[ListenerConfig, ...] = ()
    """`[[listener]]` tables: listeners besides (or, without `gateway.listen`, instead of) the plain one."""
    acl: tuple[AclRule, ...] = ()
    """`[[acl]]` tables, in order: checked before the roles' default rules, first match wins."""


def _convert(where: str, value: object, kind: object) -> object:
    """Check `value` against the annotation `kind`; return it converted (enums from strings)."""
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in kind)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}") from None
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if kind is type(None):
        raise ConfigError(f"{where}: cannot be empty")
    if typing.get_origin(kind) is tuple:
        # A list of strings (`auth.operators`).
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if typing.get_origin(kind) is dict:
        # A pass-through table of scalars (`bridge.librdkafka`).
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        for key, item in value.items():
            if not isinstance(item, (str, int, float, bool)):
                raise ConfigError(f"{where}.{key}: expected a string, number or boolean, got {item!r}")
        return dict(value)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = typing.get_args(kind)
        errors = []
        for arg in args:
            try:
                return _convert(where, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    raise ConfigError(f"{where}: unsupported setting type {kind!r}")


def _section(name: str, cls: type, values: object) -> object:
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = _convert(f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def _tables(name: str, values: object) -> list[dict]:
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise ConfigError(f"{name}: expected [[{name}]] tables")
    return values


def _acl_rule(where: str, table: dict) -> AclRule:
    try:
        return parse_rule(where, table)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


DEFAULT_LISTEN = "127.0.0.1:1883"


def parse_config(text: str, source: str = "ferry.toml", kafka: str | None = None, *,
                 allow_anonymous: bool = False, password_file: str | None = None) -> GatewayConfig:
    """Parse and validate a config file's text; raises ConfigError naming the key.

    `kafka` (from `ferry gateway --kafka`) replaces `bridge.kafka`, turning the bridge on;
    `allow_anonymous` (`--allow-anonymous`) sets `auth.allow_anonymous`, `password_file`
    (`--password-file`) replaces `auth.password_file`.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    sections = {f.name: typing.get_type_hints(GatewayConfig)[f.name] for f in dataclasses.fields(GatewayConfig)}
    kwargs: dict[str, object] = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(sorted(sections))})")
        if name == "listener":
            kwargs[name] = tuple(_section(f"listener[{i}]", ListenerConfig, table)
                                 for i, table in enumerate(_tables(name, values)))
        elif name == "acl":
            kwargs[name] = tuple(_acl_rule(f"acl[{i}]", table) for i, table in enumerate(_tables(name, values)))
        else:
            kwargs[name] = _section(name, sections[name], values)
    config = GatewayConfig(**kwargs)
    if kafka is not None:
        config = dataclasses.replace(config, bridge=dataclasses.replace(config.bridge, kafka=kafka))
    if allow_anonymous:
        config = dataclasses.replace(config, auth=dataclasses.replace(config.auth, allow_anonymous=True))
    if password_file is not None:
        config = dataclasses.replace(config, auth=dataclasses.replace(config.auth, password_file=password_file))
    _check_ranges(config)
    return config


def _check_ranges(config: GatewayConfig) -> None:
    broker = config.broker
    if not 2 <= broker.max_packet_size_bytes <= 268_435_460:
        raise ConfigError("broker.max_packet_size_bytes: must be 2..268435460")
    for key in ("receive_maximum", "max_inflight_messages"):
        if not 1 <= getattr(broker, key) <= 65_535:
            raise ConfigError(f"broker.{key}: must be 1..65535")
    if broker.topic_alias_maximum > 65_535:
        raise ConfigError("broker.topic_alias_maximum: must be 0..65535")
    if not 1 <= broker.max_keepalive_s <= 65_535:
        raise ConfigError("broker.max_keepalive_s: must be 1..65535")
    if 0 < broker.max_output_buffer_abort_bytes < broker.max_output_buffer_bytes:
        raise ConfigError("broker.max_output_buffer_abort_bytes: must be at least broker.max_output_buffer_bytes "
                          "(or 0: no bound)")
    for key in ("listen", "metrics"):
        value = getattr(config.gateway, key)
        if value is not None:
            try:
                host_port(value)
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"gateway.{key}: {exc}") from None
    for i, listener in enumerate(config.listener):
        _check_listener(f"listener[{i}]", listener)
    if config.gateway.data_dir == "":
        raise ConfigError("gateway.data_dir: must not be empty")
    if config.store.segment_max_bytes < 4096:
        raise ConfigError("store.segment_max_bytes: must be at least 4096")
    problem = check_bridge(config.bridge)
    if problem is not None:
        raise ConfigError(problem)
    if config.bridge.kafka is None and config.bridge != BridgeConfig():
        raise ConfigError("bridge.kafka: required to run the bridge (or pass --kafka HOST:PORT); "
                          "leave out the [bridge] table to run without it")


def check_can_connect(config: GatewayConfig) -> None:
    """Refuse a configuration under which no client could ever connect (the default one, until a
    password file, client certificates or anonymous access is configured)."""
    auth = config.auth
    if not (auth.password_file or auth.allow_anonymous or any(l.tls_client_ca for l in config.listener)):
        raise ConfigError("auth.password_file: required, or a [[listener]] with tls_client_ca, or "
                          "auth.allow_anonymous = true (--allow-anonymous): else no client can connect")


def _check_listener(where: str, listener: ListenerConfig) -> None:
    if not listener.listen:
        raise ConfigError(f"{where}.listen: required (HOST:PORT)")
    try:
        host_port(listener.listen)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{where}.listen: {exc}") from None
    if (listener.tls_cert is None) != (listener.tls_key is None):
        raise ConfigError(f"{where}.{'tls_key' if listener.tls_key is None else 'tls_cert'}: "
                          "tls_cert and tls_key go together")
    if not listener.tls and (listener.tls_client_ca or listener.require_client_cert):
        raise ConfigError(f"{where}.tls_cert: client certificates need a TLS listener")
    if listener.require_client_cert and not listener.tls_client_ca:
        raise ConfigError(f"{where}.tls_client_ca: required by require_client_cert")


def load_config(path: Path | None, kafka: str | None = None, **overrides: object) -> GatewayConfig:
    """The config in `path`, or the defaults when no file is given; `kafka` and `overrides` as in
    `parse_config`."""
    if path is None:
        return parse_config("", "command line", kafka, **overrides)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(path), kafka, **overrides)
