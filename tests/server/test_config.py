"""The worker's configuration: TOML, environment overrides, and no broker without being told one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ferry.server.config import ConfigError, ServerConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[server]\nbroker = "k1:9092,k2:9092"\nweb_port = 7000\nallowed_lateness_s = 30\n')
    config = load_config({"FERRY_SERVER_WEB_PORT": "7100", "FERRY_SERVER_BROKER_SESSION_TIMEOUT_S": "6"}, path)
    assert config.broker_url == "kafka://k1:9092;k2:9092"
    assert (config.web_port, config.allowed_lateness_s, config.broker_session_timeout_s) == (7100, 30, 6.0)


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[server]\nbroker = "kafka://k:1"\n')
    assert load_config({"FERRY_SERVER_CONFIG": str(path)}).broker_url == "kafka://k:1"


@pytest.mark.parametrize("environ,message", [
    ({}, "server.broker: not set"),
    ({"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_WEB_PORT": "x"}, "FERRY_SERVER_WEB_PORT: expected an integer"),
    ({"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_HOPPING_STEP_S": "70"}, "multiple of hopping_step_s"),
    ({"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_DEDUPE_WINDOW": "0"}, "dedupe_window: must be at least 1"),
])
def test_bad_settings_name_the_key(environ: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ)


def test_unknown_keys_in_the_file_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[server]\nbroker = "k:1"\nwindow = 3\n')
    with pytest.raises(ConfigError, match="server.window: unknown key"):
        load_config({}, path)


def test_defaults_are_the_documented_ones() -> None:
    config = ServerConfig(broker="k:1")
    assert (config.telemetry_topic, config.status_topic, config.series_topic) == \
        ("ferry.telemetry", "ferry.status", "ferry.series.1m")
    assert (config.tumbling_s, config.hopping_size_s, config.hopping_step_s) == (60, 300, 60)


def test_ferry_worker_without_a_broker_says_so() -> None:
    result = subprocess.run([sys.executable, "-m", "ferry", "worker"], capture_output=True, text=True, timeout=60,
                            cwd=REPO, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "FERRY_SERVER_BROKER" in result.stderr
