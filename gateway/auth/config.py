"""`[auth]`: where passwords come from, whether anonymous clients may connect, who is not a device."""

from __future__ import annotations

from dataclasses import dataclass

from ferry.gateway.auth.identity import Role


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Every field is an `[auth]` key in ferry.toml."""

    password_file: str | None = None
    """Users and their scrypt hashes (`ferry passwd FILE USER`); reloaded on SIGHUP. A user not
    named in `operators` or `admins` is a device: its user name is its device id."""
    allow_anonymous: bool = False
    """Let clients without a user name connect (as Mosquitto's `allow_anonymous`); they get
    `anonymous_role`'s rules and the `[[acl]]` rules for "anonymous" and "everyone"."""
    anonymous_role: Role = Role.ADMIN
    """The default rule set anonymous clients get when allowed: "admin" (everything but `$`
    topics, as Mosquitto's `allow_anonymous` without an ACL file), "operator", "device" or "none"
    (only the `[[acl]]` rules for "anonymous" and "everyone")."""
    operators: tuple[str, ...] = ()
    """Users with the operator role: publish commands, read everything under `ferry/`."""
    admins: tuple[str, ...] = ()
    """Users with the admin role: everything, `$SYS/#` included."""
    acl_defaults: bool = True
    """Apply each role's default rules after the `[[acl]]` rules; false: only `[[acl]]` rules."""

    def role_of(self, username: str) -> Role:
        if username in self.admins:
            return Role.ADMIN
        if username in self.operators:
            return Role.OPERATOR
        return Role.DEVICE
