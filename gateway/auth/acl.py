"""Who may publish to and subscribe to which topics: ordered ACL rules plus per-role defaults.

Pure and sans-IO: the broker core asks :meth:`Acl.allows` once per PUBLISH it
receives and once per topic filter in a SUBSCRIBE; nothing is checked at
delivery, because a subscription that could ever receive a forbidden message
is refused when it is made (see *Matching* below).

Decision
    The explicit rules (``[[acl]]`` tables, :func:`parse_rule`) are tried in
    order and the first one that applies and matches decides.  Then the
    identity's role defaults (:data:`DEFAULT_RULES`, unless ``defaults=False``)
    are tried the same way.  If nothing matched, the answer is *deny*.

    A rule applies to an identity when its ``who`` is ``"everyone"``,
    ``"anonymous"`` and the client is anonymous, the identity's role name
    (``"none"``, ``"device"``, ``"operator"``, ``"admin"``), or
    ``"user:NAME"`` and the client authenticated as ``NAME``.

Placeholders
    A level of a rule's topic that is exactly ``%u`` stands for the client's
    user name, ``%c`` for its client id (``ferry/+/%u/telemetry``); a level
    that mixes a placeholder with other text is rejected.  A rule with ``%u``
    never matches an anonymous client, and a rule whose substituted value is
    empty or contains ``+``, ``#``, ``/`` or U+0000 does not match at all, so
    a user called ``+`` cannot turn its own rule into a wildcard.

Matching
    PUBLISH: the rule's pattern must match the topic name with MQTT wildcard
    semantics; a pattern starting with ``+`` or ``#`` does not match a topic
    starting with ``$`` [MQTT-4.7.2-1].

    SUBSCRIBE (the plain filter; the caller strips ``$share/<group>/``): an
    *allow* rule matches when the filter lies within the pattern
    (:func:`filter_within`: every topic the filter can match, the pattern
    matches too); a *deny* rule matches when the filter overlaps the pattern
    (:func:`filters_overlap`: some topic matches both).  So
    ``deny subscribe test/nosubscribe`` refuses ``test/nosubscribe``,
    ``test/+`` and ``#`` alike.

Default rules (:data:`DEFAULT_RULES`), the rule set that needs no editing
    ``device``
        allow publish ``ferry/+/%u/telemetry``, ``ferry/+/%u/status`` and
        ``ferry/+/%u/reply``; allow subscribe ``ferry/+/%u/cmd`` and
        ``ferry/+/%u/ota`` (firmware updates, docs/ota.md).  Nothing
        else: a board cannot read or write another board's topics.
    ``operator``
        allow publish ``ferry/+/+/cmd`` and ``ferry/+/+/ota``; allow subscribe ``ferry/#``.
    ``admin``
        allow subscribe ``#`` and ``$SYS/#``; allow publish ``#`` (which does
        not cover ``$`` topics; the broker core refuses publishing to those
        for everyone anyway).
    ``none``
        nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from operator import itemgetter
from types import MappingProxyType

from ferry.gateway.auth.identity import Identity, Role
from ferry.gateway.mqtt.errors import ProtocolError
from ferry.gateway.mqtt.topics import SHARE_PREFIX, validate_topic_filter

__all__ = [
    "DEFAULT_RULES",
    "Access",
    "Acl",
    "AclRule",
    "Action",
    "filter_within",
    "filters_overlap",
    "parse_rule",
]


class Grant(Enum):
    """The answer to a SUBSCRIBE's filter (:meth:`Acl.subscription`)."""

    DENIED = "denied"
    GRANTED = "granted"
    CHECKED = "checked"
    """Granted, but a deny rule covers some of the topics the filter matches: each message is
    checked before it is delivered (``allows(..., Action.SUBSCRIBE, topic)``)."""


