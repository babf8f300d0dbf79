"""Which sessions a topic reaches: a trie over topic levels, not a scan of every filter.

A publish walks the topic's levels once, following the exact child, the `+`
child and collecting `#` at each node, so its cost grows with the topic depth
and the number of matches, not with the number of subscriptions. Shared
subscriptions (`$share/<group>/<filter>`) sit at their filter's node as one
entry per group, and the core picks one member per publish.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Subscribed:
    """One client's subscription as the router needs it."""

    client_id: str
    topic_filter: str
    """As the client sent it, `$share/<group>/` prefix included."""
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None


@dataclass(slots=True)
class SharedGroup:
    """The members of one `$share/<group>/<filter>`, picked round-robin."""

    name: str
    members: dict[str, Subscribed] = field(default_factory=dict)
    next_index: int = 0


@dataclass(slots=True)
class _Node:
    children: dict[str, "_Node"] = field(default_factory=dict)
    subscribers: dict[str, Subscribed] = field(default_factory=dict)
    """client id → its subscription whose filter ends at this node."""
    shared: dict[str, SharedGroup] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.children or self.subscribers or self.shared)


class SubscriptionIndex:
    """Filters → subscribers, matched level by level."""

    def __init__(self) -> None:
        self._root = _Node()
        self.count = 0

    def add(self, client_id: str, topic_filter: str, subscription: Subscribed,
            share_group: str | None = None) -> bool:
        """Add or replace; returns True when the client had no such subscription before."""
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if share_group is None:
            is_new = client_id not in node.subscribers
            node.subscribers[client_id] = subscription
        else:
            group = node.shared.get(share_group)
            if group is None:
                group = node.shared[share_group] = SharedGroup(share_group)
            is_new = client_id not in group.members
            group.members[client_id] = subscription
        self.count += is_new
        return is_new

    def remove(self, client_id: str, topic_filter: str, share_group: str | None = None) -> bool:
        """Remove; returns True when the subscription existed. Prunes empty nodes."""
        path = [self._root]
        levels = topic_filter.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return False
            path.append(child)
        node = path[-1]
        if share_group is None:
            existed = node.subscribers.pop(client_id, None) is not None
        else:
            group = node.shared.get(share_group)
            existed = group is not None and group.members.pop(client_id, None) is not None
            if group is not None and not group.members:
                del node.shared[share_group]
        self.count -= existed
        for depth in range(len(levels), 0, -1):
            if not path[depth].is_empty():
                break
            del path[depth - 1].children[levels[depth - 1]]
        return existed

    def match(self, topic: str) -> Iterator[tuple[_Node, bool]]:
        """Yield (node, via_hash) for every node whose filter matches `topic`.

        Filters starting with a wildcard never match topics starting with `$`
        [MQTT-4.7.2-1].
        """
        levels = topic.split("/")
        dollar = topic.startswith("$")
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        last = len(levels)
        while stack:
            node, depth = stack.pop()
            root_level = depth == 0 and dollar
            if not root_level:
                hash_node = node.children.get("#")
                if hash_node is not None:
                    yield hash_node, True
            if depth == last:
                yield node, False
                continue
            child = node.children.get(levels[depth])
            if child is not None:
                stack.append((child, depth + 1))
            if not root_level:
                plus = node.children.get("+")
                if plus is not None:
                    stack.append((plus, depth + 1))
