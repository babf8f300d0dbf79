"""The password file: scrypt hashes, the file format and its errors, user names, atomic saves, the cache."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest

from ferry.gateway.auth import passwords
from ferry.gateway.auth.passwords import (
    PasswordFile,
    PasswordFileError,
    check_username,
    hash_password,
    verify_password,
)

FAST = 10
"""log2 N for tests that do not need the default cost."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """N of every scrypt computed from now on."""
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kwargs) -> bytes:
        calls.append(kwargs["n"])
        return real(password, **kwargs)

    monkeypatch.setattr(passwords.hashlib, "scrypt", counting)
    return calls


def test_hash_is_scrypt_of_the_utf8_password_in_the_stored_format() -> None:
    salt = bytes(range(16))
    encoded = hash_password("pässword", salt=salt, log2_n=FAST, r=4, p=2)
    expected = hashlib.scrypt("pässword".encode(), salt=salt, n=1 << FAST, r=4, p=2, dklen=32)
    assert encoded == f"$scrypt$ln={FAST},r=4,p=2${b64(salt)}${b64(expected)}"
    assert "=" not in "".join(encoded.split("$")[3:])


def test_default_parameters() -> None:
    assert hash_password("x", salt=b"0123456789abcdef").startswith("$scrypt$ln=15,r=8,p=1$MDEyMzQ1Njc4OWFiY2RlZg$")


def test_round_trip_and_wrong_password() -> None:
    encoded = hash_password("correct horse", log2_n=FAST)
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct hors", encoded)
    assert not verify_password("", encoded)


def test_salts_are_random_and_16_bytes() -> None:
    first, second = (hash_password("same", log2_n=FAST) for _ in range(2))
    assert first != second
    salts = [encoded.split("$")[3] for encoded in (first, second)]
    assert salts[0] != salts[1]
    assert all(len(base64.b64decode(salt + "==")) == 16 for salt in salts)


@pytest.mark.parametrize("parameters, problem", [
    ("ln=9,r=8,p=1", "ln=9 outside 10..20"),
    ("ln=21,r=8,p=1", "ln=21 outside 10..20"),
    ("ln=64,r=8,p=1", "ln=64 outside"),
    ("ln=15,r=0,p=1", "r=0 outside 1..32"),
    ("ln=15,r=33,p=1", "r=33 outside"),
    ("ln=15,r=8,p=0", "p=0 outside 1..16"),
    ("ln=15,r=8,p=17", "p=17 outside"),
    ("ln=20,r=16,p=1", "needs more than 1024 MiB"),
])
def test_absurd_parameters_are_refused_before_hashing(parameters: str, problem: str,
                                                      scrypt_calls: list[int]) -> None:
    encoded = f"$scrypt${parameters}${b64(bytes(16))}${b64(bytes(32))}"
    with pytest.raises(PasswordFileError, match=problem):
        verify_password("x", encoded)
    assert scrypt_calls == []


def test_hash_password_refuses_absurd_parameters_too() -> None:
    with pytest.raises(ValueError, match="ln=25"):
        hash_password("x", log2_n=25)


GOOD_NAMES = ["dev-0042", "a", "a" * 64, "sensor.kitchen_1", "ünïcödé", "温度计", "dev%u"]
BAD_NAMES = [
    ("", "1 to 64"),
    ("a" * 65, "1 to 64"),
    ("a:b", "':'"),
    ("a+b", "'+'"),
    ("a#b", "'#'"),
    ("#", "'#'"),
    ("a/b", "'/'"),
    ("$SYS", "'$'"),
    ("a b", "whitespace"),
    ("a\tb", "whitespace"),
    ("a\u00a0b", "whitespace"),
    ("a\x00b", "unprintable"),
    ("a\x7fb", "unprintable"),
    ("a\u200bb", "unprintable"),
    ("a\udcffb", "unprintable"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_user_names(name: str) -> None:
    assert check_username(name) is None


@pytest.mark.parametrize("name, problem", BAD_NAMES)
def test_bad_user_names(name: str, problem: str) -> None:
    assert problem in (check_username(name) or "accepted")
    with pytest.raises(ValueError, match="bad user name"):
        PasswordFile().set(name, "password", log2_n=FAST)


def test_load_save_round_trip_keeps_comments_blank_lines_and_order(tmp_path: Path) -> None:
    hashes = {name: hash_password(name, log2_n=FAST) for name in ("zeta", "alpha", "mid")}
    text = (f"# gateway users\n\nzeta:{hashes['zeta']}\n  # indented comment\n"
            f"alpha:{hashes['alpha']}\n\n# devices\nmid:{hashes['mid']}\n")
    source = tmp_path / "passwd"
    source.write_text(text)
    loaded = PasswordFile.load(source)
    assert loaded.users() == ["zeta", "alpha", "mid"]
    assert "alpha" in loaded and "nobody" not in loaded
    copy = tmp_path / "copy"
    loaded.save(copy)
    assert copy.read_text() == text

    loaded.set("alpha", "changed", log2_n=FAST)  # stays where it was
    loaded.set("new", "pw", log2_n=FAST)  # goes last
    assert loaded.delete("zeta") and not loaded.delete("zeta")
    loaded.save(copy)
    lines = copy.read_text().splitlines()
    assert [line.partition(":")[0] for line in lines] == [
        "# gateway users", "", "  # indented comment", "alpha", "", "# devices", "mid", "new"]
    again = PasswordFile.load(copy)
    assert again.users() == ["alpha", "mid", "new"]
    assert again.verify("alpha", "changed") and again.verify("mid", "mid") and again.verify("new", "pw")


def test_crlf_lines_and_a_missing_final_newline_load(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(f"# windows\r\ndev:{hash_password('pw', log2_n=FAST)}".encode())
    assert PasswordFile.load(path).verify("dev", "pw")


VALID = hash_password("pw", log2_n=FAST)
_, _, PARAMS, SALT, DIGEST = VALID.split("$")


MALFORMED_LINES = [
    (b"no-colon-here", "expected USER:HASH"),
    (b":" + VALID.encode(), "bad user name ''"),
    (b"bad user:" + VALID.encode(), "bad user name 'bad user'"),
    (b"a/b:" + VALID.encode(), "bad user name 'a/b'"),
    (b"first:" + VALID.encode(), "user 'first' again (first on line 2)"),
    (b"dev:", "bad hash"),
    (b"dev:" + VALID.encode() + b" ", "bad hash"),
    (b"dev:$2y$10$abcdefghijklmnopqrstuv", "bad hash"),
    (f"dev:$scrypt$ln=15,r=8${SALT}${DIGEST}".encode(), "bad hash"),
    (f"dev:$scrypt$ln=30,r=8,p=1${SALT}${DIGEST}".encode(), "ln=30 outside"),
    (f"dev:$scrypt${PARAMS}$A${DIGEST}".encode(), "not base64"),
    (f"dev:$scrypt${PARAMS}${SALT}${b64(bytes(31))}".encode(), "31 bytes, expected 32"),
    (b"d\xffv:" + VALID.encode(), "not UTF-8"),
]


# Named by the problem: the lines carry a random salt, and test ids must be the same in every
# pytest-xdist worker.
@pytest.mark.parametrize("line, problem", MALFORMED_LINES, ids=[problem for _, problem in MALFORMED_LINES])
def test_each_malformed_line_names_file_and_line(tmp_path: Path, line: bytes, problem: str) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(b"# users\nfirst:" + VALID.encode() + b"\n" + line + b"\nlast:" + VALID.encode() + b"\n")
    with pytest.raises(PasswordFileError) as error:
        PasswordFile.load(path)
    assert str(error.value).startswith(f"{path}:3: ")
    assert problem in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(PasswordFileError, match=f"{path}: no such file"):
        PasswordFile.load(path)
    assert PasswordFile.load(path, missing_ok=True).users() == []
    with pytest.raises(PasswordFileError, match=f"{tmp_path}: cannot read"):
        PasswordFile.load(tmp_path)


def test_unknown_user_is_false_and_costs_one_default_hash(scrypt_calls: list[int]) -> None:
    users = PasswordFile()
    users.set("dev", "pw", log2_n=FAST)
    scrypt_calls.clear()
    assert not users.verify("nobody", "pw")
    assert scrypt_calls == [1 << passwords.DEFAULT_LOG2_N]
    assert not users.verify("dev", "wrong")
    assert users.verify("dev", "pw")


def test_set_refuses_an_empty_password() -> None:
    with pytest.raises(ValueError, match="empty password"):
        PasswordFile().set("dev", "")


def test_save_is_atomic_0600_and_fsyncs_file_then_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "passwd"
    path.write_text("# old\n")
    path.chmod(0o644)
    stale = tmp_path / "passwd.tmp"
    stale.write_text("left over by a crash\n")
    stale.chmod(0o666)
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    old_umask = os.umask(0)
    try:
        users = PasswordFile.load(path)
        users.set("dev", "pw", log2_n=FAST)
        users.save(path)
        fresh = tmp_path / "fresh"
        users.save(fresh)
    finally:
        os.umask(old_umask)
    for saved in (path, fresh):
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "passwd"]
    assert synced == ["file", "folder"] * 2
    assert PasswordFile.load(path).verify("dev", "pw")


def test_failed_save_leaves_the_old_file_and_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "passwd"
    path.write_text("# old\n")

    def broken_replace(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    users = PasswordFile.load(path)
    users.set("dev", "pw", log2_n=FAST)
    with pytest.raises(OSError):
        users.save(path)
    assert path.read_text() == "# old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_save_as_root_keeps_the_owner_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("")
    os.chown(path, 4242, 4343)
    users = PasswordFile.load(path)
    users.set("dev", "pw", log2_n=FAST)
    users.save(path)
    assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4343)


def test_second_verify_of_the_same_password_skips_scrypt(scrypt_calls: list[int]) -> None:
    users = PasswordFile()
    users.set("cached", "remembered-password", log2_n=FAST)
    scrypt_calls.clear()
    assert users.verify("cached", "remembered-password") and users.verify("cached", "remembered-password")
    assert len(scrypt_calls) == 1
    assert not users.verify("cached", "wrong")  # a wrong password is never a cache hit
    assert len(scrypt_calls) == 2
    assert "remembered-password" not in repr(passwords._verified["cached"])


def test_changed_password_in_the_file_stops_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    users = PasswordFile()
    users.set("dev", "old", log2_n=FAST)
    users.save(path)
    assert PasswordFile.load(path).verify("dev", "old")  # now remembered

    edited = PasswordFile.load(path)
    edited.set("dev", "new", log2_n=FAST)
    edited.save(path)
    reloaded = PasswordFile.load(path)
    assert not reloaded.verify("dev", "old")
    assert reloaded.verify("dev", "new")
    assert not users.verify("dev", "new")  # the old file object still has the old hash
    assert users.verify("dev", "old")


def test_deleted_user_is_not_verified_from_the_cache() -> None:
    users = PasswordFile()
    users.set("gone", "pw", log2_n=FAST)
    assert users.verify("gone", "pw")
    users.delete("gone")
    assert not users.verify("gone", "pw")


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "_verified", {})
    monkeypatch.setattr(passwords, "VERIFIED_CACHE_MAX_ENTRIES", 2)
    users = PasswordFile()
    for name in ("a", "b", "c"):
        users.set(name, name, log2_n=FAST)
        assert users.verify(name, name)
    assert len(passwords._verified) == 2
    assert users.verify("a", "a")  # an evicted user is checked with scrypt again
    assert len(passwords._verified) == 2
