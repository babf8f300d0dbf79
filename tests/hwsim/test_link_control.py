"""Changing profiles at run time: LinkSet's control socket, LinkThread, LinkProcess and the CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ferry.process import free_port
from ferry.hwsim.link import (
    PROFILES, LinkConfig, LinkControl, LinkControlError, LinkProcess, LinkProfile, LinkSet, LinkThread, main,
)
from tests.hwsim.link_support import (
    EchoServer, ThreadedEchoServer, blocking_refused, blocking_round_trip, connection_is_cut, refused,
    round_trip, run, wait_until,
)

MIN_SLOW_ROUND_TRIP_S = 0.19
"""100 ms of added latency each way: at least 0.2 s, less the event loop's timer resolution (asyncio
runs a `call_later` callback up to one clock tick early; 0.1996 s was seen)."""


def test_control_socket_steers_one_link_of_a_set() -> None:
    async def scenario() -> None:
        async with EchoServer() as echo:
            host, port = echo.address
            configs = [LinkConfig(upstream_host=host, upstream_port=port, name="devices"),
                       LinkConfig(upstream_host=host, upstream_port=port, name="kafka")]
            async with LinkSet(configs, control_port=0) as links:
                control = LinkControl(links.control_port)
                reader, writer = await asyncio.open_connection("127.0.0.1", links["devices"].port)
                await round_trip(reader, writer, b"hello")

                profile = await asyncio.to_thread(control.set_profile, "outage", "devices")
                assert profile == PROFILES["outage"]
                assert await connection_is_cut(reader)
                assert await refused(links["devices"].port)
                kafka = await asyncio.open_connection("127.0.0.1", links["kafka"].port)
                await round_trip(*kafka, b"the other link is untouched")
                kafka[1].close()

                custom = await asyncio.to_thread(control.set_profile, {"latency_ms": 100}, "devices")
                assert custom == LinkProfile(latency_ms=100)
                reader, writer = await asyncio.open_connection("127.0.0.1", links["devices"].port)
                assert await round_trip(reader, writer, b"slow now") >= MIN_SLOW_ROUND_TRIP_S

                assert await asyncio.to_thread(control.reset_all, "devices") == 1
                assert await connection_is_cut(reader)
                stats = await asyncio.to_thread(control.stats)
                assert set(stats) == {"devices", "kafka"}
                assert stats["devices"].cuts == 2 and stats["devices"].profile == "custom"
                listed = await asyncio.to_thread(control.links)
                assert listed["kafka"]["port"] == links["kafka"].port

                with pytest.raises(LinkControlError, match="say which link"):
                    await asyncio.to_thread(control.set_profile, "perfect")
                with pytest.raises(LinkControlError, match="unknown profile"):
                    await asyncio.to_thread(control.set_profile, "moon", "devices")

    run(scenario())


def test_link_thread_serves_synchronous_tests() -> None:
    with ThreadedEchoServer() as echo:
        config = LinkConfig(upstream_host=echo.address[0], upstream_port=echo.address[1], name="devices")
        with LinkThread([config], control_port=0) as links:
            blocking_round_trip(links.port(), b"x" * 100_000)
            links.set_profile({"latency_ms": 100})
            assert blocking_round_trip(links.port("devices"), b"ping") >= MIN_SLOW_ROUND_TRIP_S
            LinkControl(links.control_port).set_profile("outage")
            assert blocking_refused(links.port())
            links.schedule([(0.2, "perfect")])
            assert wait_until(lambda: not blocking_refused(links.port()))
            stats = links.stats()
            assert stats.connections_total >= 2 and stats.bytes_upstream >= 100_004


def test_cli_and_control_socket_change_a_running_link_process(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with ThreadedEchoServer() as echo, \
            LinkProcess.for_upstream(echo.address, tmp_path, profile="wifi-good", name="devices") as proc:
        port = proc.port()
        control = f"127.0.0.1:{proc.control_port}"
        blocking_round_trip(port, b"through the child process")

        assert main(["set", "--control", control, "--link", "devices", "--profile", "outage"]) == 0
        assert json.loads(capsys.readouterr().out)["down"] is True
        assert blocking_refused(port)

        proc.set_profile({"base": "wifi-good", "latency_ms": 100})
        assert blocking_round_trip(port, b"slow") >= MIN_SLOW_ROUND_TRIP_S

        assert main(["schedule", "--control", control, "0=outage", "0.3=perfect"]) == 0
        assert json.loads(capsys.readouterr().out) == [[0.0, "outage"], [0.3, "perfect"]]
        assert wait_until(lambda: blocking_refused(port))
        assert wait_until(lambda: not blocking_refused(port))
        blocking_round_trip(port, b"back")

        assert main(["stats", "--control", control, "--link", "devices"]) == 0
        stats = json.loads(capsys.readouterr().out)["devices"]
        assert stats["profile"] == "perfect" and stats["connections_total"] >= 3
        assert proc.stop() == 0  # SIGTERM: links closed, clean exit
    assert "ready: devices=127.0.0.1:" in proc.process.log_tail()


def test_one_process_runs_several_links(tmp_path: Path) -> None:
    with ThreadedEchoServer() as echo:
        host, port = echo.address
        configs = [LinkConfig(upstream_host=host, upstream_port=port, name="devices", profile=PROFILES["cellular"]),
                   LinkConfig(upstream_host=host, upstream_port=port, name="kafka")]
        with LinkProcess(configs, tmp_path) as proc:
            assert blocking_round_trip(proc.port("devices"), b"a" * 1000) >= 2 * 0.04
            proc.set_profile("outage", link="kafka")
            assert blocking_refused(proc.port("kafka"))
            blocking_round_trip(proc.port("devices"), b"still up")
            assert {name: s.profile for name, s in proc.stats().items()} == \
                {"devices": "cellular", "kafka": "outage"}


def test_cli_reports_usage_and_unreachable_control(capsys: pytest.CaptureFixture[str]) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    assert main(["serve"]) == 2
    with pytest.raises(SystemExit):
        main(["set", "--control", nobody, "--profile", "no-such-profile"])
    assert main(["set", "--control", nobody, "--profile", "outage"]) == 1
    assert nobody in capsys.readouterr().err
    assert main(["profiles"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(PROFILES)
