"""What a real gateway process answers on the wire to protocol errors: the DISCONNECT or CONNACK that
names the reason reaches the peer (the socket is shut down, not reset), and only that connection ends."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from ferry.gateway.mqtt import (
    Connect, Decoder, Disconnect, ProtocolVersion, Publish, ReasonCode, Suback, Subscribe, Subscription, encode,
)
from ferry.gateway.process import GatewayProcess

V5 = ProtocolVersion.V5


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    with GatewayProcess(tmp_path_factory.mktemp("gw")) as gw:
        yield gw


def read_all(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    """Everything the gateway sends until it closes; raises ConnectionResetError on a reset."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_a_protocol_error_is_answered_with_a_disconnect_the_peer_can_read(gateway: GatewayProcess) -> None:
    """A subscriber that reads slowly has megabytes of output queued when it sends a bad packet and
    keeps sending: closing the socket with its input unread would reset the connection and throw
    away the queued output, DISCONNECT included. The gateway half-closes and drains instead."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect(("127.0.0.1", gateway.port))
        sock.settimeout(5)
        decoder = Decoder(server_side=False, protocol_version=V5)
        sock.sendall(encode(Connect("slow", V5, True, 60), V5))
        assert decoder.feed(sock.recv(1024))[0].reason_code == ReasonCode.SUCCESS
        sock.sendall(encode(Subscribe(1, (Subscription("flood", 0),)), V5))
        assert isinstance(decoder.feed(sock.recv(1024))[0], Suback)
        with socket.create_connection(("127.0.0.1", gateway.port)) as publisher:
            publisher.sendall(encode(Connect("flooder", V5, True, 60), V5))
            publisher.sendall(encode(Publish("flood", b"x" * 1000, 0), V5) * 3000)
            time.sleep(1.0)  # the slow subscriber's buffers fill up
        # A PUBLISH with QoS 3 (malformed); once the gateway acted on it, more traffic that it will
        # never act on (and, closing the old way, never read).
        sock.sendall(bytes.fromhex("36 05 00 01 74 00 01"))
        time.sleep(0.3)
        sock.sendall(bytes.fromhex("c0 00") * 5000)
        time.sleep(0.3)
        answer = read_all(sock)
        packets = decoder.feed(answer)
        assert packets and all(isinstance(p, Publish) for p in packets[:-1])
        assert packets[-1] == Disconnect(ReasonCode.MALFORMED_PACKET)


def test_unsupported_protocol_level_is_answered_with_connack_0x01(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(bytes.fromhex("10 0c 00 04 4d 51 54 54 06 02 00 3c 00 00"))
        assert read_all(sock) == bytes.fromhex("20 02 00 01")


def test_other_connections_are_unaffected(gateway: GatewayProcess, tmp_path: Path) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as good:
        good.sendall(encode(Connect("good", V5, True, 60), V5))
        good.settimeout(5)
        decoder = Decoder(server_side=False, protocol_version=V5)
        assert decoder.feed(good.recv(1024))[0].reason_code == ReasonCode.SUCCESS
        with socket.create_connection(("127.0.0.1", gateway.port)) as bad:
            bad.sendall(bytes.fromhex("10 0c 00 04 4d 51 54 54 06 02 00 3c 00 00"))
            read_all(bad)
        good.sendall(bytes.fromhex("c0 00"))  # PINGREQ
        assert decoder.feed(good.recv(1024))[0].__class__.__name__ == "Pingresp"
