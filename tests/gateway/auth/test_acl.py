"""The ACL: role defaults, explicit rules, placeholders and the filter algebra behind SUBSCRIBE."""

from __future__ import annotations

import itertools

import pytest

from ferry.gateway.auth.acl import (
    DEFAULT_RULES,
    Access,
    Acl,
    AclRule,
    Action,
    filter_within,
    filters_overlap,
    parse_rule,
)
from ferry.gateway.auth.identity import Identity, Role
from ferry.gateway.mqtt import split_shared, topic_matches

PUB = Action.PUBLISH
SUB = Action.SUBSCRIBE
ALLOW = Access.ALLOW
DENY = Access.DENY

DEVICE = Identity("dev1", Role.DEVICE)
OPERATOR = Identity("alice", Role.OPERATOR)
ADMIN = Identity("root", Role.ADMIN)
GUEST = Identity("guest", Role.NONE)
ANON = Identity(None, Role.NONE)
ANON_DEVICE = Identity(None, Role.DEVICE)


def case(identity: Identity, action: Action, topic: str, allowed: bool, id: str, client_id: str = "cid"):
    return pytest.param(identity, client_id, action, topic, allowed, id=id)


# --- role defaults -------------------------------------------------------------------------------

DEFAULT_CASES = [
    # device: its own telemetry, status and replies out; its own commands in; nothing else.
    case(DEVICE, PUB, "ferry/site1/dev1/telemetry", True, "device-pub-own-telemetry"),
    case(DEVICE, PUB, "ferry/site1/dev1/status", True, "device-pub-own-status"),
    case(DEVICE, PUB, "ferry/site1/dev1/reply", True, "device-pub-own-reply"),
    case(DEVICE, PUB, "ferry/site2/dev1/telemetry", True, "device-pub-own-telemetry-any-site"),
    case(DEVICE, PUB, "ferry/site1/dev2/telemetry", False, "device-pub-other-device-telemetry"),
    case(DEVICE, PUB, "ferry/site1/dev10/telemetry", False, "device-pub-name-prefix-is-not-own"),
    case(DEVICE, PUB, "ferry/site1/dev1/cmd", False, "device-pub-own-cmd"),
    case(DEVICE, PUB, "ferry/site1/dev1/telemetry/x", False, "device-pub-below-telemetry"),
    case(DEVICE, PUB, "ferry/dev1/telemetry", False, "device-pub-missing-site-level"),
    case(DEVICE, PUB, "other/site1/dev1/telemetry", False, "device-pub-outside-ferry"),
    case(DEVICE, PUB, "ferry/site1/dev1/config", False, "device-pub-unlisted-leaf"),
    case(DEVICE, SUB, "ferry/site1/dev1/cmd", True, "device-sub-own-cmd"),
    case(DEVICE, SUB, "ferry/site1/dev1/ota", True, "device-sub-own-ota"),
    case(DEVICE, SUB, "ferry/site1/dev2/ota", False, "device-sub-other-device-ota"),
    case(DEVICE, PUB, "ferry/site1/dev1/ota", False, "device-pub-own-ota"),
    case(DEVICE, SUB, "ferry/+/dev1/cmd", True, "device-sub-own-cmd-any-site"),
    case(DEVICE, SUB, "ferry/site1/dev2/cmd", False, "device-sub-other-device-cmd"),
    case(DEVICE, SUB, "ferry/site1/+/cmd", False, "device-sub-every-device-cmd"),
    case(DEVICE, SUB, "ferry/site1/dev1/cmd/#", False, "device-sub-below-own-cmd"),
    case(DEVICE, SUB, "ferry/site1/dev1/telemetry", False, "device-sub-own-telemetry"),
    case(DEVICE, SUB, "ferry/#", False, "device-sub-ferry-all"),
    case(DEVICE, SUB, "#", False, "device-sub-everything"),
    case(DEVICE, SUB, split_shared("$share/g/ferry/site1/dev1/cmd")[1], True, "device-sub-shared-own-cmd"),
    case(DEVICE, SUB, split_shared("$share/g/ferry/+/+/cmd")[1], False, "device-sub-shared-all-cmd"),
    case(ANON_DEVICE, PUB, "ferry/site1/None/telemetry", False, "anonymous-device-has-no-own-topics"),
    case(ANON_DEVICE, SUB, "ferry/site1/None/cmd", False, "anonymous-device-sub-none"),
    # operator: commands out, everything under ferry/ in.
    case(OPERATOR, PUB, "ferry/site1/dev1/cmd", True, "operator-pub-cmd"),
    case(OPERATOR, PUB, "ferry/site1/dev1/ota", True, "operator-pub-ota"),
    case(OPERATOR, PUB, "ferry/site1/dev1/telemetry", False, "operator-pub-telemetry"),
    case(OPERATOR, PUB, "ferry/site1/dev1/cmd/x", False, "operator-pub-below-cmd"),
    case(OPERATOR, PUB, "ferry/dev1/cmd", False, "operator-pub-short-cmd"),
    case(OPERATOR, SUB, "ferry/#", True, "operator-sub-ferry-all"),
    case(OPERATOR, SUB, "ferry/+/+/telemetry", True, "operator-sub-all-telemetry"),
    case(OPERATOR, SUB, "ferry", True, "operator-sub-ferry-parent-level"),
    case(OPERATOR, SUB, "#", False, "operator-sub-everything"),
    case(OPERATOR, SUB, "+/site1/#", False, "operator-sub-wildcard-first-level"),
    case(OPERATOR, SUB, "ferrys/#", False, "operator-sub-other-prefix"),
    case(OPERATOR, SUB, "$SYS/#", False, "operator-sub-sys"),
    case(OPERATOR, SUB, split_shared("$share/workers/ferry/+/+/telemetry")[1], True, "operator-sub-shared"),
    case(OPERATOR, SUB, split_shared("$share/workers/#")[1], False, "operator-sub-shared-everything"),
    # admin: everything, $SYS/# included, but '#' never reaches '$' topics.
    case(ADMIN, SUB, "#", True, "admin-sub-everything"),
    case(ADMIN, SUB, "+/x", True, "admin-sub-wildcard-first-level"),
    case(ADMIN, SUB, "$SYS/#", True, "admin-sub-sys"),
    case(ADMIN, SUB, "$SYS/broker/clients", True, "admin-sub-sys-topic"),
    case(ADMIN, SUB, "$other/x", False, "admin-sub-other-dollar-topic"),
    case(ADMIN, PUB, "anything/at/all", True, "admin-pub-anything"),
    case(ADMIN, PUB, "ferry/site1/dev1/telemetry", True, "admin-pub-device-topic"),
    case(ADMIN, PUB, "$SYS/broker/clients", False, "admin-pub-sys"),
    # none: nothing, named or anonymous.
    case(GUEST, PUB, "ferry/site1/guest/telemetry", False, "none-pub"),
    case(GUEST, SUB, "ferry/site1/guest/cmd", False, "none-sub"),
    case(ANON, PUB, "a", False, "anonymous-pub"),
    case(ANON, SUB, "#", False, "anonymous-sub"),
]


