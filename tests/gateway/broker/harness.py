"""In-memory clients for the broker core: packets go through the real codec both ways, no sockets."""

from __future__ import annotations

from ferry.gateway.auth.access import AccessControl
from ferry.gateway.auth.identity import Identity
from ferry.gateway.broker.config import BrokerConfig
from ferry.gateway.broker.core import Broker
from ferry.gateway.mqtt import Connect, Decoder, ProtocolError, ProtocolVersion, encode

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5


class FakeJournal:
    """Records appends per batch; batches commit only when the test says so."""

    def __init__(self) -> None:
        self.records: list[tuple[int, object]] = []
        self.pending_batch = 1
        self.committed_batch = 0

    def append(self, record: object) -> int:
        self.records.append((self.pending_batch, record))
        return self.pending_batch

    def commit(self) -> int:
        """Commit the pending batch; returns its number."""
        batch = self.pending_batch
        self.committed_batch = batch
        self.pending_batch += 1
        return batch

    def kinds(self) -> list[str]:
        return [type(record).__name__ for _, record in self.records]


class Harness:
    """A broker core with a fake clock and a fake journal."""

    def __init__(self, config: BrokerConfig | None = None, access: AccessControl | None = None) -> None:
        self.journal = FakeJournal()
        self.now = 1000.0
        self.broker = Broker(config or BrokerConfig(), self.journal, now=self.now, wall=1_700_000_000.0,
                             access=access)

    def commit(self) -> None:
        self.broker.commit_done(self.journal.commit())

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.broker.tick(self.now)

    def client(self, client_id: str, version: ProtocolVersion = V311, *, clean: bool = True,
               commit: bool = True, identity: Identity | None = None, **connect_fields) -> "Client":
        """A connected client; `identity` is what the network layer authenticated it as."""
        client = Client(self, version)
        client.conn.identity = identity
        client.send(Connect(client_id, version, clean, connect_fields.pop("keepalive_s", 60), **connect_fields))
        if commit:
            self.commit()
        return client


class Client:
    """One connection; `send` encodes, the broker decodes; `received` decodes the broker's output."""

    def __init__(self, harness: Harness, version: ProtocolVersion) -> None:
        self.harness = harness
        self.version = version
        self.conn = harness.broker.open_connection("127.0.0.1:1", harness.now)
        self.server_decoder = Decoder(server_side=True)
        self.decoder = Decoder(server_side=False, protocol_version=version)

    def send(self, packet: object) -> None:
        data = encode(packet, self.version)
        try:
            packets = self.server_decoder.feed(data)
        except ProtocolError as error:
            self.harness.broker.protocol_error(self.conn, error)
            return
        for decoded in packets:
            self.harness.broker.handle_packet(self.conn, decoded, self.harness.now)

    def received(self) -> list[object]:
        data = bytes(self.conn.out)
        self.conn.out.clear()
        return self.decoder.feed(data)

    def drop(self) -> None:
        """The network connection breaks."""
        self.harness.broker.connection_lost(self.conn, self.harness.now)

    @property
    def closing(self) -> bool:
        return self.conn.close_reason is not None
