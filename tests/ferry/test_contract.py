"""The wire contract against its golden vectors."""

from __future__ import annotations

import dataclasses

import pytest

from ferry.contract import (
    BridgeNaming, Channel, ContractError, DeviceState, checked_telemetry_ts, encode_reading, kafka_record,
    parse_reading, parse_status, parse_topic,
)
from tests.vectors import load as load_vectors

READINGS = load_vectors("contract/readings.json")
STATUSES = load_vectors("contract/statuses.json")
TOPICS = load_vectors("contract/topics.json")
KAFKA = load_vectors("contract/kafka_records.json")


def _names(cases: list[dict]) -> list[str]:
    return [case["name"] for case in cases]


@pytest.mark.parametrize("case", READINGS["valid"], ids=_names(READINGS["valid"]))
def test_valid_reading_parses_to_expected_fields(case: dict) -> None:
    reading = parse_reading(case["payload"].encode())
    assert dataclasses.asdict(reading) == case["reading"]
    assert reading.key == (case["reading"]["device"], case["reading"]["boot"], case["reading"]["seq"])


@pytest.mark.parametrize("case", [c for c in READINGS["valid"] if c["canonical"]],
                         ids=_names([c for c in READINGS["valid"] if c["canonical"]]))
def test_canonical_reading_encodes_byte_for_byte(case: dict) -> None:
    assert encode_reading(parse_reading(case["payload"].encode())) == case["payload"].encode()


@pytest.mark.parametrize("case", READINGS["invalid"], ids=_names(READINGS["invalid"]))
def test_invalid_reading_names_the_field(case: dict) -> None:
    with pytest.raises(ContractError) as info:
        parse_reading(case["payload"].encode())
    assert info.value.field == case["field"]


def test_oversized_reading_is_rejected_before_parsing() -> None:
    with pytest.raises(ContractError, match="limit 1024") as info:
        parse_reading(b" " * 1025)
    assert info.value.field == "payload"


@pytest.mark.parametrize("case", STATUSES["valid"], ids=_names(STATUSES["valid"]))
def test_valid_status_parses(case: dict) -> None:
    status = parse_status(case["payload"].encode())
    expected = dict(case["status"], state=DeviceState(case["status"]["state"]), faults=tuple(case["status"]["faults"]),
                    sensor_errors=tuple(case["status"]["sensor_errors"]))
    assert dataclasses.asdict(status) == expected


@pytest.mark.parametrize("case", STATUSES["invalid"], ids=_names(STATUSES["invalid"]))
def test_invalid_status_names_the_field(case: dict) -> None:
    with pytest.raises(ContractError) as info:
        parse_status(case["payload"].encode())
    assert info.value.field == case["field"]


@pytest.mark.parametrize("case", TOPICS["valid"], ids=[c["topic"] for c in TOPICS["valid"]])
def test_device_topics_round_trip(case: dict) -> None:
    topic = parse_topic(case["topic"])
    assert (topic.site, topic.device, topic.channel) == (case["site"], case["device"], Channel(case["channel"]))
    assert str(topic) == case["topic"]


@pytest.mark.parametrize("case", TOPICS["invalid"], ids=[c["topic"] for c in TOPICS["invalid"]])
def test_other_topics_are_rejected(case: dict) -> None:
    with pytest.raises(ContractError) as info:
        parse_topic(case["topic"])
    assert info.value.field == case["field"]


@pytest.mark.parametrize("case", KAFKA["cases"], ids=_names(KAFKA["cases"]))
def test_bridge_maps_device_messages_to_kafka_records(case: dict) -> None:
    record = kafka_record(BridgeNaming(KAFKA["gateway_id"]), case["mqtt_topic"],
                          case["payload"].encode(), case["received_ms"])
    expected = case["record"]
    assert record.topic == expected["topic"]
    assert record.key == expected["key"].encode()
    assert record.value == expected["value"].encode() == case["payload"].encode()
    assert [(k, v.decode()) for k, v in record.headers] == [tuple(h) for h in expected["headers"]]
    assert record.timestamp_ms == expected["timestamp_ms"]


@pytest.mark.parametrize("channel", ["cmd", "ota"])
def test_operator_to_device_topics_are_never_bridged(channel: str) -> None:
    record = kafka_record(BridgeNaming("gw"), f"ferry/s/d/{channel}", b"{}", 5)
    assert record.topic == "ferry.deadletter"
    assert dict(record.headers)["ferry-error"] == f"topic: {channel} messages flow to devices and are not bridged".encode()
    assert Channel(channel).to_device


@pytest.mark.parametrize(("metric", "field"), [
    ("1" + "0" * 400, "m.x"),          # an integer no float can hold (math.isfinite raised OverflowError)
    ("true", "m.x"), ("null", "m.x"), ('"21.5"', "m.x"), ("1e999", "m.x"), ("NaN", "payload"),
])
def test_a_metric_that_is_no_finite_number_is_a_contract_error(metric: str, field: str) -> None:
    payload = ('{"v":1,"dev":"d","boot":1,"seq":0,"ts":5,"sync":false,"m":{"x":%s}}' % metric).encode()
    with pytest.raises(ContractError) as info:
        parse_reading(payload)
    assert info.value.field == field


