"""A null broker for measuring the load generator's own ceiling: `python -m ferry.bench.sink --port P`.

It speaks just enough MQTT 3.1.1 to look like a broker that costs nothing:
CONNACK for every CONNECT; QoS 0 PUBLISHes are thrown away unread, QoS 1
ones are answered with a PUBACK; a SUBSCRIBE is granted, and from the
subscriber's first PINGREQ on (the generator's "go") it gets pre-built 64-byte
PUBLISHes (stamped per write) as fast as its socket takes them. Whatever the generator reaches against it is the most it
can send and receive, so a broker run near that rate measured the generator.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import time

from ferry.bench import wire

CHUNK_MESSAGES = 512
WRITE_HIGH_WATER_BYTES = 1_048_576
WRITE_LOW_WATER_BYTES = 262_144


class SinkProtocol(asyncio.Protocol):
    """One client: CONNECT → CONNACK, then discard, ack, or blast."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.connected = False
        self.discard = False
        self.subscribed_qos: int | None = None
        self.blast_parts: list[bytes] | None = None
        self.paused = False
        self.scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)

    def data_received(self, data: bytes) -> None:
        if self.discard:
            return
        data = self.buf + data if self.buf else data
        n = len(data)
        pos = 0
        acks = []
        while pos + 2 <= n:
            first = data[pos]
            length, header = data[pos + 1], 2
            if length & 0x80:
                length, header = wire.long_length(data, pos, n)
                if not header:
                    break
            end = pos + header + length
            if end > n:
                break
            body = pos + header
            kind = first >> 4
            if kind == 3:  # PUBLISH
                qos = (first >> 1) & 3
                if qos == 0 and not self.connected_subscriber():
                    # A QoS 0 publisher: everything after this is thrown away unread.
                    self.discard = True
                    self.buf = b""
                    return
                if qos:
                    p = body + 2 + ((data[body] << 8) | data[body + 1])
                    acks.append(wire.PUBACKS[(data[p] << 8) | data[p + 1]])
            elif kind == 1:  # CONNECT
                self.transport.write(b"\x20\x02\x00\x00")
                self.connected = True
            elif kind == 8:  # SUBSCRIBE: grant the requested QoS of the single filter
                packet_id = data[body:body + 2]
                self.subscribed_qos = data[end - 1] & 3
                self.transport.write(b"\x90\x03" + packet_id + bytes((self.subscribed_qos,)))
            elif kind == 12:  # PINGREQ: from a subscriber, the generator's "go"
                self.transport.write(b"\xd0\x00")
                if self.subscribed_qos is not None and self.blast_parts is None:
                    self.start_blast(self.subscribed_qos)
            elif kind == 14:  # DISCONNECT
                self.transport.close()
            pos = end
        if acks:
            self.transport.write(b"".join(acks))
        self.buf = data[pos:] if pos < n else b""

    def connected_subscriber(self) -> bool:
        return self.blast_parts is not None

    def start_blast(self, qos: int) -> None:
        template = wire.PublishTemplate.build(wire.topic_for("bench", 0), 0, qos)
        if qos:
            # Packet ids 1..CHUNK_MESSAGES, the timestamp joined in between like the QoS 0 batch.
            parts = [template.head + wire.PACKET_IDS[1]]
            for pid in range(2, CHUNK_MESSAGES + 1):
                parts.append(template.tail + template.head + wire.PACKET_IDS[pid])
            parts.append(template.tail)
        else:
            parts = template.batch_parts(CHUNK_MESSAGES)
        self.blast_parts = parts
        self.schedule()

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.blast)

    def blast(self) -> None:
        self.scheduled = False
        transport = self.transport
        if self.paused or transport is None or transport.is_closing():
            return
        for _ in range(4):
            transport.write(wire.timestamp(time.monotonic_ns()).join(self.blast_parts))
            if self.paused:
                return
        self.schedule()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.blast_parts is not None:
            self.schedule()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(loop), host, port, reuse_address=True, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferry.bench.sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
