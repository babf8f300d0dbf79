"""The wire contract between Ferry's hops, as code: topics, reading records, Kafka records, and
the records the analytics worker publishes (series points, alerts, health changes).

docs/contract.md is the prose; tests/vectors/contract/ pins it with golden
vectors that the gateway, the device code and the worker all check.
Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

import orjson

CONTRACT_VERSION = 1
TOPIC_ROOT = "ferry"
MAX_READING_BYTES = 1024
MAX_METRICS = 16
MAX_U32 = 0xFFFF_FFFF
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
"""An alert kind, a fault's or a sensor's name."""


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
    OTA = "ota"
    """Operator → device firmware release chunks, QoS 1 (docs/ota.md); never bridged."""

    @property
    def to_device(self) -> bool:
        """Operator → device (`cmd`, `ota`): the gateway delivers it, the bridge never produces it."""
        return self is Channel.CMD or self is Channel.OTA


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


@functools.lru_cache(maxsize=65536)
def parse_topic(topic: str) -> DeviceTopic:
    """Split a device topic; raises ContractError for anything else. A device uses the same few
    topics all its life: the answers are cached (bounded; an error is never cached)."""
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


def int_field(obj: dict, name: str, low: int, high: int, optional: bool = False) -> int | None:
    value = obj.get(name)
    if type(value) is int and low <= value <= high:  # the common case first (bool is not int here)
        return value
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


_METRIC_NAMES_SEEN: set[str] = set()
"""Metric names that matched `METRIC_RE` (a fleet has few): checked once, not per reading."""
_METRIC_NAMES_MAX = 4096
_FLOAT_MAX = sys.float_info.max
"""An integer metric beyond this is no finite float (JSON allows 10**400)."""


def _metrics(obj: dict) -> dict[str, float]:
    metrics = obj.get("m")
    if type(metrics) is not dict:
        raise ContractError("m", "missing or not an object")
    if not 1 <= len(metrics) <= MAX_METRICS:
        raise ContractError("m", f"needs 1-{MAX_METRICS} metrics, got {len(metrics)}")
    seen = _METRIC_NAMES_SEEN
    for name, value in metrics.items():
        if name not in seen:
            if not METRIC_RE.fullmatch(name):
                raise ContractError(f"m.{name}", "name must match [a-z][a-z0-9_]{0,31}")
            if len(seen) < _METRIC_NAMES_MAX:
                seen.add(name)
        kind = type(value)  # bool is not int here
        if not (kind is float and math.isfinite(value) or kind is int and -_FLOAT_MAX <= value <= _FLOAT_MAX):
            raise ContractError(f"m.{name}", f"must be a finite number, got {value!r:.40}")
    return metrics


def parse_reading(payload: bytes) -> Reading:
    """Validate a telemetry payload; raises ContractError naming the first bad field."""
    obj = _checked_reading(payload)
    return Reading(obj["dev"], obj["boot"], obj["seq"], obj["ts"], obj["sync"], obj["m"], obj.get("bat"),
                   obj.get("rssi"))


def _checked_reading(payload: bytes) -> dict:
    """The telemetry payload's JSON object once every field is checked (`parse_reading` without
    building the record: the bridge needs only the device, the clock flag and the time).

    Python's `json` defines what is valid; orjson (several times faster) decodes first, and anything
    it refuses, or whose check fails, is decoded and checked again by `json`, so a payload is accepted
    or refused, with the same reason, exactly as `json` alone would (orjson differs only on input
    `json` refuses or takes apart differently: integers past 64 bits, lone surrogates)."""
    if len(payload) > MAX_READING_BYTES:
        raise ContractError("payload", f"{len(payload)} bytes, limit {MAX_READING_BYTES}")
    try:
        return _reading_fields(orjson.loads(payload))
    except (orjson.JSONDecodeError, ContractError):
        return _reading_fields(decoded(payload))


def decoded(payload: bytes) -> object:
    """The payload as Python's `json` decodes it (constants such as NaN refused); ContractError
    naming "payload" if it is no UTF-8 JSON."""
    try:
        return _JSON.decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError("payload", f"not UTF-8 JSON: {exc}") from None


_DEVICE_IDS_SEEN: set[str] = set()
"""Device ids of readings that passed every check (up to `_DEVICE_IDS_MAX`): their next readings take
the short way through `_reading_fields`."""
_DEVICE_IDS_MAX = 16_384


def _reading_fields(obj: object) -> dict:
    """`obj` (a decoded payload) if it is a reading the contract accepts; else ContractError naming
    the first bad field."""
    if type(obj) is not dict:
        raise ContractError("payload", "not a JSON object")
    # The common case in one expression (about half the cost of the checks one by one, below,
    # which also name the first bad field).
    get = obj.get
    boot, seq, ts, battery, rssi = get("boot"), get("seq"), get("ts"), get("bat"), get("rssi")
    if (get("v") == CONTRACT_VERSION and type(get("v")) is int and type(get("sync")) is bool
            and type(get("dev")) is str and get("dev") in _DEVICE_IDS_SEEN
            and type(boot) is int and 1 <= boot <= MAX_U32 and type(seq) is int and 0 <= seq <= MAX_U32
            and type(ts) is int and 0 <= ts <= 2**53
            and (battery is None or type(battery) is int and 0 <= battery <= 65535)
            and (rssi is None or type(rssi) is int and -200 <= rssi <= 0)):
        _metrics(obj)
        return obj
    version = int_field(obj, "v", 1, MAX_U32)
    if version != CONTRACT_VERSION:
        raise ContractError("v", f"unsupported contract version {version}")
    if type(obj.get("sync")) is not bool:
        raise ContractError("sync", "missing or not true/false")
    device = check_id("dev", obj.get("dev"))
    int_field(obj, "boot", 1, MAX_U32)
    int_field(obj, "seq", 0, MAX_U32)
    int_field(obj, "ts", 0, 2**53)
    _metrics(obj)
    int_field(obj, "bat", 0, 65535, optional=True)
    int_field(obj, "rssi", -200, 0, optional=True)
    if len(_DEVICE_IDS_SEEN) < _DEVICE_IDS_MAX:
        _DEVICE_IDS_SEEN.add(device)
    return obj


def _reject_constant(name: str) -> float:
    raise ContractError("payload", f"{name} is not valid JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)
"""One decoder for every payload: `json.loads` with an argument builds a new one per call."""


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
    boot_failures: int = 0
    """Starts in a row before this one that failed (Ferry's firmware; 0 when a device leaves it out)."""
    faults: tuple[str, ...] = ()
    """Sensors the board runs without because it lacks their bus or pin (Ferry's firmware)."""
    sensor_errors: tuple[SensorErrors, ...] = ()
    """Failed reads per sensor since the boot, in the device's order (Ferry's firmware; empty when left out)."""
    ota: OtaStatus | None = None
    """The over-the-air update state (Ferry's firmware, docs/ota.md; None when left out)."""


@dataclass(frozen=True, slots=True)
class OtaStatus:
    """Which app folder a board runs and how its last update went (the birth's `ota`, docs/ota.md)."""

    slot: str
    """"" (the files `ferry flash` installed), "a" or "b" (an update's folder)."""
    state: str
    """"confirmed", or "trial": the first start of an update, not yet through its health check."""
    version: str
    """The running update's version ("" for the factory files before any update)."""
    last: str
    """What happened last: "confirmed 0.2.0", "rolled_back 0.3.0: crash loop (2 failed starts)", or ""."""


@dataclass(frozen=True, slots=True)
class SensorErrors:
    """One sensor's failed reads since the boot (a bus, CRC or checksum error, silence)."""

    sensor: str
    errors: int


MAX_FAULTS = 16


def parse_status(payload: bytes) -> Status:
    """Validate a status payload; birth messages must carry firmware, reset cause and outbox counters."""
    obj = decoded(payload)
    if not isinstance(obj, dict):
        raise ContractError("payload", "not a JSON object")
    if int_field(obj, "v", 1, MAX_U32) != CONTRACT_VERSION:
        raise ContractError("v", f"unsupported contract version {obj['v']}")
    try:
        state = DeviceState(obj.get("state"))
    except ValueError:
        raise ContractError("state", f"must be online or offline, got {obj.get('state')!r}") from None
    device = check_id("dev", obj.get("dev"))
    boot = int_field(obj, "boot", 1, MAX_U32)
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
                  int_field(outbox, "queued", 0, MAX_U32), int_field(outbox, "dropped", 0, MAX_U32),
                  int_field(obj, "boot_failures", 0, MAX_U32, optional=True) or 0,
                  names_field(obj, "faults"), _sensor_errors_field(obj), _ota_field(obj))


