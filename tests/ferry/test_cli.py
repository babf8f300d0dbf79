"""The `ferry` command lists its parts and is honest about the ones not built yet."""

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


def test_unbuilt_subcommands_say_so_and_fail() -> None:
    unbuilt = [sub for sub in SUBCOMMANDS if sub.module is None]
    for sub in unbuilt:
        result = run_ferry(sub.name)
        assert result.returncode != 0
        assert "not built yet" in result.stderr
        assert result.stdout == ""


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
