"""Topic names, topic filters and shared subscriptions (section 4.7, 4.8).

Pure helpers used by the decoder and by the broker.  Validation errors are
:class:`ProtocolError` with reason code TOPIC_NAME_INVALID or
TOPIC_FILTER_INVALID; ``version`` only picks which spec's rule id to cite
(the two specs number the wildcard rules differently).
"""

from __future__ import annotations

from ._wire import V5, rule
from .errors import ProtocolError
from .packets import ProtocolVersion
from .reason_codes import ReasonCode

__all__ = ["split_shared", "topic_matches", "validate_topic_filter", "validate_topic_name"]

SHARE_PREFIX = "$share/"
_MAX_BYTES = 65_535


def _name_error(rule_id: str, message: str) -> ProtocolError:
    return ProtocolError(ReasonCode.TOPIC_NAME_INVALID, rule_id, message)


def _filter_error(rule_id: str, message: str) -> ProtocolError:
    return ProtocolError(ReasonCode.TOPIC_FILTER_INVALID, rule_id, message)


def _too_long(text: str) -> bool:
    # A code point is at most 4 UTF-8 bytes, so short strings need no encoding.
    return len(text) > _MAX_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > _MAX_BYTES


def validate_topic_name(name: str, version: ProtocolVersion = V5) -> None:
    """Raise unless ``name`` may be published to: non-empty, no wildcards, no U+0000."""
    if not name:
        raise _name_error("MQTT-4.7.3-1", "topic name is empty")
    if "+" in name or "#" in name:
        raise _name_error("MQTT-3.3.2-2", f"topic name {name!r} contains a wildcard")
    if "\x00" in name:
        raise _name_error("MQTT-4.7.3-2", "topic name contains U+0000")
    if _too_long(name):
        raise _name_error("MQTT-4.7.3-3", "topic name encodes to more than 65535 bytes")


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split ``$share/<group>/<filter>`` into ``(group, filter)``; else ``(None, filter)``.

    Only the share name is checked here [MQTT-4.8.2-1], [MQTT-4.8.2-2]; the
    inner filter is checked by :func:`validate_topic_filter`.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    rest = topic_filter[len(SHARE_PREFIX) :]
    slash = rest.find("/")
    group = rest if slash < 0 else rest[:slash]
    if not group:
        raise _filter_error("MQTT-4.8.2-1", "shared subscription has an empty share name")
    if "+" in group or "#" in group:
        raise _filter_error("MQTT-4.8.2-2", f"share name {group!r} contains a wildcard")
    if slash < 0 or slash == len(rest) - 1:
        raise _filter_error("MQTT-4.8.2-2", "share name is not followed by '/' and a topic filter")
    return group, rest[slash + 1 :]


def validate_topic_filter(topic_filter: str, version: ProtocolVersion = V5) -> None:
    """Raise unless ``topic_filter`` is a valid (possibly shared) topic filter."""
    if not topic_filter:
        raise _filter_error("MQTT-4.7.3-1", "topic filter is empty")
    if "\x00" in topic_filter:
        raise _filter_error("MQTT-4.7.3-2", "topic filter contains U+0000")
    if _too_long(topic_filter):
        raise _filter_error("MQTT-4.7.3-3", "topic filter encodes to more than 65535 bytes")
    if topic_filter.startswith(SHARE_PREFIX):
        topic_filter = split_shared(topic_filter)[1]
    hash_at = topic_filter.find("#")
    if hash_at >= 0 and (
        hash_at != len(topic_filter) - 1 or (hash_at > 0 and topic_filter[hash_at - 1] != "/")
    ):
        raise _filter_error(
            rule("multi_level_wildcard", version),
            f"'#' must be the last level of the filter, not in {topic_filter!r}",
        )
    if "+" in topic_filter:
        for level in topic_filter.split("/"):
            if "+" in level and level != "+":
                raise _filter_error(
                    rule("single_level_wildcard", version),
                    f"'+' must occupy a whole level, not {level!r}",
                )


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when the (non-shared, valid) filter matches the topic name.

    Filters starting with a wildcard do not match topics starting with ``$``
    [MQTT-4.7.2-1].  Pass the inner filter of a shared subscription.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    levels = topic.split("/")
    count = len(levels)
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= count or (part != "+" and part != levels[i]):
            return False
    return len(parts) == count
