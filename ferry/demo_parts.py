"""How `ferry demo` sets up its parts (docs/demo.md): the topics, the fleet's credentials and
certificates, the gateway's config, the workers' settings and the duty-cycle boards' period."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PARTITIONS = 4
GATEWAY_ID = "demo-gw"
CONSOLE_USER = "demo-console"
"""The operator account of the fleet's own subscriber."""
TOPICS = ("ferry.telemetry", "ferry.status", "ferry.reply", "ferry.deadletter", "ferry.series.1m", "ferry.series.5m",
          "ferry.alerts", "ferry.health")
"""What the gateway's bridge writes (BridgeNaming's defaults) and what the worker writes."""


def create_topics(bootstrap_servers: str, partitions: int = PARTITIONS) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    for future in admin.create_topics([NewTopic(t, partitions, 1) for t in TOPICS]).values():
        future.result(30)


@dataclass(frozen=True)
class Credentials:
    """The secured demo's accounts and certificates: a private CA, the gateway's TLS certificate,
    a password file with one random password per simulated board and one operator (the fleet's
    own subscriber)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    password_file: Path
    device_passwords: dict[str, str]
    console_password: str


def make_credentials(folder: Path, device_ids: Sequence[str]) -> Credentials:
    """Provision the demo fleet as an operator would (docs/security.md): certificates, then a random
    password per device in the gateway's password file."""
    import secrets

    from ferry.certs import CertificateAuthority
    from ferry.gateway.auth.passwords import PasswordFile

    ca = CertificateAuthority(folder / "tls")
    server = ca.server(("127.0.0.1", "localhost"))
    passwords = PasswordFile.load(folder / "passwd", missing_ok=True)
    device_passwords = {device: secrets.token_urlsafe(18) for device in device_ids}
    console_password = secrets.token_urlsafe(18)
    for user, password in [*device_passwords.items(), (CONSOLE_USER, console_password)]:
        passwords.set(user, password)
    passwords.save(folder / "passwd")
    return Credentials(ca.pair.cert, server.cert, server.key, folder / "passwd", device_passwords, console_password)


def gateway_config(kafka_bootstrap: str, credentials: Credentials, tls_port: int, gateway_id: str = GATEWAY_ID) -> str:
    """Anonymous clients refused, the default ACL, the boards on a TLS listener; the plain listener
    (on 127.0.0.1) serves the fleet's operator subscriber."""
    return (f'[bridge]\nkafka = "{kafka_bootstrap}"\ngateway_id = "{gateway_id}"\n'
            f'[auth]\npassword_file = "{credentials.password_file}"\noperators = ["{CONSOLE_USER}"]\n'
            f'[[listener]]\nlisten = "127.0.0.1:{tls_port}"\ntls_cert = "{credentials.server_cert}"\n'
            f'tls_key = "{credentials.server_key}"\n')


def worker_batching(workers: int) -> dict[str, int]:
    """With partitions that move between workers, one record per produce batch: the local broker
    reports a partition's end as its newest batch's base offset + 1, so Faust's table recovery
    stops early (updates lost: readings counted by the old owner missing as gaps) or crashes
    (`ConsistencyError`, persisted offset above the highwater) otherwise (docs/server.md,
    `producer_max_batch_size`; both seen in chaos runs)."""
    return {"producer_max_batch_size": 1} if workers > 1 else {}


def worker_patience(chaos: bool) -> dict[str, float]:
    """The workers reach Kafka through the uplink too (one advertised address), so a chaos outage of
    up to 120 s would make them exit (no acknowledgement within `write_timeout_s`, 60 s; nothing
    processed within `stall_timeout_s`, 120 s) where a real deployment's worker never sees the
    gateway's uplink: wait longer than the longest outage."""
    return {"write_timeout_s": 180.0, "stall_timeout_s": 240.0} if chaos else {}


def duty_cycle_period_ms(sample_ms: int) -> int:
    """A duty-cycle board's wake period: every wake is a boot and a TLS connect (~0.5 s of a core
    here), so at least 3 s and 4 sample intervals."""
    return max(3000, 4 * sample_ms)