@pytest.mark.parametrize("identity, client_id, action, topic, allowed", DEFAULT_CASES)
def test_role_defaults(identity: Identity, client_id: str, action: Action, topic: str, allowed: bool) -> None:
    assert Acl().allows(identity, client_id, action, topic) is allowed


def test_without_defaults_nothing_is_allowed() -> None:
    acl = Acl(defaults=False)
    assert not acl.allows(DEVICE, "cid", PUB, "ferry/site1/dev1/telemetry")
    assert not acl.allows(ADMIN, "cid", SUB, "#")


def test_default_rules_table() -> None:
    def rules(role: Role) -> set[tuple[Access, Action | None, str]]:
        return {(r.access, r.action, r.topic) for r in DEFAULT_RULES[role]}

    assert rules(Role.DEVICE) == {
        (ALLOW, PUB, "ferry/+/%u/telemetry"),
        (ALLOW, PUB, "ferry/+/%u/status"),
        (ALLOW, PUB, "ferry/+/%u/reply"),
        (ALLOW, SUB, "ferry/+/%u/cmd"),
        (ALLOW, SUB, "ferry/+/%u/ota"),
    }
    assert rules(Role.OPERATOR) == {(ALLOW, PUB, "ferry/+/+/cmd"), (ALLOW, PUB, "ferry/+/+/ota"), (ALLOW, SUB, "ferry/#")}
    assert rules(Role.ADMIN) == {(ALLOW, PUB, "#"), (ALLOW, SUB, "#"), (ALLOW, SUB, "$SYS/#")}
    assert rules(Role.NONE) == set()
    assert set(DEFAULT_RULES) == set(Role)