class Action(Enum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


class Access(Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class AclRule:
    """One rule: ``access`` ``action`` on topics matching ``topic``, for ``who``."""

    access: Access
    action: Action | None
    """None: both publish and subscribe (``action = "all"``)."""
    topic: str
    """A topic filter; a whole level may be ``%u`` (user name) or ``%c`` (client id)."""
    who: str = "everyone"
    """``"everyone"``, ``"anonymous"``, a role name, or ``"user:NAME"``."""


USER = "%u"
CLIENT = "%c"
_PLACEHOLDERS = (USER, CLIENT)
_WHO_WORDS = ("everyone", "anonymous", *(role.value for role in Role))
_USER_PREFIX = "user:"


# --- filter algebra --------------------------------------------------------------------------


def _within(filter_levels: Sequence[str], pattern: Sequence[str]) -> bool:
    count = len(filter_levels)
    for i, want in enumerate(pattern):
        if want == "#":
            # Covers the rest, the parent level included ("a/#" matches "a"), but at the
            # first level not topics starting with '$' [MQTT-4.7.2-1].
            return not (i == 0 and filter_levels[0].startswith("$"))
        if i >= count:
            return False
        have = filter_levels[i]
        if have == "#":
            # The filter reaches any depth (and, below the first level, the parent level
            # too); a pattern without '#' here cannot, except that at the first level
            # '+/#' is '#' spelled differently (every topic has at least one level).
            return i == 0 and tuple(pattern) == ("+", "#")
        if want == "+":
            if i == 0 and have.startswith("$"):
                return False
        elif want != have:
            return False  # literal vs another literal, or literal vs '+'
    return count == len(pattern)


def _overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    shorter = min(len(a), len(b))
    for i in range(shorter):
        x, y = a[i], b[i]
        x_wild = x == "+" or x == "#"
        y_wild = y == "+" or y == "#"
        if x_wild or y_wild:
            # A wildcard first level never matches '$' topics, so it cannot meet a
            # literal '$...' first level [MQTT-4.7.2-1].
            if i == 0 and ((not x_wild and x.startswith("$")) or (not y_wild and y.startswith("$"))):
                return False
            if x == "#" or y == "#":
                return True
        elif x != y:
            return False
    if len(a) == len(b):
        return True
    longer = a if len(a) > len(b) else b
    return longer[shorter] == "#"  # "a/#" also matches "a"


def filter_within(topic_filter: str, pattern: str) -> bool:
    """True when every topic name ``topic_filter`` can match, ``pattern`` matches too.

    Both are valid, plain (not ``$share/``) topic filters.  Compared level by
    level: a pattern ``#`` covers the rest of the filter (``#`` included, and
    the parent level: ``a`` is within ``a/#``); a pattern ``+`` covers a
    literal or ``+`` level but not ``#`` (the one exception: ``#`` is within
    ``+/#``, which matches the same topics); a literal covers only the same
    literal.  A pattern starting with ``+`` or ``#`` does not cover a filter
    whose first level starts with ``$`` [MQTT-4.7.2-1], so ``$SYS/#`` is not
    within ``#``.
    """
    return _within(topic_filter.split("/"), pattern.split("/"))


def filters_overlap(a: str, b: str) -> bool:
    """True when some topic name matches both filters ``a`` and ``b``.

    Both are valid, plain topic filters.  ``+`` meets any single level, ``#``
    meets any rest (including nothing: ``a/#`` and ``a`` overlap on ``a``);
    a first level ``+`` or ``#`` never meets a first level starting with
    ``$`` [MQTT-4.7.2-1], so ``#`` and ``$SYS/#`` do not overlap.
    """
    return _overlap(a.split("/"), b.split("/"))


# --- rules -----------------------------------------------------------------------------------


def _topic_problem(topic: str, who: str) -> str | None:
    """Why ``topic`` cannot be a rule's pattern (for ``who``), or None."""
    try:
        validate_topic_filter(topic)
    except ProtocolError as exc:
        return f"{topic!r} is not a valid topic filter: {exc.message}"
    if topic.startswith(SHARE_PREFIX):
        return (
            f"{topic!r}: rules match the plain filter of a shared subscription; "
            f"leave out the '{SHARE_PREFIX}<group>/' prefix"
        )
    for level in topic.split("/"):
        if level not in _PLACEHOLDERS and any(p in level for p in _PLACEHOLDERS):
            return f"{topic!r}: a placeholder (%u, %c) must be a whole level, not part of {level!r}"
    if who == "anonymous" and USER in topic.split("/"):
        return f"{topic!r}: a rule with %u never matches who = 'anonymous'"
    return None


def _who_problem(who: str) -> str | None:
    if who in _WHO_WORDS or (who.startswith(_USER_PREFIX) and len(who) > len(_USER_PREFIX)):
        return None
    choices = ", ".join(repr(w) for w in _WHO_WORDS)
    return f"{who!r} is not one of {choices} or 'user:NAME'"


_KEYS = ("access", "action", "topic", "who")
_ACTIONS: dict[str, Action | None] = {"publish": Action.PUBLISH, "subscribe": Action.SUBSCRIBE, "all": None}


def _string(where: str, table: dict, key: str, choices: Sequence[str] = ()) -> str:
    if key not in table:
        hint = f" (one of {', '.join(repr(c) for c in choices)})" if choices else ""
        raise ValueError(f"{where}.{key}: missing{hint}")
    value = table[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected a string, got {value!r}")
    if choices and value not in choices:
        raise ValueError(f"{where}.{key}: {value!r} is not one of {', '.join(repr(c) for c in choices)}")
    return value


def parse_rule(where: str, table: dict) -> AclRule:
    """An :class:`AclRule` from a TOML table ``{access, action, topic, who}``.

    ``access`` is ``"allow"`` or ``"deny"``, ``action`` ``"publish"``,
    ``"subscribe"`` or ``"all"``, ``topic`` a topic filter (placeholders as
    whole levels), ``who`` optional (default ``"everyone"``).  Raises
    ValueError whose message starts with ``where`` and names the key, e.g.
    ``acl[2].action: 'read' is not one of 'publish', 'subscribe', 'all'``.
    """
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table, got {table!r}")
    for key in table:
        if key not in _KEYS:
            raise ValueError(f"{where}.{key}: unknown key (known: {', '.join(_KEYS)})")
    access = Access(_string(where, table, "access", [a.value for a in Access]))
    action = _ACTIONS[_string(where, table, "action", list(_ACTIONS))]
    who = _string(where, table, "who") if "who" in table else "everyone"
    problem = _who_problem(who)
    if problem:
        raise ValueError(f"{where}.who: {problem}")
    topic = _string(where, table, "topic")
    problem = _topic_problem(topic, who)
    if problem:
        raise ValueError(f"{where}.topic: {problem}")
    return AclRule(access, action, topic, who)


def _defaults(role: Role, publish: Sequence[str], subscribe: Sequence[str]) -> tuple[AclRule, ...]:
    return tuple(AclRule(Access.ALLOW, Action.PUBLISH, t, role.value) for t in publish) + tuple(
        AclRule(Access.ALLOW, Action.SUBSCRIBE, t, role.value) for t in subscribe
    )


DEFAULT_RULES: Mapping[Role, tuple[AclRule, ...]] = MappingProxyType(
    {
        Role.NONE: (),
        Role.DEVICE: _defaults(
            Role.DEVICE,
            publish=("ferry/+/%u/telemetry", "ferry/+/%u/status", "ferry/+/%u/reply"),
            subscribe=("ferry/+/%u/cmd", "ferry/+/%u/ota"),
        ),
        Role.OPERATOR: _defaults(Role.OPERATOR, publish=("ferry/+/+/cmd", "ferry/+/+/ota"), subscribe=("ferry/#",)),
        Role.ADMIN: _defaults(Role.ADMIN, publish=("#",), subscribe=("#", "$SYS/#")),
    }
)
"""Each role's rules, tried after the explicit ones (see the module docstring)."""


# --- compiled form ---------------------------------------------------------------------------

_EVERYONE, _ANONYMOUS, _ROLE, _USER = range(4)


def _usable(value: str | None) -> bool:
    """A placeholder value that substitutes to exactly one literal level."""
    if not value:
        return False
    return "+" not in value and "#" not in value and "/" not in value and "\x00" not in value


class _Compiled:
    """A rule prepared for matching: its pattern split into levels once.

    For topic names the literal levels are compared in one step (an itemgetter
    over the topic's levels against a tuple), ``+`` levels are skipped and
    placeholder levels are compared with the user name or client id directly,
    so no substituted pattern is built per PUBLISH.
    """

    __slots__ = (
        "allow", "who", "personal", "user", "role", "levels", "placeholders", "exact", "wild_first",
        "count", "min_count", "fixed", "fixed_values", "user_at", "client_at",
    )  # fmt: skip

    def __init__(self, rule: AclRule) -> None:
        problem = _who_problem(rule.who) or _topic_problem(rule.topic, rule.who)
        if problem:
            raise ValueError(f"ACL rule {rule}: {problem}")
        self.allow = rule.access is Access.ALLOW
        self.user: str | None = None
        self.role: Role | None = None
        if rule.who == "everyone":
            self.who = _EVERYONE
        elif rule.who == "anonymous":
            self.who = _ANONYMOUS
        elif rule.who.startswith(_USER_PREFIX):
            self.who = _USER
            self.user = rule.who[len(_USER_PREFIX) :]
        else:
            self.who = _ROLE
            self.role = Role(rule.who)
        # Whether applying depends on more than the role (the chains are built per role).
        self.personal = self.who in (_ANONYMOUS, _USER)
        levels = self.levels = tuple(rule.topic.split("/"))
        self.placeholders = any(level in _PLACEHOLDERS for level in levels)
        plain = not self.placeholders and "+" not in rule.topic and "#" not in rule.topic
        self.exact = rule.topic if plain else None
        self.wild_first = levels[0] in ("+", "#")
        # A topic matched by the pattern has exactly `count` levels, or (pattern ending in
        # '#', which also matches the parent level) at least `min_count`.
        ends_in_hash = levels[-1] == "#"
        self.count = None if ends_in_hash else len(levels)
        self.min_count = len(levels) - 1 if ends_in_hash else len(levels)
        fixed = [i for i, level in enumerate(levels) if level not in ("+", "#", USER, CLIENT)]
        self.fixed = itemgetter(*fixed) if fixed else None
        self.fixed_values = itemgetter(*fixed)(levels) if fixed else None
        self.user_at = tuple(i for i, level in enumerate(levels) if level == USER)
        self.client_at = tuple(i for i, level in enumerate(levels) if level == CLIENT)

    def applies(self, identity: Identity) -> bool:
        who = self.who
        if who == _EVERYONE:
            return True
        if who == _ANONYMOUS:
            return identity.username is None
        if who == _USER:
            return identity.username == self.user
        return identity.role is self.role

    def matches_name(self, topic: str, levels: list[str], username: str | None, client_id: str) -> bool:
        """The pattern matches topic name ``topic`` (already split into ``levels``)."""
        count = len(levels)
        if count != self.count and (self.count is not None or count < self.min_count):
            return False
        if self.wild_first and topic[:1] == "$":
            return False  # [MQTT-4.7.2-1]
        if self.fixed is not None and self.fixed(levels) != self.fixed_values:
            return False
        if self.user_at:
            for i in self.user_at:
                if levels[i] != username:
                    return False
            if not _usable(username):
                return False
        if self.client_at:
            for i in self.client_at:
                if levels[i] != client_id:
                    return False
            if not _usable(client_id):
                return False
        return True

    def pattern(self, username: str | None, client_id: str) -> tuple[str, ...] | None:
        """The levels with placeholders substituted, or None if a value is unusable."""
        if not self.placeholders:
            return self.levels
        out = []
        for level in self.levels:
            if level == USER or level == CLIENT:
                value = username if level == USER else client_id
                if not _usable(value):
                    return None
                out.append(value)
            else:
                out.append(level)
        return tuple(out)


class Acl:
    """The explicit rules, in order, then (when ``defaults``) the role's :data:`DEFAULT_RULES`."""

    __slots__ = ("_publish", "_subscribe")

    def __init__(self, rules: Sequence[AclRule] = (), *, defaults: bool = True) -> None:
        explicit = [(rule, _Compiled(rule)) for rule in rules]
        default = {role: [(r, _Compiled(r)) for r in DEFAULT_RULES[role]] for role in Role} if defaults else {}

        # Per action and role, the rules that can apply, in decision order: rules for the
        # other action and role rules for other roles are left out here, not per call.
        # Keyed by the role's value: hashing a str is cheaper than Enum.__hash__.
        def chains(action: Action) -> dict[str, tuple[_Compiled, ...]]:
            return {
                role._value_: tuple(
                    compiled
                    for rule, compiled in explicit + default.get(role, [])
                    if rule.action in (None, action) and compiled.role in (None, role)
                )
                for role in Role
            }

        self._publish = chains(Action.PUBLISH)
        self._subscribe = chains(Action.SUBSCRIBE)

    def allows(self, identity: Identity, client_id: str, action: Action, topic: str) -> bool:
        """May ``identity`` (connected as ``client_id``) do ``action`` on ``topic``?

        ``topic`` is the topic name of a PUBLISH, or the plain filter of a
        subscription (``$share/<group>/`` already stripped).
        """
        username = identity.username
        if action is Action.PUBLISH:
            levels: list[str] | None = None
            for rule in self._publish[identity.role._value_]:
                if rule.personal and not rule.applies(identity):
                    continue
                if rule.exact is not None:
                    if rule.exact != topic:
                        continue
                else:
                    if levels is None:
                        levels = topic.split("/")
                    if not rule.matches_name(topic, levels, username, client_id):
                        continue
                return rule.allow
            return False
        filter_levels = topic.split("/")
        for rule in self._subscribe[identity.role._value_]:
            if rule.personal and not rule.applies(identity):
                continue
            pattern = rule.pattern(username, client_id)
            if pattern is None:
                continue
            if _within(filter_levels, pattern) if rule.allow else _overlap(filter_levels, pattern):
                return rule.allow
        return False

    def subscription(self, identity: Identity, client_id: str, topic_filter: str) -> Grant:
        """May ``identity`` subscribe to ``topic_filter`` (plain, ``$share/<group>/`` stripped)?

        A deny rule the filter lies within refuses it; one it only overlaps (``#`` against
        ``deny test/nosubscribe``) does not, as in Mosquitto, but makes every message for the
        subscription checked (`Grant.CHECKED`); an allow rule grants a filter that lies within it.
        """
        filter_levels = topic_filter.split("/")
        checked = False
        for rule in self._subscribe[identity.role._value_]:
            if rule.personal and not rule.applies(identity):
                continue
            pattern = rule.pattern(identity.username, client_id)
            if pattern is None:
                continue
            if _within(filter_levels, pattern):
                if not rule.allow:
                    return Grant.DENIED
                return Grant.CHECKED if checked else Grant.GRANTED
            if not rule.allow and _overlap(filter_levels, pattern):
                checked = True
        return Grant.DENIED
