"""docs/raspberry-pi.md stays runnable: every `ferry` command in its shell blocks parses with the
options that exist, and every test it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ferry import flash
from ferry.gateway import main as gateway_main
from ferry.gateway.auth import passwd_cli

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "raspberry-pi.md").read_text()
PARSERS = {"gateway": gateway_main.build_parser, "flash": flash.build_parser, "passwd": passwd_cli.build_parser}


def ferry_commands() -> list[list[str]]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", DOC, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.replace("<pi-address>", "pi.local"), comments=True)
            if "|" in words:
                words = words[:words.index("|")]
            while words and words[0] == "sudo":
                words.pop(0)
            if words and words[0] in ("ferry", "/opt/ferry/bin/ferry"):
                commands.append(words[1:])
    return commands


def test_the_guide_has_its_commands() -> None:
    subcommands = [c[0] for c in ferry_commands() if c and not c[0].startswith("-")]
    assert subcommands.count("gateway") >= 4 and "flash" in subcommands and "passwd" in subcommands


@pytest.mark.parametrize("argv", [c for c in ferry_commands() if c and c[0] in PARSERS], ids=" ".join)
def test_command_parses(argv: list[str]) -> None:
    PARSERS[argv[0]]().parse_args(argv[1:])


def test_named_tests_exist() -> None:
    names = set(re.findall(r"`(test_[a-z0-9_]+)`", DOC))
    files = set(re.findall(r"`(tests/[a-z0-9_/]+\.py)`", DOC))
    assert names and files
    for path in files:
        assert (REPO / path).exists(), path
    sources = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    for name in names:
        assert f"def {name}(" in sources, name