# --- '#' and '$' topics [MQTT-4.7.2-1] ----------------------------------------------------------

EVERYTHING = Acl([AclRule(ALLOW, None, "#")], defaults=False)
PLUS_FIRST = Acl([AclRule(ALLOW, None, "+/x")], defaults=False)


@pytest.mark.parametrize(
    "acl, action, topic, allowed",
    [
        pytest.param(EVERYTHING, PUB, "a/b", True, id="hash-pub-plain"),
        pytest.param(EVERYTHING, PUB, "$SYS/x", False, id="hash-pub-sys"),
        pytest.param(EVERYTHING, SUB, "$SYS/x", False, id="hash-sub-sys-topic"),
        pytest.param(EVERYTHING, SUB, "$SYS/#", False, id="hash-sub-sys-all"),
        pytest.param(EVERYTHING, SUB, "#", True, id="hash-sub-hash"),
        pytest.param(PLUS_FIRST, PUB, "a/x", True, id="plus-pub-plain"),
        pytest.param(PLUS_FIRST, PUB, "$SYS/x", False, id="plus-pub-sys"),
        pytest.param(PLUS_FIRST, SUB, "$SYS/x", False, id="plus-sub-sys"),
        pytest.param(PLUS_FIRST, SUB, "+/x", True, id="plus-sub-plus"),
    ],
)
def test_wildcards_do_not_reach_dollar_topics(acl: Acl, action: Action, topic: str, allowed: bool) -> None:
    assert acl.allows(ANON, "cid", action, topic) is allowed


# --- placeholders --------------------------------------------------------------------------------

USER_RULE = Acl([AclRule(ALLOW, None, "user/%u/#")], defaults=False)
CLIENT_RULE = Acl([AclRule(ALLOW, None, "c/%c/#")], defaults=False)


