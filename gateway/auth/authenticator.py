"""Turns a CONNECT's credentials (or a verified client certificate) into an `Identity`.

Runs in a worker thread, not on the event loop: a password check is an scrypt
hash (`ferry.gateway.auth.passwords`). The broker core never sees passwords,
only the identity or the reason for a refusal.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ferry.gateway.auth.config import AuthConfig
from ferry.gateway.auth.identity import Identity
from ferry.gateway.auth.passwords import PasswordFile
from ferry.gateway.mqtt import ReasonCode

log = logging.getLogger(__name__)


class Authenticator:
    """The password file and the `[auth]` settings; `reload()` rereads the file (SIGHUP)."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._passwords = self._load()

    def _load(self) -> PasswordFile | None:
        if self.config.password_file is None:
            return None
        return PasswordFile.load(Path(self.config.password_file))

    def reload(self) -> None:
        """Reread the password file; on an error keep the users loaded before and say why."""
        try:
            passwords = self._load()
        except ValueError as exc:
            log.error("password file not reloaded, the previous one stays in force: %s", exc)
            return
        with self._lock:
            self._passwords = passwords
        log.info("password file reloaded: %d users", self.user_count or 0)

    @property
    def user_count(self) -> int | None:
        """Users in the password file; None without one."""
        passwords = self._passwords
        return None if passwords is None else len(passwords.users())

    def is_user(self, name: str) -> bool:
        """Whether `name` is a user in the password file (its client id is then reserved for it)."""
        passwords = self._passwords
        return passwords is not None and name in passwords

    def needs_hash(self, username: str | None, cert_username: str | None) -> bool:
        """Whether `authenticate` will hash a password (so belongs off the event loop)."""
        return cert_username is None and username is not None and self._passwords is not None

    def authenticate(self, username: str | None, password: bytes | None,
                     cert_username: str | None = None) -> Identity | ReasonCode:
        """The identity these credentials prove, or the CONNACK reason code that refuses them.

        A verified client certificate's name (`cert_username`) wins over the CONNECT's user name.
        Without a password file a user name proves nothing: the client is anonymous.
        """
        config = self.config
        if cert_username is not None:
            return Identity(cert_username, config.role_of(cert_username))
        passwords = self._passwords
        if username is not None and passwords is not None:
            try:
                text = (password or b"").decode("utf-8")
            except UnicodeDecodeError:
                return ReasonCode.BAD_USER_NAME_OR_PASSWORD
            if password is not None and passwords.verify(username, text):
                return Identity(username, config.role_of(username))
            return ReasonCode.BAD_USER_NAME_OR_PASSWORD
        if config.allow_anonymous:
            return Identity(None, config.anonymous_role)
        return ReasonCode.BAD_USER_NAME_OR_PASSWORD if username is not None else ReasonCode.NOT_AUTHORIZED

