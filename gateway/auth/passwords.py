"""The gateway's password file: Mosquitto's `user:hash` lines, with salted scrypt hashes.

Mosquitto's `mosquitto_passwd` file is one `username:hash` line per user; Ferry keeps that
shape, which operators know, but hashes with scrypt (memory-hard, in Python's standard
library) so a stolen file is slow to guess from:

    # comments and blank lines are allowed, and kept by `ferry passwd`
    sensor-0042:$scrypt$ln=15,r=8,p=1$<16-byte salt>$<32-byte scrypt hash>

Salt and hash are base64 without `=` padding; `ln` is log2 of scrypt's N. With the defaults
(ln=15, r=8, p=1: 32 MiB) one `hash_password` takes about 100 ms, measured on the dev
machine (AMD EPYC, 2 cores, Python 3.11: median of 30 runs 98 to 109 ms as the load varied);
a Raspberry Pi is slower.

A user name is also a device id and is put into MQTT topic patterns as `%u`, so it must be
one topic level: `check_username` gives the rules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import threading
from pathlib import Path

DEFAULT_LOG2_N, DEFAULT_R, DEFAULT_P = 15, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
LOG2_N_RANGE, R_RANGE, P_RANGE = range(10, 21), range(1, 33), range(1, 17)
MAX_SCRYPT_MEMORY = 1 << 30
"""Also refused above this (128 * r * N bytes); hashlib cannot go past 2 GiB anyway."""
USERNAME_MAX_CHARS = 64
USERNAME_FORBIDDEN = ":+#/$"
"""`:` ends the name in the file; in a topic `+ #` are wildcards, `/` separates levels and a
leading `$` makes a system topic."""

_HASH_FORMAT = re.compile(r"\$scrypt\$ln=([0-9]+),r=([0-9]+),p=([0-9]+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")


class PasswordFileError(ValueError):
    """A password file, or a hash in one, that Ferry refuses; the message says where and why."""


def check_username(name: str) -> str | None:
    """What is wrong with `name` as a user name, or None when it is a good one."""
    if not 1 <= len(name) <= USERNAME_MAX_CHARS:
        return f"must be 1 to {USERNAME_MAX_CHARS} characters"
    for char in name:
        if char in USERNAME_FORBIDDEN:
            return f"contains {char!r} (none of {' '.join(USERNAME_FORBIDDEN)} is allowed)"
        if char.isspace() or not char.isprintable():
            return f"contains whitespace or an unprintable character ({char!r})"
    return None


def hash_password(password: str, *, salt: bytes | None = None, log2_n: int = DEFAULT_LOG2_N,
                  r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """`$scrypt$ln=..,r=..,p=..$salt$hash` for `password`, with a new random salt unless given."""
    _check_parameters(log2_n, r, p)
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    elif not salt:
        raise ValueError("empty salt")
    digest = _scrypt(password, salt, log2_n, r, p)
    return f"$scrypt$ln={log2_n},r={r},p={p}${_b64encode(salt)}${_b64encode(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` hashes to `encoded`, with the parameters and salt stored in it.

    Raises `PasswordFileError` for a malformed hash or absurd parameters (before any hashing).
    """
    log2_n, r, p, salt, digest = _parse_hash(encoded)
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), digest)


# Hundreds of devices reconnect at once after a Wi-Fi outage, and each check costs a full
# scrypt (~0.1 s, more on a Raspberry Pi): a password that verified once is remembered, as an
# HMAC under a key that lives only in this process, next to the stored hash it matched, so a
# changed password (a new stored hash) goes through scrypt again; a remembered check took
# 0.04 ms on the dev machine. One entry per user name; the memory survives reloading the file
# but not a restart of the gateway, whose first reconnect storm pays the full price. The file
# on disk stays scrypt-only; someone who can read this process's memory could guess remembered
# passwords fast (HMAC-SHA256 is fast), but could read the CONNECT packets there anyway.
VERIFIED_CACHE_MAX_ENTRIES = 100_000
_verified_key = secrets.token_bytes(32)
_verified: dict[str, tuple[str, bytes]] = {}
"""Username -> (the stored hash the password matched, HMAC-SHA256 of the password)."""
_verified_lock = threading.Lock()


