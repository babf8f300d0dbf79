"""The `ferry` command lists its parts, and each part answers `--help`."""

from __future__ import annotations

import json
import subprocess
import sys

from ferry.cli import SUBCOMMANDS


def run_ferry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True,
                          timeout=60)


def test_help_lists_every_subcommand() -> None:
    result = run_ferry("--help")
    assert result.returncode == 0
    for name in ("gateway", "worker", "flash", "sim", "demo", "bench"):
        assert name in result.stdout


def test_every_subcommand_answers_help() -> None:
    for sub in SUBCOMMANDS:
        result = run_ferry(sub.name, "--help")
        assert result.returncode == 0, (sub.name, result.stderr[-1000:])
        assert "usage:" in result.stdout.lower(), sub.name


def test_sim_link_lists_the_profiles_and_fleet_needs_a_gateway() -> None:
    result = run_ferry("sim", "link", "profiles")
    assert result.returncode == 0
    assert {"perfect", "wifi-good", "wifi-flaky", "cellular", "outage"} <= set(json.loads(result.stdout))
    fleet = run_ferry("sim", "fleet", "--devices", "3")
    assert fleet.returncode == 2 and "--gateway" in fleet.stderr


def test_gateway_help_describes_its_options() -> None:
    result = run_ferry("gateway", "--help")
    assert result.returncode == 0
    for option in ("--listen", "--data-dir", "--config", "--metrics"):
        assert option in result.stdout
