"""docs/security.md's openssl recipe makes certificates a TLS listener and paho accept."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from ferry.process import free_port
from tests.gateway.paho_client import TestClient

DOC = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()


def recipe(folder: Path) -> str:
    """The certificate block, run in `folder` for 127.0.0.1, without sudo and the service user."""
    block = re.search(r"1\. \*\*The gateway's certificates\.\*\*.*?```sh\n(.*?)```", DOC, flags=re.S).group(1)
    block = block.replace("/etc/ferry/tls", str(folder)).replace("192.168.1.10", "127.0.0.1")
    block = block.replace("sudo ", "").replace("chown ferry:ferry server.key && ", "")
    return "\n".join(line.strip() for line in block.splitlines())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_openssl_recipe_makes_a_working_tls_listener(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    result = subprocess.run(["bash", "-e", "-c", recipe(tls)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    port = free_port()
    config = (f'[auth]\nallow_anonymous = true\n[[listener]]\nlisten = "127.0.0.1:{port}"\n'
              f'tls_cert = "{tls / "server.crt"}"\ntls_key = "{tls / "server.key"}"\n')
    with GatewayProcess(tmp_path / "data", config_text=config):
        with TestClient(port, "doc-check", tls={"ca_certs": str(tls / "ca.crt")}) as client:
            assert client.reason.value == 0
            client.subscribe("doc/check")
            client.publish("doc/check", b"over tls")
            assert client.expect(1)[0].payload == b"over tls"
