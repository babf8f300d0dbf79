"""Each link profile measurably does what it says, through an in-process `Link` and a real upstream.

Timings are lower bounds that follow from the profile (a chunk is never
delivered before its latency has passed), never upper bounds.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from ferry.process import free_port
from ferry.hwsim.link import PROFILES, Link, LinkProfile
from tests.hwsim.link_support import (
    EchoServer, SinkServer, connection_is_cut, refused, round_trip, run,
)



def test_perfect_passes_large_payloads_unchanged_over_concurrent_connections() -> None:
    payloads = [random.Random(i).randbytes(256 * 1024 + i) for i in range(16)]

    async def one(port: int, payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()  # the echo closes after our EOF: the link must carry the half-close
        echoed = await reader.read(-1)
        writer.close()
        return echoed

    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address, profile="perfect") as link:
            echoed = await asyncio.gather(*(one(link.port, p) for p in payloads))
            assert echoed == payloads
            stats = link.stats()
            assert stats.bytes_upstream == stats.bytes_downstream == sum(map(len, payloads))
            assert stats.connections_total == len(payloads)
            for _ in range(100):  # both closes went through: no connection left behind
                if not link.stats().connections_open:
                    break
                await asyncio.sleep(0.01)
            assert link.stats().connections_open == 0

    run(scenario())


def test_a_fleet_of_200_connections_goes_through_one_link() -> None:
    async def device(port: int, n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(3):
            await round_trip(reader, writer, f"device {n} reading {i}\n".encode())
        writer.close()

    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address, profile="wifi-good", seed=1) as link:
            await asyncio.gather(*(device(link.port, n) for n in range(200)))
            assert link.stats().connections_total == 200
            assert echo.accepted == 200

    run(scenario())


def test_latency_is_added_one_way_in_each_direction() -> None:
    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address, profile=LinkProfile(latency_ms=100)) as link:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            rtts = [await round_trip(reader, writer, b"ping %d" % i) for i in range(3)]
            writer.close()
        # 100 ms to the echo and 100 ms back.
        assert min(rtts) >= 0.2

    run(scenario())


def test_jitter_never_reorders_bytes() -> None:
    messages = b"".join(b"%06d" % i for i in range(500))

    async def scenario() -> None:
        profile = LinkProfile(latency_ms=20, jitter_ms=20)
        async with EchoServer() as echo, Link(upstream=echo.address, profile=profile, seed=3) as link:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            for i in range(0, len(messages), 6):  # many small writes, each its own delayed chunk
                writer.write(messages[i:i + 6])
                await writer.drain()
                if i % 600 == 0:
                    await asyncio.sleep(0.001)
            assert await reader.readexactly(len(messages)) == messages
            writer.close()

    run(scenario())


def test_bandwidth_cap_50_kb_per_s_paces_100_kb() -> None:
    payload = os.urandom(100_000)

    async def scenario() -> float:
        profile = LinkProfile(bandwidth_bytes_per_s=50_000)
        async with SinkServer() as sink, Link(upstream=sink.address, profile=profile) as link:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            start = time.monotonic()
            writer.write(payload)
            arrived = await sink.wait_for_bytes(len(payload))
            writer.close()
            assert link.stats().bytes_upstream == len(payload)
            return arrived - start

    # 100 kB at 50 kB/s is 2 s; the 4 KiB burst allowance may go out at once.
    assert run(scenario()) >= 1.8


def test_blackhole_accepts_reads_and_never_delivers_nor_closes() -> None:
    async def scenario() -> None:
        async with SinkServer() as sink, Link(upstream=sink.address, profile="blackhole") as link:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            writer.write(os.urandom(10_000))
            await writer.drain()
            writer.write_eof()  # even our FIN is swallowed
            assert not await connection_is_cut(reader, timeout_s=1.2)
            assert sink.accepted == 0 and sink.received == 0
            stats = link.stats()
            assert stats.bytes_dropped == 10_000 and stats.connections_open == 1
            writer.transport.abort()

    run(scenario())


def test_blackhole_on_a_live_connection_is_half_open_and_cut_when_it_lifts() -> None:
    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address) as link:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            await round_trip(reader, writer, b"before")
            link.set_profile("blackhole")
            writer.write(b"lost")
            await writer.drain()
            assert not await connection_is_cut(reader, timeout_s=1.0)  # no echo, no close
            assert link.stats().bytes_dropped >= 4
            link.set_profile("perfect")  # the lost bytes cannot come back: the connection is cut
            assert await connection_is_cut(reader)
            assert link.stats().cuts == 1
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            await round_trip(reader, writer, b"after")
            writer.close()

    run(scenario())


def test_outage_refuses_new_connections_and_cuts_existing_ones() -> None:
    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address) as link:
            port = link.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await round_trip(reader, writer, b"hello")
            link.set_profile("outage")
            assert await connection_is_cut(reader)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            assert link.stats().cuts == 1
            link.set_profile("wifi-good")  # back on the same port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await round_trip(reader, writer, b"again")
            writer.close()

    run(scenario())


def test_a_link_started_down_refuses_until_it_comes_up() -> None:
    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address, profile="outage") as link:
            assert await refused(link.port)
            link.set_profile("perfect")
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            await round_trip(reader, writer, b"up")
            writer.close()

    run(scenario())


def test_set_profile_changes_a_live_connection() -> None:
    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address) as link:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            await round_trip(reader, writer, b"fast")
            link.set_profile({"latency_ms": 150})
            assert await round_trip(reader, writer, b"slow") >= 0.3
            link.set_profile("perfect")
            await round_trip(reader, writer, b"fast again")
            assert link.stats().connections_total == 1  # the same connection throughout
            writer.close()

    run(scenario())


def test_stalls_hold_delivery_in_both_directions() -> None:
    stall_ms = 300

    async def scenario() -> float:
        profile = LinkProfile(stall_probability_per_s=3, stall_ms=stall_ms)
        async with EchoServer() as echo, Link(upstream=echo.address, profile=profile, seed=5) as link:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            rtts: list[float] = []
            first_stall_seen_at = None
            # Ping-pong keeps a message in flight at every moment, so the first stall holds one.
            while first_stall_seen_at is None or time.monotonic() - first_stall_seen_at < stall_ms / 1000:
                rtts.append(await round_trip(reader, writer, b"ping"))
                if first_stall_seen_at is None and link.stats().stalls:
                    first_stall_seen_at = time.monotonic()
            writer.close()
            return max(rtts)

    assert run(scenario()) >= 0.8 * stall_ms / 1000


def test_reset_injection_cuts_connections() -> None:
    async def scenario() -> None:
        profile = LinkProfile(reset_probability_per_s=20)
        async with EchoServer() as echo, Link(upstream=echo.address, profile=profile, seed=7) as link:
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
                with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                    while True:
                        await round_trip(reader, writer, b"ping")
                        await asyncio.sleep(0.01)
                writer.transport.abort()
            assert link.stats().resets_injected == 3

    run(scenario())


def test_reset_all_cuts_every_current_connection() -> None:
    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address) as link:
            streams = [await asyncio.open_connection("127.0.0.1", link.port) for _ in range(5)]
            for reader, writer in streams:
                await round_trip(reader, writer, b"hi")
            assert link.reset_all() == 5
            for reader, _ in streams:
                assert await connection_is_cut(reader)
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            await round_trip(reader, writer, b"new ones still work")
            writer.close()
            assert link.stats().cuts == 5

    run(scenario())


def test_scheduled_outage_starts_and_ends() -> None:
    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address) as link:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            link.schedule([(0.3, "outage"), (0.9, "wifi-good")])
            await round_trip(reader, writer, b"before the outage")
            assert await connection_is_cut(reader)
            assert link.profile.name == "outage"
            assert await refused(link.port)
            while link.profile.name == "outage":
                await asyncio.sleep(0.05)
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            await round_trip(reader, writer, b"after the outage")
            writer.close()

    run(scenario())


def test_a_receiver_that_never_reads_pushes_back_on_the_sender() -> None:
    async def scenario() -> None:
        held: list[asyncio.StreamWriter] = []

        async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        server = await asyncio.start_server(never_read, "127.0.0.1", 0)
        try:
            upstream = server.sockets[0].getsockname()[:2]
            async with Link(upstream=upstream, max_buffered_bytes=65536) as link:
                reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
                # Far more than the kernel's socket buffers along the way can hold: unless the
                # link stops reading, it would all be swallowed.
                writer.write(bytes(64 * 1024 * 1024))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(writer.drain(), 0.5)
                writer.transport.abort()
        finally:
            for held_writer in held:
                held_writer.transport.abort()
            server.close()

    run(scenario())


def test_an_upstream_that_refuses_gets_the_client_reset() -> None:
    async def scenario() -> None:
        async with Link(upstream=("127.0.0.1", free_port())) as link:  # nothing listens there
            assert await refused(link.port)
            assert link.stats().upstream_failures == 1

    run(scenario())


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_preset_loads_and_runs_a_short_exchange(name: str) -> None:
    profile = PROFILES[name]
    payload = os.urandom(2048)

    async def scenario() -> None:
        async with EchoServer() as echo, Link(upstream=echo.address, profile=name, seed=11) as link:
            assert link.profile is profile
            if profile.down:
                assert await refused(link.port)
                return
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            if profile.blackhole:
                writer.write(payload)
                assert not await connection_is_cut(reader, timeout_s=0.3)
                assert echo.accepted == 0
            else:
                rtt = await round_trip(reader, writer, payload)
                assert rtt >= 2 * max(0.0, profile.latency_ms - profile.jitter_ms) / 1000
            writer.transport.abort()

    run(scenario())
