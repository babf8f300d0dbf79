"""The wire contract between Ferry's hops, as code: topics, reading records, Kafka records.

docs/contract.md is the prose; tests/vectors/contract/ pins it with golden
vectors that the gateway, the device code and the Faust models all check.
Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum

CONTRACT_VERSION = 1
TOPIC_ROOT = "ferry"
MAX_READING_BYTES = 1024
MAX_METRICS = 16
MAX_U32 = 0xFFFF_FFFF
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class ContractError(ValueError):
    """A record or topic breaks the contract; `field` names what is wrong."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


class Channel(Enum):
    """The last level of a device topic: what the message is."""

    TELEMETRY = "telemetry"
    """Device → gateway readings, QoS 1."""
    STATUS = "status"
    """Device → gateway birth/LWT status, QoS 1, retained."""
    CMD = "cmd"
    """Server/operator → device commands, QoS 1, delivered to a persistent session."""
    REPLY = "reply"
    """Device → operator answers to commands, QoS 1."""


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """`ferry/<site>/<device>/<channel>`."""

    site: str
    device: str
    channel: Channel

    def __str__(self) -> str:
        return f"{TOPIC_ROOT}/{self.site}/{self.device}/{self.channel.value}"


def check_id(field_name: str, value: object) -> str:
    """A site or device id: 1-64 of [A-Za-z0-9_-], so it is safe in topics and Kafka keys."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ContractError(field_name, "must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def parse_topic(topic: str) -> DeviceTopic:
    """Split a device topic; raises ContractError for anything else."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT:
        raise ContractError("topic", f"expected {TOPIC_ROOT}/<site>/<device>/<channel>")
    try:
        channel = Channel(parts[3])
    except ValueError:
        raise ContractError("topic", f"unknown channel {parts[3]!r}") from None
    return DeviceTopic(check_id("site", parts[1]), check_id("device", parts[2]), channel)


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of a device's sensors; (device, boot, seq) identifies it end to end."""

    device: str
    boot: int
    """Boot counter persisted on the device's flash; increases on every reset."""
    seq: int
    """Per-boot sequence number, 0 for the first reading after a boot."""
    ts_ms: int
    """Milliseconds since the Unix epoch when `synced`, else since the boot began."""
    synced: bool
    """True when the device clock was set from NTP before the sample."""
    metrics: dict[str, float] = field(hash=False)
    battery_mv: int | None = None
    rssi_dbm: int | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        """The dedupe key."""
        return (self.device, self.boot, self.seq)


def _int_field(obj: dict, name: str, low: int, high: int, optional: bool = False) -> int | None:
    if name not in obj:
        if optional:
            return None
        raise ContractError(name, "missing")
    value = obj[name]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ContractError(name, f"{value} outside {low}..{high}")
    return value


