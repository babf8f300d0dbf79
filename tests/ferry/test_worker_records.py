"""What the analytics worker publishes (ferry/worker_records.py) against its golden vectors."""

from __future__ import annotations

import pytest

from ferry.contract import ContractError
from ferry.worker_records import (
    ALERTS_TOPIC, HEALTH_TOPIC, SERIES_TOPICS, AlertRecord, HealthChange, SeriesPoint, encode_alert,
    encode_health_change, encode_series_point, parse_alert, parse_health_change, parse_series_point,
)
from tests.vectors import load as load_vectors

WORKER = load_vectors("contract/worker_records.json")

OUTPUTS = {
    "series": (SeriesPoint, encode_series_point, parse_series_point),
    "alerts": (AlertRecord, encode_alert, parse_alert),
    "health": (HealthChange, encode_health_change, parse_health_change),
}


def built(record_type: type, fields: dict) -> object:
    """The record a vector describes (JSON lists are the records' tuples)."""
    return record_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


WORKER_VALID = [(kind, case) for kind in OUTPUTS for case in WORKER[kind]["valid"]]
WORKER_INVALID = [(kind, case) for kind in OUTPUTS for case in WORKER[kind]["invalid"]]


@pytest.mark.parametrize("kind,case", WORKER_VALID, ids=[f"{k}: {c['name']}" for k, c in WORKER_VALID])
def test_worker_record_decodes_to_the_record(kind: str, case: dict) -> None:
    record_type, _, parse = OUTPUTS[kind]
    record = parse(case["value"].encode())
    assert record == built(record_type, case["record"])
    assert case["key"] == record.device  # keyed by the device id
    assert case["topic"] in {**SERIES_TOPICS, "alerts": ALERTS_TOPIC, "health": HEALTH_TOPIC}.values()


@pytest.mark.parametrize("kind,case", [(k, c) for k, c in WORKER_VALID if c["canonical"]],
                         ids=[f"{k}: {c['name']}" for k, c in WORKER_VALID if c["canonical"]])
def test_worker_record_encodes_byte_for_byte(kind: str, case: dict) -> None:
    record_type, encode, _ = OUTPUTS[kind]
    value = encode(built(record_type, case["record"]))
    assert value == case["value"].encode("utf-8")
    assert b"__faust" not in value and value.startswith(b'{"v":1,')


@pytest.mark.parametrize("kind,case", WORKER_INVALID, ids=[f"{k}: {c['name']}" for k, c in WORKER_INVALID])
def test_invalid_worker_record_names_the_field(kind: str, case: dict) -> None:
    _, _, parse = OUTPUTS[kind]
    with pytest.raises(ContractError) as info:
        parse(case["value"].encode())
    assert info.value.field == case["field"]


def test_the_series_topics_follow_the_window_kinds() -> None:
    assert SERIES_TOPICS == {"1m": "ferry.series.1m", "5m": "ferry.series.5m"}
    for case in WORKER["series"]["valid"]:
        assert case["topic"] == SERIES_TOPICS[case["record"]["window"]]


def test_a_non_finite_number_is_never_encoded() -> None:
    point = SeriesPoint("dev-01", "1m", "temp_c", 0, 60_000, 2, 1.0, float("inf"), float("inf"), 1.0)
    with pytest.raises(ContractError) as info:
        encode_series_point(point)
    assert info.value.field == "max"
