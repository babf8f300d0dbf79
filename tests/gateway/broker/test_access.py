"""Access control in the broker core: session owners (kept across restarts), subscriptions whose
messages are checked one by one, a CONNECT the network layer did not authenticate, and the
bridge's own check that a device writes only its own records."""

from __future__ import annotations

import pytest

from ferry.gateway.auth.access import AccessControl
from ferry.gateway.auth.acl import Access, Acl, AclRule, Action
from ferry.gateway.auth.identity import Identity, Role
from ferry.gateway.bridge.bridge import publisher_owns_topic
from ferry.gateway.broker.config import SessionPolicy
from ferry.gateway.broker.recovery import restore
from ferry.gateway.broker.stats import DropReason
from ferry.gateway.mqtt import Connack, Connect, Publish, ReasonCode, Suback, Subscribe, Subscription
from ferry.gateway.store import records as rec
from tests.gateway.broker.harness import V5, Client, Harness
from tests.gateway.broker.test_recovery import replay

OPS = Identity("ops", Role.OPERATOR)
ROOT = Identity("root", Role.ADMIN)
DEV1 = Identity("dev-1", Role.DEVICE)
USERS = {"ops": Role.OPERATOR, "root": Role.ADMIN, "dev-1": Role.DEVICE}
HIDE = AclRule(Access.DENY, Action.SUBSCRIBE, "ferry/+/+/secret")


def access(rules: tuple[AclRule, ...] = ()) -> AccessControl:
    return AccessControl(Acl(rules), USERS.__contains__, lambda user: USERS.get(user, Role.ADMIN))


def connack(client) -> Connack:
    return next(p for p in client.received() if isinstance(p, Connack))


def test_a_connect_the_network_layer_did_not_authenticate_is_refused() -> None:
    h = Harness(access=access())
    assert connack(h.client("x")).reason_code == ReasonCode.NOT_AUTHORIZED


def test_the_maker_of_a_session_owns_it_across_a_restart() -> None:
    h = Harness(access=access())
    h.client("console", clean=False, identity=OPS).drop()
    saved = [r for _, r in h.journal.records if isinstance(r, rec.SessionSaved)]
    assert saved[-1].owner == "ops"
    fresh = Harness(access=access())
    restore(fresh.broker, replay(r for _, r in h.journal.records), fresh.now)
    assert connack(fresh.client("console", clean=False, identity=ROOT)).reason_code == ReasonCode.NOT_AUTHORIZED
    assert "console" in fresh.broker.sessions  # not ended by the refused clean start either
    assert connack(fresh.client("console", clean=False, identity=OPS)).session_present


def test_a_session_from_before_access_control_is_adopted_by_its_next_client() -> None:
    old = Harness()  # no access control: the record has no owner
    old.client("console", clean=False).drop()
    state = replay(r for _, r in old.journal.records)
    assert state.sessions["console"].owner is None
    h = Harness(access=access())
    restore(h.broker, state, h.now)
    assert connack(h.client("console", clean=False, identity=OPS)).session_present
    assert h.broker.sessions["console"].owner == "ops"
    h.broker.sessions["console"].connection = None
    assert connack(h.client("console", clean=False, identity=ROOT)).reason_code == ReasonCode.NOT_AUTHORIZED


@pytest.mark.parametrize("owner", [None, "", "ops"])
def test_session_saved_keeps_its_owner_through_the_codec(owner: str | None) -> None:
    frame = rec.encode_record(rec.SessionSaved("c", 4, 60, owner))
    assert rec.decode_body(frame[8], frame[9:]) == rec.SessionSaved("c", 4, 60, owner)


def publish_hidden_and_open(h: Harness) -> None:
    writer = h.client("writer", identity=ROOT)
    writer.send(Publish("ferry/s/d/secret", b"hidden", 1, packet_id=1))
    writer.send(Publish("ferry/s/d/telemetry", b"open", 1, packet_id=2))
    h.commit()