class PasswordFile:
    """The users and hashes of a password file, with its comment lines, in file order."""

    def __init__(self) -> None:
        self._hashes: dict[str, str] = {}
        # One item per line: (username, "") for a user line, (None, text) for a comment or blank line.
        self._lines: list[tuple[str | None, str]] = []

    @classmethod
    def load(cls, path: Path, *, missing_ok: bool = False) -> PasswordFile:
        """Read `path`; a missing file is an error, or an empty `PasswordFile` with `missing_ok`."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return cls()
            raise PasswordFileError(f"{path}: no such file") from None
        except OSError as e:
            raise PasswordFileError(f"{path}: cannot read: {e.strerror}") from None
        passwords = cls()
        first_line_of: dict[str, int] = {}
        for number, raw in enumerate(data.removesuffix(b"\n").split(b"\n") if data else [], start=1):
            try:
                passwords._add_line(raw.removesuffix(b"\r").decode(), number, first_line_of)
            except UnicodeDecodeError:
                raise PasswordFileError(f"{path}:{number}: not UTF-8") from None
            except PasswordFileError as e:
                raise PasswordFileError(f"{path}:{number}: {e}") from None
        return passwords

    def _add_line(self, line: str, number: int, first_line_of: dict[str, int]) -> None:
        if not line.strip() or line.lstrip().startswith("#"):
            self._lines.append((None, line))
            return
        username, colon, encoded = line.partition(":")
        if not colon:
            raise PasswordFileError("expected USER:HASH")
        if problem := check_username(username):
            raise PasswordFileError(f"bad user name {username!r}: {problem}")
        if username in first_line_of:
            raise PasswordFileError(f"user {username!r} again (first on line {first_line_of[username]})")
        _parse_hash(encoded)
        first_line_of[username] = number
        self._hashes[username] = encoded
        self._lines.append((username, ""))

    def users(self) -> list[str]:
        return list(self._hashes)

    def __contains__(self, username: object) -> bool:
        return username in self._hashes

    def verify(self, username: str, password: str) -> bool:
        """Whether `username` is in the file and `password` is theirs.

        An unknown user costs one default hash too, so the time taken does not tell who exists.
        """
        encoded = self._hashes.get(username)
        if encoded is None:
            hash_password(password)
            return False
        password_mac = hmac.digest(_verified_key, password.encode(), hashlib.sha256)
        remembered = _verified.get(username)
        if remembered is not None and remembered[0] == encoded and hmac.compare_digest(remembered[1], password_mac):
            return True
        if not verify_password(password, encoded):
            return False
        with _verified_lock:
            if len(_verified) >= VERIFIED_CACHE_MAX_ENTRIES and username not in _verified:
                del _verified[next(iter(_verified))]
            _verified[username] = (encoded, password_mac)
        return True

    def set(self, username: str, password: str, *, log2_n: int = DEFAULT_LOG2_N) -> None:
        """Add `username`, or change their password, with a new salt."""
        if problem := check_username(username):
            raise ValueError(f"bad user name {username!r}: {problem}")
        if not password:
            raise ValueError("empty password")
        encoded = hash_password(password, log2_n=log2_n)
        if username not in self._hashes:
            self._lines.append((username, ""))
        self._hashes[username] = encoded

    def delete(self, username: str) -> bool:
        """Remove `username`; False when they were not in the file."""
        if self._hashes.pop(username, None) is None:
            return False
        self._lines.remove((username, ""))
        return True

    def save(self, path: Path) -> None:
        """Replace `path` atomically with mode 0600 (and an existing file's owner, as root).

        Writes `path.tmp`, fsyncs it, renames it over `path` and fsyncs the folder.
        """
        path = Path(path)
        text = "".join(f"{username}:{self._hashes[username]}\n" if username is not None else f"{comment}\n"
                       for username, comment in self._lines)
        temporary = path.with_name(path.name + ".tmp")
        try:
            old = path.stat()
        except FileNotFoundError:
            old = None
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)  # a stale .tmp keeps its mode through O_TRUNC
                new = os.fstat(file.fileno())
                if old is not None and (old.st_uid, old.st_gid) != (new.st_uid, new.st_gid):
                    os.fchown(file.fileno(), old.st_uid, old.st_gid)
                file.write(text.encode())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        folder = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _check_parameters(log2_n: int, r: int, p: int) -> None:
    for name, value, allowed in (("ln", log2_n, LOG2_N_RANGE), ("r", r, R_RANGE), ("p", p, P_RANGE)):
        if value not in allowed:
            raise PasswordFileError(f"scrypt {name}={value} outside {allowed.start}..{allowed.stop - 1}")
    if 128 * r << log2_n > MAX_SCRYPT_MEMORY:
        raise PasswordFileError(f"scrypt ln={log2_n},r={r} needs more than {MAX_SCRYPT_MEMORY >> 20} MiB")


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """(log2_n, r, p, salt, digest) of a stored hash, its parameters checked."""
    match = _HASH_FORMAT.fullmatch(encoded)
    if match is None:
        raise PasswordFileError("bad hash: expected $scrypt$ln=N,r=N,p=N$SALT$HASH")
    log2_n, r, p = (int(group) for group in match.groups()[:3])
    _check_parameters(log2_n, r, p)
    try:
        salt, digest = (_b64decode(group) for group in match.groups()[3:])
    except binascii.Error:
        raise PasswordFileError("bad hash: salt or hash is not base64") from None
    if len(digest) != HASH_BYTES:
        raise PasswordFileError(f"bad hash: {len(digest)} bytes, expected {HASH_BYTES}")
    return log2_n, r, p, salt, digest


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    # OpenSSL needs 128 * r * (N + 2) bytes for V plus 128 * r * p for B.
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES,
                          maxmem=128 * r * (n + 2 + p))


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