@pytest.mark.parametrize(
    "acl, identity, client_id, action, topic, allowed",
    [
        pytest.param(USER_RULE, Identity("bob", Role.NONE), "c", PUB, "user/bob/x", True, id="user-own"),
        pytest.param(USER_RULE, Identity("bob", Role.NONE), "c", SUB, "user/bob/#", True, id="user-own-sub"),
        pytest.param(USER_RULE, Identity("bob", Role.NONE), "c", PUB, "user/eve/x", False, id="user-other"),
        pytest.param(USER_RULE, Identity("bob", Role.NONE), "c", SUB, "user/+/#", False, id="user-sub-all"),
        pytest.param(USER_RULE, Identity("+", Role.NONE), "c", SUB, "user/+/#", False, id="user-plus-not-wildcard"),
        pytest.param(USER_RULE, Identity("+", Role.NONE), "c", SUB, "user/+/x", False, id="user-plus-sub-level"),
        pytest.param(USER_RULE, Identity("#", Role.NONE), "c", SUB, "user/#", False, id="user-hash-not-wildcard"),
        pytest.param(USER_RULE, Identity("a/b", Role.NONE), "c", PUB, "user/a/b/x", False, id="user-slash-pub"),
        pytest.param(USER_RULE, Identity("a/b", Role.NONE), "c", SUB, "user/a/b/#", False, id="user-slash-sub"),
        pytest.param(USER_RULE, Identity("", Role.NONE), "c", PUB, "user//x", False, id="user-empty-pub"),
        pytest.param(USER_RULE, Identity("", Role.NONE), "c", SUB, "user//#", False, id="user-empty-sub"),
        pytest.param(USER_RULE, Identity("a\x00", Role.NONE), "c", SUB, "user/a\x00/#", False, id="user-nul"),
        pytest.param(USER_RULE, ANON, "c", PUB, "user/None/x", False, id="user-anonymous-pub"),
        pytest.param(USER_RULE, ANON, "c", SUB, "user/None/#", False, id="user-anonymous-sub"),
        pytest.param(USER_RULE, ANON, "c", PUB, "user//x", False, id="user-anonymous-empty-level"),
        pytest.param(CLIENT_RULE, ANON, "k1", PUB, "c/k1/x", True, id="client-anonymous-own"),
        pytest.param(CLIENT_RULE, ANON, "k1", PUB, "c/k2/x", False, id="client-other"),
        pytest.param(CLIENT_RULE, ANON, "k1", SUB, "c/k1/#", True, id="client-own-sub"),
        pytest.param(CLIENT_RULE, ANON, "+", SUB, "c/+/#", False, id="client-plus-not-wildcard"),
        pytest.param(CLIENT_RULE, ANON, "", PUB, "c//x", False, id="client-empty"),
        pytest.param(CLIENT_RULE, ANON, "a/b", PUB, "c/a/b/x", False, id="client-slash"),
        # The same guard protects the device defaults.
        pytest.param(Acl(), Identity("+", Role.DEVICE), "c", SUB, "ferry/+/+/cmd", False, id="device-user-plus"),
        pytest.param(Acl(), Identity("#", Role.DEVICE), "c", SUB, "ferry/s/#", False, id="device-user-hash"),
        pytest.param(
            Acl(), Identity("a/b", Role.DEVICE), "c", PUB, "ferry/s/a/b/telemetry", False, id="device-user-slash"
        ),
        pytest.param(Acl(), Identity("", Role.DEVICE), "c", PUB, "ferry/s//telemetry", False, id="device-user-empty"),
    ],
)
def test_placeholders(
    acl: Acl, identity: Identity, client_id: str, action: Action, topic: str, allowed: bool
) -> None:
    assert acl.allows(identity, client_id, action, topic) is allowed


def test_unusable_placeholder_value_skips_a_deny_rule_too() -> None:
    # "The rule does not match" holds for deny rules as well: the decision falls through.
    acl = Acl([AclRule(DENY, PUB, "x/%u/#"), AclRule(ALLOW, PUB, "x/#")], defaults=False)
    assert not acl.allows(Identity("bob", Role.NONE), "c", PUB, "x/bob/1")
    assert acl.allows(Identity("bob", Role.NONE), "c", PUB, "x/eve/1")
    assert acl.allows(Identity("", Role.NONE), "c", PUB, "x//1")


# --- explicit rules ------------------------------------------------------------------------------

BOB = Identity("bob", Role.NONE)
CAROL = Identity("carol", Role.NONE)

