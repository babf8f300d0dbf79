"""The identity a connection authenticated as, which the ACL and the bridge decide on."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(Enum):
    """What a user is for; each role has a default ACL rule set (`ferry.gateway.auth.acl`)."""

    NONE = "none"
    """No default rules: only explicit `[[acl]]` rules grant anything."""
    DEVICE = "device"
    """A board: publishes its own telemetry, status and replies; reads its own commands."""
    OPERATOR = "operator"
    """A person or tool: publishes commands, reads everything under `ferry/`."""
    ADMIN = "admin"
    """Everything, `$SYS/#` included."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated (or, where allowed, anonymous) client."""

    username: str | None
    """The user name the password or client certificate proved; None for an anonymous client."""
    role: Role

    @property
    def anonymous(self) -> bool:
        return self.username is None
