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
    ({"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_CONSUMER_MAX_POLL_RECORDS": "0"},
     "consumer_max_poll_records: must be at least 1"),
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
    # The output topics are the contract's (docs/contract.md).
    from ferry.worker_records import ALERTS_TOPIC, HEALTH_TOPIC, SERIES_TOPICS

    assert (config.series_topic, config.series_5m_topic, config.alerts_topic, config.health_topic) == \
        (SERIES_TOPICS["1m"], SERIES_TOPICS["5m"], ALERTS_TOPIC, HEALTH_TOPIC)
    assert (config.series_keep, config.alerts_keep) == (60, 1000)


def test_ferry_worker_without_a_broker_says_so() -> None:
    result = subprocess.run([sys.executable, "-m", "ferry", "worker"], capture_output=True, text=True, timeout=60,
                            cwd=REPO, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "FERRY_SERVER_BROKER" in result.stderr


# ---- where the HTTP side listens, and its API token ----------------------------------------------

TOKEN = "c2VjcmV0-token_42"


def worker_args(*argv: str):
    from ferry.server.main import build_parser

    return build_parser().parse_args(list(argv))


def test_the_api_listens_on_this_machine_only_by_default() -> None:
    config = ServerConfig(broker="k:1")
    assert (config.web_host, config.web_port, config.canonical_url) == ("127.0.0.1", 6066, "http://127.0.0.1:6066")
    assert config.api_token == "" and config.advertised_url == ""


def test_flags_win_over_the_environment_and_the_file(tmp_path: Path) -> None:
    from ferry.server.main import config_from_args

    path = tmp_path / "server.toml"
    path.write_text('[server]\nbroker = "k:1"\nweb_host = "10.0.0.1"\nweb_port = 7000\n')
    environ = {"FERRY_SERVER_WEB_HOST": "10.0.0.2", "FERRY_SERVER_WEB_PORT": "7100"}
    config = config_from_args(worker_args("--config", str(path)), environ)
    assert (config.web_host, config.web_port) == ("10.0.0.2", 7100)
    config = config_from_args(worker_args("--config", str(path), "--web-host", "10.0.0.3", "--web-port", "7200"),
                              environ)
    assert (config.web_host, config.web_port, config.canonical_url) == ("10.0.0.3", 7200, "http://10.0.0.3:7200")
    with pytest.raises(ConfigError, match="--web-port: expected an integer"):
        config_from_args(worker_args("--config", str(path), "--web-port", "x"), environ)


def test_the_token_from_the_environment_or_the_file(tmp_path: Path) -> None:
    assert load_config({"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_API_TOKEN": TOKEN}).api_token == TOKEN
    path = tmp_path / "server.toml"
    path.write_text(f'[server]\nbroker = "k:1"\napi_token = "{TOKEN}"\n')
    assert load_config({}, path).api_token == TOKEN


def test_the_token_from_a_file_named_by_the_flag(tmp_path: Path) -> None:
    from ferry.server.main import config_from_args

    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    config = config_from_args(worker_args("--api-token-file", str(token_file)), {"FERRY_SERVER_BROKER": "k:1"})
    assert (config.api_token, config.api_token_file) == (TOKEN, str(token_file))
    environ = {"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_API_TOKEN_FILE": str(token_file)}
    assert load_config(environ).api_token == TOKEN


@pytest.mark.parametrize("content,message", [
    ("", "is empty"), ("  \n", "is empty"), (b"\xff\xfe", "not UTF-8"),
    (f"{TOKEN} {TOKEN}", "may hold only"), ("tok\u00e9n", "may hold only"), ("Bearer x", "may hold only"),
])
def test_a_bad_token_file_is_refused_without_echoing_it(tmp_path: Path, content: str | bytes, message: str) -> None:
    token_file = tmp_path / "token"
    if isinstance(content, bytes):
        token_file.write_bytes(content)
    else:
        token_file.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config({"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_API_TOKEN_FILE": str(token_file)})
    assert TOKEN not in str(caught.value) and "tok\u00e9n" not in str(caught.value)


def test_token_settings_that_cannot_both_be(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with pytest.raises(ConfigError, match="not both"):
        load_config({"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_API_TOKEN": TOKEN,
                     "FERRY_SERVER_API_TOKEN_FILE": str(token_file)})
    with pytest.raises(ConfigError, match="api_token_file: cannot read"):
        load_config({"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_API_TOKEN_FILE": str(tmp_path / "missing")})


def test_the_token_itself_is_no_flag() -> None:
    """A command line is visible to every user of the machine (ps, /proc/<pid>/cmdline)."""
    for argv in (["--api-token", TOKEN], [f"--api-token={TOKEN}"], ["--token", TOKEN]):
        with pytest.raises(SystemExit) as caught:
            worker_args(*argv)
        assert caught.value.code == 2


def test_ferry_worker_with_an_unreadable_token_file_says_so(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ferry", "worker", "--api-token-file", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={"PATH": "/usr/bin:/bin", "FERRY_SERVER_BROKER": "k:1"})
    assert result.returncode == 2
    assert "server.api_token_file: cannot read" in result.stderr


# ---- the URL the other workers reach this one at (Faust's canonical_url) --------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0"])
def test_a_wildcard_bind_needs_an_advertised_url(host: str) -> None:
    """0.0.0.0 listens on every address but is none another worker can reach: refused, naming the key."""
    with pytest.raises(ConfigError, match=r"server\.advertised_url: must be set when web_host is the wildcard"):
        ServerConfig(broker="k:1", web_host=host)
    config = ServerConfig(broker="k:1", web_host=host, web_port=7000, advertised_url="http://10.0.0.5:7000/")
    assert (config.web_host, config.canonical_url) == (host, "http://10.0.0.5:7000")


def test_the_advertised_url_defaults_to_the_bind_address() -> None:
    assert ServerConfig(broker="k:1", web_host="10.0.0.5", web_port=7000).canonical_url == "http://10.0.0.5:7000"
    assert ServerConfig(broker="k:1", web_host="::1").canonical_url == "http://[::1]:6066"
    assert ServerConfig(broker="k:1", web_host="worker-1.lan").canonical_url == "http://worker-1.lan:6066"
    # Given, it wins over the bind address even when that is a reachable one.
    assert ServerConfig(broker="k:1", advertised_url="https://w1.example:8443").canonical_url == \
        "https://w1.example:8443"


@pytest.mark.parametrize("url", ["10.0.0.5:6066", "ftp://10.0.0.5:6066", "http://", "http://0.0.0.0:6066",
                                 "http://[::]:6066", "http://10.0.0.5:99999", "http://10.0.0.5:6066/api",
                                 "http://10.0.0.5:6066?x=1", "http://user:pw@10.0.0.5:6066"])
def test_a_bad_advertised_url_names_the_key(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^server\.advertised_url: "):
        ServerConfig(broker="k:1", web_host="0.0.0.0", advertised_url=url)


def test_the_advertised_url_from_the_file_the_environment_or_the_flag(tmp_path: Path) -> None:
    from ferry.server.main import config_from_args

    path = tmp_path / "server.toml"
    path.write_text('[server]\nbroker = "k:1"\nweb_host = "0.0.0.0"\nadvertised_url = "http://10.0.0.1:6066"\n')
    assert config_from_args(worker_args("--config", str(path)), {}).canonical_url == "http://10.0.0.1:6066"
    environ = {"FERRY_SERVER_ADVERTISED_URL": "http://10.0.0.2:6066"}
    assert config_from_args(worker_args("--config", str(path)), environ).canonical_url == "http://10.0.0.2:6066"
    config = config_from_args(worker_args("--config", str(path), "--advertised-url", "http://10.0.0.3:6066"), environ)
    assert (config.web_host, config.canonical_url) == ("0.0.0.0", "http://10.0.0.3:6066")


def test_ferry_worker_bound_to_a_wildcard_without_an_advertised_url_says_so() -> None:
    result = subprocess.run([sys.executable, "-m", "ferry", "worker", "--web-host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={"PATH": "/usr/bin:/bin", "FERRY_SERVER_BROKER": "k:1"})
    assert result.returncode == 2
    assert "server.advertised_url: must be set when web_host is the wildcard 0.0.0.0" in result.stderr
    assert "--advertised-url URL" in subprocess.run([sys.executable, "-m", "ferry", "worker", "--help"],
                                                    capture_output=True, text=True, timeout=60, cwd=REPO).stdout