DENY_DEVICE_TELEMETRY = Acl([AclRule(DENY, PUB, "ferry/+/+/telemetry", "device")])
NO_SUBSCRIBE = Acl([AclRule(DENY, SUB, "test/nosubscribe")])
PUBLIC = Acl([AclRule(ALLOW, PUB, "public/#")])
ALLOW_THEN_DENY = Acl([AclRule(ALLOW, PUB, "a/#"), AclRule(DENY, PUB, "a/b")], defaults=False)
DENY_THEN_ALLOW = Acl([AclRule(DENY, PUB, "a/b"), AclRule(ALLOW, PUB, "a/#")], defaults=False)
BOB_ONLY = Acl([AclRule(ALLOW, SUB, "#", "user:bob")])
ANON_ONLY = Acl([AclRule(ALLOW, PUB, "anon/#", "anonymous")])
OPERATORS_ONLY = Acl([AclRule(ALLOW, PUB, "ops/#", "operator")])
BOTH_ACTIONS = Acl([AclRule(ALLOW, None, "shared/#")], defaults=False)
SUBSCRIBE_ONLY = Acl([AclRule(ALLOW, SUB, "shared/#")], defaults=False)
EXACT_SUB = Acl([AclRule(ALLOW, SUB, "a/b")], defaults=False)
DENY_ALL_SUB = Acl([AclRule(DENY, SUB, "#")])


@pytest.mark.parametrize(
    "acl, identity, action, topic, allowed",
    [
        pytest.param(DENY_DEVICE_TELEMETRY, DEVICE, PUB, "ferry/s/dev1/telemetry", False, id="deny-beats-default"),
        pytest.param(DENY_DEVICE_TELEMETRY, DEVICE, PUB, "ferry/s/dev1/status", True, id="deny-leaves-rest"),
        pytest.param(DENY_DEVICE_TELEMETRY, ADMIN, PUB, "ferry/s/dev1/telemetry", True, id="deny-role-scoped"),
        pytest.param(NO_SUBSCRIBE, ADMIN, SUB, "test/nosubscribe", False, id="deny-sub-exact"),
        pytest.param(NO_SUBSCRIBE, ADMIN, SUB, "test/+", False, id="deny-sub-plus-overlaps"),
        pytest.param(NO_SUBSCRIBE, ADMIN, SUB, "#", False, id="deny-sub-hash-overlaps"),
        pytest.param(NO_SUBSCRIBE, ADMIN, SUB, "test/nosubscribe/#", False, id="deny-sub-parent-overlaps"),
        pytest.param(NO_SUBSCRIBE, ADMIN, SUB, "test/other", True, id="deny-sub-disjoint"),
        pytest.param(NO_SUBSCRIBE, ADMIN, SUB, "test/+/x", True, id="deny-sub-deeper-disjoint"),
        pytest.param(NO_SUBSCRIBE, ADMIN, SUB, "$SYS/#", True, id="deny-sub-sys-disjoint"),
        pytest.param(NO_SUBSCRIBE, ADMIN, PUB, "test/nosubscribe", True, id="deny-sub-not-pub"),
        pytest.param(DENY_ALL_SUB, ADMIN, SUB, "$SYS/#", True, id="deny-hash-misses-sys"),
        pytest.param(DENY_ALL_SUB, ADMIN, SUB, "a", False, id="deny-hash-hits-plain"),
        pytest.param(PUBLIC, ANON, PUB, "public/x", True, id="everyone-anonymous-pub"),
        pytest.param(PUBLIC, DEVICE, PUB, "public/x", True, id="everyone-device-pub"),
        pytest.param(PUBLIC, ANON, PUB, "private/x", False, id="everyone-only-listed"),
        pytest.param(PUBLIC, ANON, SUB, "public/x", False, id="everyone-pub-not-sub"),
        pytest.param(ALLOW_THEN_DENY, ANON, PUB, "a/b", True, id="first-match-allow"),
        pytest.param(DENY_THEN_ALLOW, ANON, PUB, "a/b", False, id="first-match-deny"),
        pytest.param(DENY_THEN_ALLOW, ANON, PUB, "a/c", True, id="first-match-falls-through"),
        pytest.param(BOB_ONLY, BOB, SUB, "#", True, id="user-name-matches"),
        pytest.param(BOB_ONLY, CAROL, SUB, "#", False, id="user-name-other"),
        pytest.param(BOB_ONLY, ANON, SUB, "#", False, id="user-name-anonymous"),
        pytest.param(BOB_ONLY, Identity("user:bob", Role.NONE), SUB, "#", False, id="user-name-literal-prefix"),
        pytest.param(ANON_ONLY, ANON, PUB, "anon/x", True, id="anonymous-matches"),
        pytest.param(ANON_ONLY, BOB, PUB, "anon/x", False, id="anonymous-not-named"),
        pytest.param(OPERATORS_ONLY, OPERATOR, PUB, "ops/x", True, id="role-matches"),
        pytest.param(OPERATORS_ONLY, DEVICE, PUB, "ops/x", False, id="role-other"),
        pytest.param(OPERATORS_ONLY, ANON, PUB, "ops/x", False, id="role-anonymous-none"),
        pytest.param(BOTH_ACTIONS, ANON, PUB, "shared/x", True, id="all-pub"),
        pytest.param(BOTH_ACTIONS, ANON, SUB, "shared/#", True, id="all-sub"),
        pytest.param(SUBSCRIBE_ONLY, ANON, PUB, "shared/x", False, id="sub-rule-not-pub"),
        pytest.param(EXACT_SUB, ANON, SUB, "a/+", False, id="allow-sub-needs-containment"),
        pytest.param(EXACT_SUB, ANON, SUB, "a/b", True, id="allow-sub-exact"),
    ],
)
def test_explicit_rules(acl: Acl, identity: Identity, action: Action, topic: str, allowed: bool) -> None:
    assert acl.allows(identity, "cid", action, topic) is allowed