def test_metric_names_are_checked_every_time_not_only_the_first() -> None:
    good = b'{"v":1,"dev":"d","boot":1,"seq":0,"ts":5,"sync":false,"m":{"temp_c":1,"BAD":2}}'
    for _ in range(2):  # the valid name is remembered; the invalid one never is
        with pytest.raises(ContractError, match="m.BAD"):
            parse_reading(good)
    assert parse_reading(good.replace(b',"BAD":2', b"")).metrics == {"temp_c": 1}


@pytest.mark.parametrize("payload", [
    # orjson reads integers past 64 bits as floats, json as integers: the same verdict, the same reason
    b'{"v":1,"dev":"d","boot":100000000000000000000000000000,"seq":0,"ts":0,"sync":true,"m":{"a":1}}',
    b'{"v":1,"dev":"d","boot":1,"seq":0,"ts":0,"sync":true,"m":{"a":100000000000000000000000000000}}',
    b'{"v":1,"dev":"d","boot":1,"seq":0,"ts":-9223372036854775809,"sync":true,"m":{"a":1}}',
    # orjson refuses what json reads: a lone surrogate, a number past the largest double
    b'{"v":1,"dev":"\\ud800","boot":1,"seq":0,"ts":0,"sync":true,"m":{"a":1}}',
    b'{"v":1,"dev":"d","boot":1,"seq":0,"ts":0,"sync":true,"m":{"a":1e999}}',
    b'{"v":1,"dev":"d","boot":1,"seq":0,"ts":0,"sync":true,"m":{"a":1' + b"0" * 400 + b'}}',
    b'{"v":1,"dev":"d","boot":1,"seq":0,"ts":0,"sync":true,"m":{"a":NaN}}',
    b'\xef\xbb\xbf{"v":1,"dev":"d","boot":1,"seq":0,"ts":0,"sync":true,"m":{"a":1}}',
    b'{"v":1,"dev":"d","boot":1,"seq":0,"ts":0,"sync":true,"m":{"a":1},"dev":"e"}',
])
def test_a_reading_gets_pythons_json_verdict_whichever_decoder_reads_it(payload: bytes) -> None:
    """orjson decodes payloads first (the bridge checks every reading); json defines what is valid."""
    from ferry.contract import _reading_fields, decoded
    try:
        expected: object = _reading_fields(decoded(payload))
    except ContractError as exc:
        expected = (exc.field, exc.problem)
    try:
        got: object = parse_reading(payload)
    except ContractError as exc:
        got = (exc.field, exc.problem)
    else:
        got = expected if got.key == (expected["dev"], expected["boot"], expected["seq"]) else got
    assert got == expected


@pytest.mark.parametrize(("topic", "payload", "checked"), [
    ("ferry/s/d1/telemetry", b'{"v":1,"dev":"d1","boot":1,"seq":0,"ts":1732480000123,"sync":true,"m":{"a":1}}',
     1732480000123),
    ("ferry/s/d1/telemetry", b'{"v":1,"dev":"d1","boot":1,"seq":0,"ts":5000,"sync":false,"m":{"a":1}}', 99),
    ("ferry/s/d1/telemetry", b'{"v":1,"dev":"d2","boot":1,"seq":0,"ts":5000,"sync":false,"m":{"a":1}}', None),
    ("ferry/s/d1/telemetry", b"not json", None),
    ("ferry/s/d1/status", b"{}", None),
    ("ferry/s/d1/cmd", b"{}", None),
    ("elsewhere", b"{}", None),
])
def test_the_verdict_kept_with_a_spooled_message_makes_the_same_record(topic: str, payload: bytes,
                                                                        checked: int | None) -> None:
    naming = BridgeNaming("gw")
    assert checked_telemetry_ts(topic, payload, 99) == checked
    record = kafka_record(naming, topic, payload, 99)
    if checked is not None:
        assert kafka_record(naming, topic, payload, 99, checked) == record


def test_the_short_way_through_the_checks_agrees_with_the_long_one() -> None:
    """A device seen before takes one combined check; 3,000 random mutations of a reading (wrong
    types, values at and past each bound, missing and null fields) get the same verdict and the same
    reason either way."""
    import random

    from ferry import contract
    rng = random.Random(11)
    values = [None, True, False, 0, 1, -1, 2, 65535, 65536, -200, -201, 2**32 - 1, 2**32, 2**53, 2**53 + 1,
              1.0, 0.5, "1", "d1", [], {}, {"a": 1}, {"a": True}, {"A": 1}, {}]
    base = {"v": 1, "dev": "d1", "boot": 1, "seq": 0, "ts": 5, "sync": True, "m": {"a": 1.5}, "bat": 3700,
            "rssi": -60}

    def verdict(obj: dict, seen: set[str]) -> object:
        saved = contract._DEVICE_IDS_SEEN
        contract._DEVICE_IDS_SEEN = seen
        try:
            return contract._reading_fields(dict(obj))
        except ContractError as exc:
            return (exc.field, exc.problem)
        finally:
            contract._DEVICE_IDS_SEEN = saved

    for _ in range(3000):
        obj = dict(base)
        for name in rng.sample(sorted(base), rng.randint(1, 3)):
            if rng.random() < 0.15:
                del obj[name]
            else:
                obj[name] = rng.choice(values)
        assert verdict(obj, {"d1"}) == verdict(obj, set()), obj
