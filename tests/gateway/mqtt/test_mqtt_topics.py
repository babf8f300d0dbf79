"""Topic name / filter validation, shared subscriptions and matching (section 4.7, 4.8)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.gateway.mqtt import (
    ProtocolError,
    ProtocolVersion,
    ReasonCode,
    split_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5


@pytest.mark.parametrize("name", ["a", "/", "a/b", "/finance", "sport/tennis/player1", "$SYS/x", "a//b", "ü/€"])
def test_valid_topic_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize(
    "name, rule",
    [
        ("", "MQTT-4.7.3-1"),
        ("a/+", "MQTT-3.3.2-2"),
        ("#", "MQTT-3.3.2-2"),
        ("a\x00b", "MQTT-4.7.3-2"),
        ("x" * 65_536, "MQTT-4.7.3-3"),
        ("€" * 21_846, "MQTT-4.7.3-3"),  # 65,538 bytes in UTF-8
    ],
)
def test_invalid_topic_names(name: str, rule: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_topic_name(name)
    assert info.value.reason_code == ReasonCode.TOPIC_NAME_INVALID
    assert info.value.rule == rule


def test_longest_topic_name_is_valid() -> None:
    validate_topic_name("x" * 65_535)


# Valid and invalid examples from section 4.7.1.
@pytest.mark.parametrize(
    "topic_filter",
    ["sport/tennis/player1/#", "sport/#", "#", "+", "+/tennis/#", "sport/+/player1", "/+", "+/+", "a//+",
     "$SYS/#", "$share/g/a/#", "$share/g/#", "$share/grp/+/x", "$share"],
)
def test_valid_topic_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter, V311)
    validate_topic_filter(topic_filter, V5)


@pytest.mark.parametrize(
    "topic_filter, v311_rule, v5_rule",
    [
        ("sport/tennis#", "MQTT-4.7.1-2", "MQTT-4.7.1-1"),
        ("sport/tennis/#/ranking", "MQTT-4.7.1-2", "MQTT-4.7.1-1"),
        ("##", "MQTT-4.7.1-2", "MQTT-4.7.1-1"),
        ("sport+", "MQTT-4.7.1-3", "MQTT-4.7.1-2"),
        ("+a/b", "MQTT-4.7.1-3", "MQTT-4.7.1-2"),
        ("", "MQTT-4.7.3-1", "MQTT-4.7.3-1"),
        ("a\x00", "MQTT-4.7.3-2", "MQTT-4.7.3-2"),
        ("$share//a", "MQTT-4.8.2-1", "MQTT-4.8.2-1"),
        ("$share/", "MQTT-4.8.2-1", "MQTT-4.8.2-1"),
        ("$share/g", "MQTT-4.8.2-2", "MQTT-4.8.2-2"),
        ("$share/g/", "MQTT-4.8.2-2", "MQTT-4.8.2-2"),
        ("$share/g#/a", "MQTT-4.8.2-2", "MQTT-4.8.2-2"),
        ("$share/+/a", "MQTT-4.8.2-2", "MQTT-4.8.2-2"),
        ("$share/g/a#", "MQTT-4.7.1-2", "MQTT-4.7.1-1"),
    ],
)
def test_invalid_topic_filters(topic_filter: str, v311_rule: str, v5_rule: str) -> None:
    for version, rule in ((V311, v311_rule), (V5, v5_rule)):
        with pytest.raises(ProtocolError) as info:
            validate_topic_filter(topic_filter, version)
        assert info.value.reason_code == ReasonCode.TOPIC_FILTER_INVALID
        assert info.value.rule == rule


@pytest.mark.parametrize(
    "topic_filter, expected",
    [
        ("a/b", (None, "a/b")),
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/consumer1/sport/tennis/+", ("consumer1", "sport/tennis/+")),
        ("$share/g//", ("g", "/")),
        ("$SHARE/g/a", (None, "$SHARE/g/a")),
        ("$shared/g/a", (None, "$shared/g/a")),
    ],
)
def test_split_shared(topic_filter: str, expected: tuple[str | None, str]) -> None:
    assert split_shared(topic_filter) == expected


@pytest.mark.parametrize("bad", ["$share/", "$share//a", "$share/g", "$share/g/", "$share/a+b/c"])
def test_split_shared_rejects_bad_share_names(bad: str) -> None:
    with pytest.raises(ProtocolError) as info:
        split_shared(bad)
    assert info.value.rule in ("MQTT-4.8.2-1", "MQTT-4.8.2-2")


# Examples from sections 4.7.1.2, 4.7.1.3 and 4.7.2.
@pytest.mark.parametrize(
    "topic_filter, topic, expected",
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "sport/tennis", True),
        ("#", "/", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player2", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("+", "finance", True),
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/+/c", "a//c", True),
        ("#", "$SYS/monitor/Clients", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/Clients", "$SYS/monitor/Clients", True),
        ("a/#", "a/$x", True),
        ("Sport", "sport", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def _reference_match(topic_filter: str, topic: str) -> bool:
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    pattern = ""
    for i, part in enumerate(topic_filter.split("/")):
        if part == "#":
            pattern = pattern[:-1] + "(/.*)?" if i else ".*"
            break
        pattern += ("[^/]*" if part == "+" else re.escape(part)) + "/"
    else:
        pattern = pattern[:-1]
    return re.fullmatch(pattern, topic, re.DOTALL) is not None


_level = st.sampled_from(["a", "b", "", "$x", "+"])
_filters = st.builds(
    lambda levels, hash_: "/".join(levels + (["#"] if hash_ else [])) or "#",
    st.lists(_level, max_size=4),
    st.booleans(),
)
_topics = st.lists(st.sampled_from(["a", "b", "", "$x", "$SYS"]), min_size=1, max_size=5).map("/".join).filter(bool)


@settings(max_examples=300, deadline=None)
@given(_filters, _topics)
def test_topic_matches_agrees_with_a_regex_reference(topic_filter: str, topic: str) -> None:
    validate_topic_filter(topic_filter)
    assert topic_matches(topic_filter, topic) == _reference_match(topic_filter, topic)