def test_anonymous_role_is_matched_by_role_name() -> None:
    # An anonymous client still has a role (the one the config gives anonymous clients).
    acl = Acl([AclRule(ALLOW, PUB, "x", "none")], defaults=False)
    assert acl.allows(ANON, "cid", PUB, "x")
    assert not acl.allows(Identity(None, Role.DEVICE), "cid", PUB, "x")


# --- filter algebra ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic_filter, pattern, within",
    [
        ("a", "a", True),
        ("a", "b", False),
        ("a", "#", True),
        ("#", "a", False),
        ("#", "#", True),
        ("a", "a/#", True),
        ("a/#", "a", False),
        ("a/b/c", "a/#", True),
        ("a/#", "a/#", True),
        ("a/#", "a/+", False),
        ("a/#", "a/+/#", False),
        ("a/+", "a/#", True),
        ("a/+", "a/b", False),
        ("a/b", "a/+", True),
        ("a/+", "a/+", True),
        ("+/+", "a/#", False),
        ("a/+", "+/+", True),
        ("a", "+/+", False),
        ("a/b/c", "+/+", False),
        ("+", "+/#", True),
        ("#", "+/#", True),
        ("a/#", "+/+/#", False),
        ("a//b", "a/+/b", True),
        ("$SYS/#", "#", False),
        ("$SYS/x", "#", False),
        ("$SYS/x", "+/x", False),
        ("$SYS/x", "$SYS/#", True),
        ("$SYS/#", "$SYS/#", True),
        ("a/$SYS", "a/+", True),
        ("+/x", "#", True),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_filter_within(topic_filter: str, pattern: str, within: bool) -> None:
    assert filter_within(topic_filter, pattern) is within


@pytest.mark.parametrize(
    "a, b, overlap",
    [
        ("#", "a", True),
        ("a/#", "a", True),
        ("a/+", "a", False),
        ("a/+/#", "a", False),
        ("+/+", "a/#", True),
        ("+/+", "a/b/c", False),
        ("a/b", "a/c", False),
        ("a/+", "+/b", True),
        ("a/+/c", "+/b/d", False),
        ("$SYS/#", "#", False),
        ("$SYS/x", "+/x", False),
        ("$SYS/x", "$SYS/+", True),
        ("+", "$SYS", False),
        ("#", "#", True),
        ("+", "#", True),
        ("a/$x", "a/#", True),
        ("test/nosubscribe", "test/+", True),
        ("test/nosubscribe", "test/nosubscribe/#", True),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_filters_overlap(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(a, b) is overlap
    assert filters_overlap(b, a) is overlap


# Exhaustive cross-check against topic_matches over a small universe: filters of up to 3
# levels drawn from a literal, an empty level, a '$' literal and '+' (optionally ending in '#'),
# and every topic name of up to 4 levels over those literals plus two fresh ones, which is
# enough to contain a witness for every (non-)containment and (non-)overlap.
_FILTER_LEVELS = ("a", "", "$s", "+")
_FILTERS = sorted(
    {
        "/".join(levels + tail)
        for n in range(0, 4)
        for levels in itertools.product(_FILTER_LEVELS, repeat=n)
        for tail in ((), ("#",))
        if levels or tail
    }
    - {""}
)
_TOPICS = ["/".join(t) for n in range(1, 5) for t in itertools.product(("a", "", "$s", "z", "$z"), repeat=n)]
_MATCHED = {f: frozenset(i for i, t in enumerate(_TOPICS) if topic_matches(f, t)) for f in _FILTERS}


def test_filter_algebra_agrees_with_topic_matches() -> None:
    assert len(_FILTERS) > 100
    wrong = []
    for f, p in itertools.product(_FILTERS, repeat=2):
        if filter_within(f, p) != (_MATCHED[f] <= _MATCHED[p]):
            wrong.append(("within", f, p))
        if filters_overlap(f, p) != bool(_MATCHED[f] & _MATCHED[p]):
            wrong.append(("overlap", f, p))
    assert wrong == []


def test_publish_matching_agrees_with_topic_matches() -> None:
    wrong = [
        (p, t)
        for p in _FILTERS
        for acl in [Acl([AclRule(ALLOW, PUB, p)], defaults=False)]
        for t in _TOPICS
        if acl.allows(ANON, "cid", PUB, t) != topic_matches(p, t)
    ]
    assert wrong == []


def test_subscribe_rules_use_within_for_allow_and_overlap_for_deny() -> None:
    sample = _FILTERS[::7]
    for p in sample:
        allow = Acl([AclRule(ALLOW, SUB, p)], defaults=False)
        deny_first = Acl([AclRule(DENY, SUB, p), AclRule(ALLOW, SUB, "#"), AclRule(ALLOW, SUB, "$s/#")], defaults=False)
        for f in _FILTERS:
            assert allow.allows(ANON, "cid", SUB, f) is filter_within(f, p), (p, f)
            expected = not filters_overlap(f, p) and (filter_within(f, "#") or filter_within(f, "$s/#"))
            assert deny_first.allows(ANON, "cid", SUB, f) is expected, (p, f)


# --- parse_rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, rule",
    [
        pytest.param(
            {"access": "allow", "action": "publish", "topic": "a/#"},
            AclRule(ALLOW, PUB, "a/#", "everyone"),
            id="defaults-to-everyone",
        ),
        pytest.param(
            {"access": "deny", "action": "subscribe", "topic": "test/nosubscribe", "who": "device"},
            AclRule(DENY, SUB, "test/nosubscribe", "device"),
            id="deny-subscribe-role",
        ),
        pytest.param(
            {"access": "allow", "action": "all", "topic": "home/%u/#", "who": "user:bob"},
            AclRule(ALLOW, None, "home/%u/#", "user:bob"),
            id="all-is-none",
        ),
        pytest.param(
            {"access": "allow", "action": "publish", "topic": "c/%c", "who": "anonymous"},
            AclRule(ALLOW, PUB, "c/%c", "anonymous"),
            id="anonymous-client-id",
        ),
        pytest.param(
            {"access": "allow", "action": "publish", "topic": "load/100%"},
            AclRule(ALLOW, PUB, "load/100%", "everyone"),
            id="percent-literal",
        ),
    ],
)
def test_parse_rule(table: dict, rule: AclRule) -> None:
    assert parse_rule("acl[0]", table) == rule


GOOD = {"access": "allow", "action": "publish", "topic": "a/b"}


@pytest.mark.parametrize(
    "table, message",
    [
        pytest.param(
            {**GOOD, "action": "read"},
            "acl[2].action: 'read' is not one of 'publish', 'subscribe', 'all'",
            id="action-unknown",
        ),
        pytest.param(
            {**GOOD, "access": "permit"}, "acl[2].access: 'permit' is not one of 'allow', 'deny'", id="access-unknown"
        ),
        pytest.param({**GOOD, "action": "Publish"}, "acl[2].action: 'Publish' is not one of", id="action-case"),
        pytest.param({"action": "publish", "topic": "a"}, "acl[2].access: missing", id="access-missing"),
        pytest.param({"access": "allow", "topic": "a"}, "acl[2].action: missing", id="action-missing"),
        pytest.param({"access": "allow", "action": "publish"}, "acl[2].topic: missing", id="topic-missing"),
        pytest.param({**GOOD, "topic": 5}, "acl[2].topic: expected a string, got 5", id="topic-type"),
        pytest.param({**GOOD, "who": ["device"]}, "acl[2].who: expected a string", id="who-type"),
        pytest.param({**GOOD, "topics": "a"}, "acl[2].topics: unknown key", id="unknown-key"),
        pytest.param({**GOOD, "topic": ""}, "acl[2].topic: '' is not a valid topic filter", id="topic-empty"),
        pytest.param({**GOOD, "topic": "a/#/b"}, "acl[2].topic: 'a/#/b' is not a valid", id="hash-not-last"),
        pytest.param({**GOOD, "topic": "a/b+"}, "acl[2].topic: 'a/b+' is not a valid", id="plus-in-level"),
        pytest.param({**GOOD, "topic": "a\x00"}, "acl[2].topic:", id="topic-nul"),
        pytest.param(
            {**GOOD, "topic": "ferry/dev-%u/x"}, "acl[2].topic: 'ferry/dev-%u/x': a placeholder", id="mixed-u"
        ),
        pytest.param({**GOOD, "topic": "%c%u"}, "acl[2].topic: '%c%u': a placeholder", id="two-in-level"),
        pytest.param({**GOOD, "topic": "$share/g/a"}, "acl[2].topic: '$share/g/a': rules match the plain", id="share"),
        pytest.param(
            {**GOOD, "topic": "u/%u", "who": "anonymous"}, "acl[2].topic: 'u/%u': a rule with %u never", id="anon-u"
        ),
        pytest.param({**GOOD, "who": "admins"}, "acl[2].who: 'admins' is not one of 'everyone',", id="who-unknown"),
        pytest.param({**GOOD, "who": "user:"}, "acl[2].who: 'user:' is not one of", id="who-user-empty"),
        pytest.param({**GOOD, "who": "Device"}, "acl[2].who: 'Device' is not one of", id="who-case"),
        pytest.param(["allow"], "acl[2]: expected a table, got ['allow']", id="not-a-table"),
    ],
)
def test_parse_rule_errors(table: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_rule("acl[2]", table)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param(AclRule(ALLOW, PUB, "a/#/b"), id="bad-filter"),
        pytest.param(AclRule(ALLOW, PUB, "a/x%u"), id="mixed-placeholder"),
        pytest.param(AclRule(ALLOW, PUB, "a", "nobody"), id="bad-who"),
    ],
)
def test_acl_rejects_invalid_rules(rule: AclRule) -> None:
    with pytest.raises(ValueError):
        Acl([rule])
