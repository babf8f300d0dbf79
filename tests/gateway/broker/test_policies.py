"""Session policies (gateway/broker/policies.py): which QoS 1/2 topics a session ignores, remembered
per topic, and forgotten when its policy changes."""

from __future__ import annotations

from ferry.gateway.broker import policies
from ferry.gateway.broker.config import SessionPolicy
from ferry.gateway.broker.policies import SessionPolicies

LIMITS = {"max_queued_messages": 10, "max_queued_bytes": 1000}


def test_ignored_topics_are_matched_once_and_forgotten_with_the_policy(monkeypatch) -> None:
    calls = []
    real = policies.topic_matches
    monkeypatch.setattr(policies, "topic_matches", lambda f, t: calls.append(t) or real(f, t))
    p = SessionPolicies()
    assert not p.ignores("bridge", "ferry/s/d/cmd")  # no policy
    p.set("bridge", SessionPolicy(**LIMITS, ignored=("ferry/+/+/cmd", "ferry/+/+/ota")))
    assert [p.ignores("bridge", t) for t in ("ferry/s/d/cmd", "ferry/s/d/ota", "ferry/s/d/telemetry")] == \
        [True, True, False]
    matched = len(calls)
    assert [p.ignores("bridge", t) for t in ("ferry/s/d/cmd", "ferry/s/d/ota", "ferry/s/d/telemetry")] == \
        [True, True, False]
    assert len(calls) == matched  # remembered
    p.set("bridge", SessionPolicy(**LIMITS, ignored=("ferry/+/+/telemetry",)))
    assert [p.ignores("bridge", t) for t in ("ferry/s/d/cmd", "ferry/s/d/telemetry")] == [False, True]
    assert not p.ignores("other", "ferry/s/d/telemetry")


def test_the_remembered_topics_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(policies, "IGNORED_CACHE_TOPICS", 3)
    p = SessionPolicies()
    p.set("bridge", SessionPolicy(**LIMITS, ignored=("a/#",)))
    answers = [p.ignores("bridge", f"{first}/{i}") for i in range(10) for first in ("a", "b")]
    assert answers == [True, False] * 10
    assert len(p._ignored["bridge"]) <= 3