class KafkaRecord(NamedTuple):
    """What the bridge produces for one MQTT message from a device (a named tuple: the bridge makes
    one per message, and a frozen dataclass costs four times as much to make)."""

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
        if channel is Channel.TELEMETRY:
            return self.telemetry_topic
        if channel is Channel.STATUS:
            return self.status_topic
        if channel is Channel.REPLY:
            return self.reply_topic
        raise KeyError(channel)


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


def kafka_record(naming: BridgeNaming, mqtt_topic: str, payload: bytes, received_ms: int,
                 checked_ts_ms: int | None = None) -> KafkaRecord:
    """Map one device message to its Kafka record; the value is the payload, byte for byte.

    Telemetry that breaks the contract goes to the dead-letter topic with the
    reason in a header: the bridge never drops and never rewrites a message.
    `checked_ts_ms`: what `checked_telemetry_ts` said of this message (then its payload is not
    decoded and checked again); None: not known.
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
    if device_topic.channel.to_device:
        error = f"topic: {device_topic.channel.value} messages flow to devices and are not bridged"
        return KafkaRecord(naming.deadletter_topic, key, payload,
                           tuple(headers + [(HEADER_ERROR, error.encode())]), received_ms)
    timestamp_ms = received_ms
    if device_topic.channel is Channel.TELEMETRY:
        if checked_ts_ms is not None:
            timestamp_ms = checked_ts_ms
        else:
            try:
                timestamp_ms = _telemetry_ts(device_topic, payload, received_ms)
            except ContractError as exc:
                return KafkaRecord(naming.deadletter_topic, key, payload,
                                   tuple(headers + [(HEADER_ERROR, str(exc).encode())]), received_ms)
    return KafkaRecord(naming.topic_for(device_topic.channel), key, payload, tuple(headers), timestamp_ms)


def checked_telemetry_ts(mqtt_topic: str, payload: bytes, received_ms: int) -> int | None:
    """For a telemetry message the contract accepts, its Kafka record's timestamp; None for anything
    else (other channels, contract breakers: `kafka_record` works out their record in full).

    The gateway asks this once, when a message reaches the spool, and keeps the answer with it, so a
    backlog drains without decoding and checking every payload again."""
    try:
        device_topic = parse_topic(mqtt_topic)
        if device_topic.channel is not Channel.TELEMETRY:
            return None
        return _telemetry_ts(device_topic, payload, received_ms)
    except ContractError:
        return None


def _telemetry_ts(device_topic: DeviceTopic, payload: bytes, received_ms: int) -> int:
    """A telemetry payload's Kafka timestamp: the reading's time if the device clock was synced,
    else when the gateway received it; raises ContractError for a contract breaker."""
    reading = _checked_reading(payload)
    if reading["dev"] != device_topic.device:
        raise ContractError("dev", f"{reading['dev']!r} differs from the topic's device")
    return reading["ts"] if reading["sync"] else received_ms


def names_field(obj: dict, name: str) -> tuple[str, ...]:
    """An optional list of up to MAX_FAULTS names (absent: empty)."""
    names = obj.get(name, [])
    if not isinstance(names, list) or len(names) > MAX_FAULTS \
            or not all(isinstance(n, str) and KIND_RE.fullmatch(n) for n in names):
        raise ContractError(name, f"must be a list of up to {MAX_FAULTS} names")
    return tuple(names)


def _sensor_errors_field(obj: dict) -> tuple[SensorErrors, ...]:
    """An optional object of up to MAX_FAULTS sensor names, each with its error count (absent: empty)."""
    counts = obj.get("sensor_errors", {})
    if not isinstance(counts, dict) or len(counts) > MAX_FAULTS or not all(
            KIND_RE.fullmatch(name) and not isinstance(n, bool) and isinstance(n, int) and 0 <= n <= MAX_U32
            for name, n in counts.items()):
        raise ContractError("sensor_errors", f"must be an object of up to {MAX_FAULTS} sensor names, each with an "
                                             f"integer 0..{MAX_U32}")
    return tuple(SensorErrors(name, n) for name, n in counts.items())


OTA_SLOTS = ("", "a", "b")
OTA_STATES = ("confirmed", "trial")
MAX_OTA_LAST = 200


def _ota_field(obj: dict) -> OtaStatus | None:
    """An optional object {"slot", "state", "ver", "last"} (absent: None)."""
    ota = obj.get("ota")
    if ota is None:
        return None
    if (not isinstance(ota, dict) or ota.get("slot") not in OTA_SLOTS or ota.get("state") not in OTA_STATES
            or not isinstance(ota.get("ver"), str) or len(ota["ver"]) > 32
            or not isinstance(ota.get("last"), str) or len(ota["last"]) > MAX_OTA_LAST):
        raise ContractError("ota", f"must be an object with slot {'/'.join(repr(s) for s in OTA_SLOTS)}, state "
                                   f"{'/'.join(OTA_STATES)}, ver (at most 32 characters) and last (at most "
                                   f"{MAX_OTA_LAST})")
    return OtaStatus(ota["slot"], ota["state"], ota["ver"], ota["last"])
