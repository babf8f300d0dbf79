"""Fixtures shared by every suite: real local services on free 127.0.0.1 ports, always stopped; and
the report sections printed at the end of the run."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from ferry.local_kafka import LocalKafka

@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """The local Kafka-compatible broker (Tansu, memory storage), one per test session.

    Tests share it, so each test uses its own topic names.
    """
    with LocalKafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


def _live_children() -> list[tuple[int, str]]:
    """(pid, command line) of this process's children that are still running."""
    me = str(os.getpid())
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == me and fields[0] != "Z":
            children.append((int(entry), cmdline.strip()))
    return children


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Every server a test starts, the test stops: anything still running at the end fails the run."""
    yield
    leaked = _live_children()
    for pid, _ in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leaked, f"tests left processes running: {leaked}"


REPORT_PREFIX = "report: "
REPORT_SECTIONS: dict[str, list[str]] = {}
"""Lines a test adds to a section of the end-of-run summary: a user property named "report: <section>"
(it travels in the test's report, so from a pytest-xdist worker to the controller that prints)."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        for name, value in report.user_properties:
            if name.startswith(REPORT_PREFIX):
                REPORT_SECTIONS.setdefault(name.removeprefix(REPORT_PREFIX), []).append(str(value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for section, lines in REPORT_SECTIONS.items():
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.write_line(line)