def test_a_subscription_overlapping_a_deny_rule_gets_its_messages_checked() -> None:
    h = Harness(access=access((HIDE,)))
    reader = h.client("reader", clean=False, identity=OPS)
    reader.send(Subscribe(1, (Subscription("ferry/#", 1),)))
    h.commit()
    assert [p.reason_codes for p in reader.received() if isinstance(p, Suback)] == [(ReasonCode.GRANTED_QOS_1,)]
    publish_hidden_and_open(h)
    assert [p.payload for p in reader.received() if isinstance(p, Publish)] == [b"open"]
    assert h.broker.access.denied["read"] == 1
    # After a restart (the reader offline) the check still applies to what is queued for it.
    reader.drop()
    fresh = Harness(access=access((HIDE,)))
    restore(fresh.broker, replay(r for _, r in h.journal.records), fresh.now)
    assert fresh.broker.sessions["reader"].read_checked
    publish_hidden_and_open(fresh)
    assert [d.message.payload for d in fresh.broker.sessions["reader"].queue] == [b"open"]


@pytest.mark.parametrize("topic, publisher, admitted", [
    ("ferry/s/dev-1/telemetry", "dev-1", True),
    ("ferry/s/dev-2/telemetry", "dev-1", False),
    ("ferry/s/dev-2/status", "ops", False),
    ("ferry/s/dev-2/cmd", "ops", True),  # commands are not produced anyway
    ("ferry/s/dev-2/telemetry", None, True),  # anonymous: only where allow_anonymous lets it in
    ("ferry/dev-1", "dev-1", False),
])
def test_the_bridge_admits_only_a_devices_own_topics(topic: str, publisher: str | None, admitted: bool) -> None:
    assert publisher_owns_topic(topic, publisher) is admitted


def test_a_session_policy_refusing_a_publisher_drops_the_message_for_that_session_only() -> None:
    rule = AclRule(Access.ALLOW, Action.PUBLISH, "ferry/+/+/telemetry", "user:ops")  # a too wide rule
    h = Harness(access=access((rule,)))
    h.broker.set_session_policy("$bridge", SessionPolicy(100, 1 << 20, admits=publisher_owns_topic))
    readers = [h.client("watcher", identity=OPS), internal_client(h, "$bridge")]
    for reader in readers:
        reader.send(Subscribe(1, (Subscription("ferry/#", 1),)))
        h.commit()
        reader.received()
    ops = h.client("ops-tool", identity=OPS)
    ops.send(Publish("ferry/s/dev-1/telemetry", b"forged", 1, packet_id=1))
    h.commit()
    assert [[p.payload for p in r.received() if isinstance(p, Publish)] for r in readers] == [[b"forged"], []]
    assert h.broker.stats.dropped[DropReason.NOT_ADMITTED] == 1


def internal_client(h: Harness, client_id: str) -> Client:
    client = Client(h, V5)
    client.conn.internal = True
    client.send(Connect(client_id, V5, True, 60))
    h.commit()
    return client


def test_publish_answers_are_the_acls_remembered_per_identity_client_and_topic(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry.gateway.auth import access as access_module
    monkeypatch.setattr(access_module, "PUBLISH_ANSWERS_MAX", 4)
    control = access((AclRule(Access.DENY, Action.PUBLISH, "ferry/+/+/cmd"),))
    asked: list[tuple[object, ...]] = []
    acl = control.acl
    allows = acl.allows

    class Counted:
        def allows(self, *args):
            asked.append(args)
            return acl.allows(*args)

    control.acl = Counted()
    cases = [(DEV1, "dev-1", "ferry/s/dev-1/telemetry"), (DEV1, "dev-1", "ferry/s/dev-1/cmd"),
             (OPS, "ops", "ferry/s/dev-1/cmd"), (ROOT, "root", "ferry/s/dev-1/telemetry")]
    expected = [allows(*case[:2], Action.PUBLISH, case[2]) for case in cases]
    for _ in range(3):
        assert [control.may_publish(*case) for case in cases] == expected
    assert len(asked) == 4  # once each, then remembered
    control.may_publish(DEV1, "dev-1", "ferry/s/dev-1/reply")  # a fifth: the memory is full, starts again
    assert control.may_publish(*cases[0]) == expected[0] and len(asked) == 6
