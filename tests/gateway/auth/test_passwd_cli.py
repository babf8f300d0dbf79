"""`ferry passwd`: add, change, delete and --random, the password never an argument, exit codes."""

from __future__ import annotations

import getpass
import io
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ferry.gateway.auth.passwd_cli import main, provision
from ferry.gateway.auth.passwords import PasswordFile

FERRY = Path(sys.executable).with_name("ferry")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make standard input a pipe carrying the given text."""
    def feed(text: str) -> None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    return feed


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """Make standard input a terminal whose getpass prompts are answered in turn; returns the prompts."""
    def answer(*answers: str) -> list[str]:
        prompts: list[str] = []
        replies = iter(answers)

        def fake_getpass(prompt: str = "Password: ") -> str:
            prompts.append(prompt)
            return next(replies)

        monkeypatch.setattr(sys, "stdin", Terminal())
        monkeypatch.setattr(getpass, "getpass", fake_getpass)
        return prompts
    return answer


def test_add_change_and_delete(tmp_path: Path, stdin: Callable[[str], None],
                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "passwd"
    stdin("first secret\nsecond line is ignored\n")
    assert main([str(path), "dev-1"]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PasswordFile.load(path).verify("dev-1", "first secret")

    stdin("other")  # no newline at the end
    assert main([str(path), "op"]) == 0
    stdin("changed\n")
    assert main([str(path), "dev-1"]) == 0
    users = PasswordFile.load(path)
    assert users.users() == ["dev-1", "op"]
    assert users.verify("dev-1", "changed") and not users.verify("dev-1", "first secret")
    assert users.verify("op", "other")

    assert main([str(path), "dev-1", "--delete"]) == 0
    assert PasswordFile.load(path).users() == ["op"]
    assert main([str(path), "dev-1", "--delete"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no user 'dev-1'" in captured.err and "Traceback" not in captured.err


def test_random_prints_the_stored_password_once(tmp_path: Path, stdin: Callable[[str], None],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "passwd"
    path.write_text("# fleet\n")
    stdin("must not be read\n")
    assert main([str(path), "dev-7", "--random"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and len(printed[0]) == 24
    assert sys.stdin.read() == "must not be read\n"
    users = PasswordFile.load(path)
    assert users.verify("dev-7", printed[0])
    assert path.read_text().startswith("# fleet\n")


def test_provision_gives_a_new_random_password_each_time(tmp_path: Path) -> None:
    path = tmp_path / "new-folder-file"
    first = provision(path, "dev-9")
    second = provision(path, "dev-9")
    assert first != second
    users = PasswordFile.load(path)
    assert users.verify("dev-9", second) and not users.verify("dev-9", first)


def test_terminal_asks_twice(tmp_path: Path, terminal: Callable[..., list[str]]) -> None:
    path = tmp_path / "passwd"
    prompts = terminal("typed", "typed")
    assert main([str(path), "op"]) == 0
    assert len(prompts) == 2
    assert PasswordFile.load(path).verify("op", "typed")


def test_terminal_mismatch_is_refused(tmp_path: Path, terminal: Callable[..., list[str]],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "passwd"
    terminal("typed", "typo")
    assert main([str(path), "op"]) == 2
    assert "differ" in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.parametrize("argv, text, problem", [
    (["USER-IS-BAD/"], "pw\n", "bad user name 'USER-IS-BAD/'"),
    (["dev 1"], "pw\n", "bad user name 'dev 1'"),
    (["dev"], "", "empty password"),
    (["dev"], "\nsecond\n", "empty password"),
])
def test_validation_errors_exit_2_and_leave_the_file(tmp_path: Path, stdin: Callable[[str], None],
                                                      capsys: pytest.CaptureFixture[str],
                                                      argv: list[str], text: str, problem: str) -> None:
    path = tmp_path / "passwd"
    path.write_text("# untouched\n")
    stdin(text)
    assert main([str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err
    assert path.read_text() == "# untouched\n"


def test_malformed_file_exits_2_naming_the_line(tmp_path: Path, stdin: Callable[[str], None],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "passwd"
    path.write_text("# ok\nnot a user line\n")
    stdin("pw\n")
    assert main([str(path), "dev"]) == 2
    assert f"{path}:2: " in capsys.readouterr().err
    assert path.read_text() == "# ok\nnot a user line\n"


def test_delete_from_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "absent"), "dev", "--delete"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_unwritable_place_exits_1(tmp_path: Path, stdin: Callable[[str], None],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    stdin("pw\n")
    assert main([str(tmp_path / "no-such-folder" / "passwd"), "dev"]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["FILE", "dev", "the-password"],  # a password is never an argument
    ["FILE", "dev", "--password", "x"],
    ["FILE", "dev", "--delete", "--random"],
    ["FILE"],
])
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_the_installed_command_reads_the_password_from_stdin(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    argv = [str(FERRY), "passwd", str(path), "sensor-0042"]
    result = subprocess.run(argv, input="from a pipe\n", capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert "from a pipe" not in " ".join(argv)
    assert PasswordFile.load(path).verify("sensor-0042", "from a pipe")
    again = subprocess.run(argv + ["--delete"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0
    absent = subprocess.run(argv + ["--delete"], capture_output=True, text=True, timeout=60)
    assert absent.returncode == 1 and "no user 'sensor-0042'" in absent.stderr