def _metrics(obj: dict) -> dict[str, float]:
    metrics = obj.get("m")
    if not isinstance(metrics, dict):
        raise ContractError("m", "missing or not an object")
    if not 1 <= len(metrics) <= MAX_METRICS:
        raise ContractError("m", f"needs 1-{MAX_METRICS} metrics, got {len(metrics)}")
    for name, value in metrics.items():
        if not _METRIC_RE.fullmatch(name):
            raise ContractError(f"m.{name}", "name must match [a-z][a-z0-9_]{0,31}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ContractError(f"m.{name}", f"must be a finite number, got {value!r}")
    return metrics


def parse_reading(payload: bytes) -> Reading:
    """Validate a telemetry payload; raises ContractError naming the first bad field."""
    if len(payload) > MAX_READING_BYTES:
        raise ContractError("payload", f"{len(payload)} bytes, limit {MAX_READING_BYTES}")
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError("payload", f"not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ContractError("payload", "not a JSON object")
    version = _int_field(obj, "v", 1, MAX_U32)
    if version != CONTRACT_VERSION:
        raise ContractError("v", f"unsupported contract version {version}")
    synced = obj.get("sync")
    if not isinstance(synced, bool):
        raise ContractError("sync", "missing or not true/false")
    return Reading(
        device=check_id("dev", obj.get("dev")),
        boot=_int_field(obj, "boot", 1, MAX_U32),
        seq=_int_field(obj, "seq", 0, MAX_U32),
        ts_ms=_int_field(obj, "ts", 0, 2**53),
        synced=synced,
        metrics=_metrics(obj),
        battery_mv=_int_field(obj, "bat", 0, 65535, optional=True),
        rssi_dbm=_int_field(obj, "rssi", -200, 0, optional=True),
    )


def _reject_constant(name: str) -> float:
    raise ContractError("payload", f"{name} is not valid JSON")


def encode_reading(reading: Reading) -> bytes:
    """The canonical encoding: compact JSON, keys in contract order, optional fields omitted when None."""
    obj: dict[str, object] = {
        "v": CONTRACT_VERSION, "dev": reading.device, "boot": reading.boot, "seq": reading.seq,
        "ts": reading.ts_ms, "sync": reading.synced, "m": reading.metrics,
    }
    if reading.battery_mv is not None:
        obj["bat"] = reading.battery_mv
    if reading.rssi_dbm is not None:
        obj["rssi"] = reading.rssi_dbm
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


class DeviceState(Enum):
    """What a status message says; `offline` is the retained last will."""

    ONLINE = "online"
    OFFLINE = "offline"


RESET_CAUSES = frozenset({"power_on", "hard", "wdt", "deepsleep", "soft", "brownout", "unknown"})


@dataclass(frozen=True, slots=True)
class Status:
    """A device's retained birth (`online`) or last-will (`offline`) message."""

    device: str
    state: DeviceState
    boot: int
    firmware: str | None = None
    reset_cause: str | None = None
    outbox_queued: int | None = None
    outbox_dropped: int | None = None


def parse_status(payload: bytes) -> Status:
    """Validate a status payload; birth messages must carry firmware, reset cause and outbox counters."""
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError("payload", f"not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ContractError("payload", "not a JSON object")
    if _int_field(obj, "v", 1, MAX_U32) != CONTRACT_VERSION:
        raise ContractError("v", f"unsupported contract version {obj['v']}")
    try:
        state = DeviceState(obj.get("state"))
    except ValueError:
        raise ContractError("state", f"must be online or offline, got {obj.get('state')!r}") from None
    device = check_id("dev", obj.get("dev"))
    boot = _int_field(obj, "boot", 1, MAX_U32)
    if state is DeviceState.OFFLINE:
        return Status(device, state, boot)
    firmware = obj.get("fw")
    if not isinstance(firmware, str) or not 1 <= len(firmware) <= 32:
        raise ContractError("fw", "must be a version string of 1-32 characters")
    reset_cause = obj.get("reset")
    if reset_cause not in RESET_CAUSES:
        raise ContractError("reset", f"must be one of {sorted(RESET_CAUSES)}")
    outbox = obj.get("outbox")
    if not isinstance(outbox, dict):
        raise ContractError("outbox", "missing or not an object")
    return Status(device, state, boot, firmware, reset_cause,
                  _int_field(outbox, "queued", 0, MAX_U32), _int_field(outbox, "dropped", 0, MAX_U32))


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """What the bridge produces for one MQTT message from a device."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class BridgeNaming:
    """Which Kafka topic each channel goes to and who the gateway is."""

    gateway_id: str
    telemetry_topic: str = "ferry.telemetry"
    status_topic: str = "ferry.status"
    reply_topic: str = "ferry.reply"
    deadletter_topic: str = "ferry.deadletter"

    def topic_for(self, channel: Channel) -> str:
        return {
            Channel.TELEMETRY: self.telemetry_topic,
            Channel.STATUS: self.status_topic,
            Channel.REPLY: self.reply_topic,
        }[channel]


KAFKA_PARTITIONER = "murmur2_random"
"""librdkafka partitioner for every record keyed by device id: the Java client's murmur2, which
Faust's aiokafka producer and its web router also use, so a device's records, its table
changelog records and the worker that answers for it all agree on one partition. (librdkafka's
default, consistent_random, is CRC32 and would not.)"""

HEADER_SITE = "ferry-site"
HEADER_MQTT_TOPIC = "ferry-mqtt-topic"
HEADER_GATEWAY = "ferry-gateway"
HEADER_RECEIVED_MS = "ferry-received-ms"
HEADER_ERROR = "ferry-error"


def kafka_record(naming: BridgeNaming, mqtt_topic: str, payload: bytes, received_ms: int) -> KafkaRecord:
    """Map one device message to its Kafka record; the value is the payload, byte for byte.

    Telemetry that breaks the contract goes to the dead-letter topic with the
    reason in a header: the bridge never drops and never rewrites a message.
    """
    headers = [(HEADER_MQTT_TOPIC, mqtt_topic.encode()), (HEADER_GATEWAY, naming.gateway_id.encode()),
               (HEADER_RECEIVED_MS, str(received_ms).encode())]
    try:
        device_topic = parse_topic(mqtt_topic)
    except ContractError as exc:
        return KafkaRecord(naming.deadletter_topic, b"", payload,
                           tuple(headers + [(HEADER_ERROR, str(exc).encode())]), received_ms)
    headers.insert(0, (HEADER_SITE, device_topic.site.encode()))
    key = device_topic.device.encode()
    if device_topic.channel is Channel.CMD:
        error = "topic: cmd messages flow to devices and are not bridged"
        return KafkaRecord(naming.deadletter_topic, key, payload,
                           tuple(headers + [(HEADER_ERROR, error.encode())]), received_ms)
    timestamp_ms = received_ms
    if device_topic.channel is Channel.TELEMETRY:
        try:
            reading = parse_reading(payload)
            if reading.device != device_topic.device:
                raise ContractError("dev", f"{reading.device!r} differs from the topic's device")
        except ContractError as exc:
            return KafkaRecord(naming.deadletter_topic, key, payload,
                               tuple(headers + [(HEADER_ERROR, str(exc).encode())]), received_ms)
        if reading.synced:
            timestamp_ms = reading.ts_ms
    return KafkaRecord(naming.topic_for(device_topic.channel), key, payload, tuple(headers), timestamp_ms)
