"""`ferry ota`: over-the-air updates of the device firmware through the gateway (docs/ota.md).

- `build_release` turns the application files (device/*.py except the boot files) into a
  release: `.mpy` compiled for the boards' `.mpy` version with ferry.flash's own functions, a
  manifest (version, files, sizes, sha256) and the byte stream the devices receive (the
  manifest, then every file in the manifest's order).
- `offer_command` is the `ota` command on .../cmd (the manifest's size, sha256 and, with a
  device key, its HMAC-SHA256); `encode_chunk` one chunk on .../ota.
- `DevicePush` is the sender's state machine for one device, sans-IO (time passed in): a window
  of chunks ahead of the offset the device says it needs next (go-back-N), a rate limit, a
  re-offer when the device goes quiet.
- `MqttClient` is a small blocking MQTT 3.1.1 client over the gateway's own sans-IO codec
  (ferry.gateway.mqtt); `push` and `status` drive it with operator credentials.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import json
import os
import random
import select
import socket
import ssl
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

BOOT_FILES = ("main.py", "boot_select.py")
"""Installed by `ferry flash` only: an update never replaces what chooses and checks the update."""
CHUNK_VERSION = 1
CHUNK_HEADER = struct.Struct(">B4sII")  # version, release tag, offset, CRC-32 of the data
DEVICE_RX_BYTES = 640  # device/session.py RX_BYTES: the largest packet a device reads whole
MAX_COMMAND_BYTES = 480  # device/commands.py
MAX_MANIFEST = 4096  # device/ota.py
DEFAULT_CHUNK = 256
DEFAULT_WINDOW = 8
DEFAULT_RATE = 16.0
"""Chunks per second per device: 4 KB/s at 256 B, a few per cent of what a QoS 1 link carries, so
readings keep flowing beside it."""


class OtaError(Exception):
    """A release or an option that cannot work; exit status 2."""


@dataclass(frozen=True, slots=True)
class ReleaseFile:
    name: str
    """The file's name on the board, in the app folder (`app.mpy`)."""
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class Release:
    version: str
    files: tuple[ReleaseFile, ...]
    mpy: int
    """The .mpy major version the files are compiled for, -1 for sources."""
    manifest: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        """The release's identity: the manifest's sha256 (it names every file's sha256)."""
        return hashlib.sha256(self.manifest).hexdigest()

    @property
    def tag(self) -> bytes:
        return bytes.fromhex(self.sha256[:8])

    @property
    def stream(self) -> bytes:
        """What the devices receive, offset 0 first: the manifest, then the files in order."""
        return self.manifest + b"".join(f.data for f in self.files)

    @property
    def size(self) -> int:
        return len(self.manifest) + sum(len(f.data) for f in self.files)


def manifest_bytes(version: str, files: Sequence[ReleaseFile], mpy: int) -> bytes:
    """The manifest, compact JSON (the device parses it with MicroPython's json)."""
    doc = {"v": 1, "ver": version, "mpy": mpy, "files": [[f.name, len(f.data), f.sha256] for f in files]}
    return json.dumps(doc, separators=(",", ":")).encode()


def make_release(version: str, files: Sequence[ReleaseFile], mpy: int = -1) -> Release:
    """A release from files already built; checks what the device would refuse."""
    if not 1 <= len(version) <= 32:
        raise OtaError(f"version: 1-32 characters, got {version!r}")
    names = [f.name for f in files]
    if "app.py" not in names and "app.mpy" not in names:
        raise OtaError("a release needs app.py or app.mpy")
    for f in files:
        if f.name in BOOT_FILES or f.name.replace(".mpy", ".py") in BOOT_FILES:
            raise OtaError(f"{f.name}: boot files are installed by `ferry flash` only")
        if len(f.name) > 32 or f.name.startswith(".") or "/" in f.name:
            raise OtaError(f"{f.name}: a plain file name of at most 32 characters")
    manifest = manifest_bytes(version, files, mpy)
    if len(manifest) > MAX_MANIFEST:
        raise OtaError(f"the manifest is {len(manifest)} bytes, devices take at most {MAX_MANIFEST}")
    return Release(version, tuple(files), mpy, manifest)


WHEEL_FIRMWARE = "ferry/device/"
"""Where a ferry-iot wheel holds the device firmware (pyproject's `package-dir`: `ferry.device` = `device`)."""


def wheel_firmware(wheel: Path, into: Path) -> Path:
    """The firmware's *.py of a ferry-iot wheel, extracted into `into` (its top level only: not lib/)."""
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.startswith(WHEEL_FIRMWARE) and n.endswith(".py")
                     and "/" not in n[len(WHEEL_FIRMWARE):]]
            if not names:
                raise OtaError(f"{wheel}: no {WHEEL_FIRMWARE}*.py in it (not a ferry-iot wheel?)")
            for name in names:
                (into / name[len(WHEEL_FIRMWARE):]).write_bytes(z.read(name))
    except zipfile.BadZipFile as e:
        raise OtaError(f"{wheel}: not a wheel ({e})") from None
    return into


def build_release(source: Path, version: str, board_mpy: int | None = None, build_dir: Path | None = None,
                  ) -> Release:
    """Build a release of the *.py of `source`, a folder or a ferry-iot wheel (the boot files left out).

    board_mpy: the boards' `sys.implementation._mpy` (printed by `ferry flash`; a fleet on several
    MicroPython versions gets one release per version); None: sources, compiled on the board."""
    if Path(source).is_file():
        with tempfile.TemporaryDirectory(prefix="ferry-ota-wheel-", dir=build_dir) as tmp:
            return build_release(wheel_firmware(Path(source), Path(tmp)), version, board_mpy, build_dir)
    return _build_release(Path(source), version, board_mpy, build_dir)


def _build_release(source_dir: Path, version: str, board_mpy: int | None, build_dir: Path | None) -> Release:
    from ferry import flash

    sources = sorted(p for p in Path(source_dir).glob("*.py") if p.name not in BOOT_FILES + ("__init__.py",))
    if not sources:
        raise OtaError(f"no *.py files in {source_dir}")
    if board_mpy is None or board_mpy < 0:
        return make_release(version, [ReleaseFile(p.name, p.read_bytes()) for p in sources], -1)
    board = flash.BoardMpy(board_mpy)
    build = flash.choose_mpy(board)
    if build.compiler_args is None:
        raise OtaError(build.note)
    files = []
    with tempfile.TemporaryDirectory(prefix="ferry-ota-", dir=build_dir) as tmp:
        for p in sources:
            target = Path(tmp) / (p.stem + ".mpy")
            try:
                flash.compile_mpy(p, target, build.compiler_args)
                flash.check_mpy(target, board)
            except flash.FlashError as e:
                raise OtaError(str(e)) from None
            files.append(ReleaseFile(target.name, target.read_bytes()))
    return make_release(version, files, board.version[0])


def manifest_hmac(key: bytes, release: Release) -> str:
    return hmac.new(key, release.manifest, hashlib.sha256).hexdigest()


def offer_command(release: Release, cid: str, key: bytes | None = None) -> bytes:
    """The `ota` command for .../cmd."""
    args: dict[str, object] = {"ver": release.version, "size": len(release.manifest), "sha256": release.sha256}
    if key is not None:
        args["hmac"] = manifest_hmac(key, release)
    payload = json.dumps({"v": 1, "id": cid, "op": "ota", "args": args}, separators=(",", ":")).encode()
    assert len(payload) <= MAX_COMMAND_BYTES, len(payload)
    return payload


def encode_chunk(tag: bytes, offset: int, data: bytes) -> bytes:
    return CHUNK_HEADER.pack(CHUNK_VERSION, tag, offset, zlib.crc32(data)) + data


def max_chunk(topic: str) -> int:
    """device/ota.py max_chunk: what fits the device's receive buffer with this topic, in 64s."""
    return (DEVICE_RX_BYTES - 3 - 2 - len(topic.encode()) - 2 - CHUNK_HEADER.size) & ~63


def load_keys(path: Path) -> dict[str, bytes]:
    """Per-device HMAC keys: lines `<device> <64 hex digits>`."""
    keys = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            try:
                dev, key = line.split()
                keys[dev] = bytes.fromhex(key)
            except ValueError:
                raise OtaError(f"{path}:{n}: expected `<device> <hex key>`") from None
    return keys


# --------------------------------------------------------------------------- one device's push

class PushState(Enum):
    OFFERED = "offered"
    DOWNLOAD = "download"
    INSTALLED = "installed"
    CURRENT = "current"
    FAILED = "failed"


@dataclass(slots=True)
class DevicePush:
    """Sending one release to one device, sans-IO: `due(now)` says what to publish, `on_reply` takes
    the device's replies (the `result` or `error` of a reply to this push's command id)."""

    device: str
    release: Release
    cid: str
    chunk_bytes: int = DEFAULT_CHUNK
    window: int = DEFAULT_WINDOW
    rate_per_s: float = DEFAULT_RATE
    quiet_s: float = 5.0
    """No reply for this long: rewind to the device's last reported offset and offer again. Doubles with
    every offer left unanswered (a device asleep or offline), up to `quiet_max_s`, so its persistent
    session does not fill with offers and windows of chunks; back to quiet_s at its next reply."""
    quiet_max_s: float = 300.0
    state: PushState = PushState.OFFERED
    next: int = 0
    """The offset the device said it needs."""
    sent_to: int = 0
    """Chunks up to here were sent since the last rewind."""
    error: str = ""
    chunks_sent: int = 0
    bytes_sent: int = 0
    rewinds: int = 0
    offers: int = 0
    _heard_s: float = -1e9
    _offer_s: float = -1e9
    _tokens: float = 0.0
    _tokens_s: float = 0.0
    _wait_s: float = 0.0

    @property
    def done(self) -> bool:
        return self.state in (PushState.INSTALLED, PushState.CURRENT, PushState.FAILED)

    def on_reply(self, reply: dict, now: float) -> None:
        self._heard_s = now
        self._wait_s = self.quiet_s
        if not reply.get("ok"):
            self.state = PushState.FAILED
            self.error = str(reply.get("error"))
            return
        r = reply.get("result") or {}
        state = r.get("ota")
        if isinstance(r.get("chunk"), int) and r["chunk"] >= 64:
            self.chunk_bytes = min(self.chunk_bytes, r["chunk"])
        if state == "installed":
            self.state = PushState.INSTALLED
        elif state == "current":
            self.state = PushState.CURRENT
        elif state == "download" and isinstance(r.get("next"), int):
            self.state = PushState.DOWNLOAD
            n = r["next"]
            if r.get("why") or n < self.next:
                self.sent_to = n  # a chunk that did not fit (lost, corrupt, a reboot): go back to what it needs
                self.rewinds += 1
            self.next = n
            self.sent_to = max(self.sent_to, n)  # it may be ahead: a resumed stage

    def due(self, now: float) -> list[tuple[str, bytes]]:
        """(channel, payload) to publish now: `cmd` for the offer, `ota` for chunks."""
        if self.done:
            return []
        out: list[tuple[str, bytes]] = []
        if now - max(self._heard_s, self._offer_s) >= (self._wait_s or self.quiet_s):
            if self._offer_s > self._heard_s and self.offers:  # the last offer went unanswered
                self._wait_s = min(self.quiet_max_s, 2 * (self._wait_s or self.quiet_s))
            self._offer_s = now
            self.offers += 1
            self.sent_to = self.next  # whatever was in flight may be gone
            out.append(("cmd", b""))  # the caller makes the command (it holds the key)
        if self.state is not PushState.DOWNLOAD:
            return out
        self._tokens = min(float(self.window), self._tokens + (now - self._tokens_s) * self.rate_per_s)
        self._tokens_s = now
        stream = self.release.stream
        limit = min(len(stream), self.next + self.window * self.chunk_bytes)
        while self.sent_to < limit and self._tokens >= 1:
            data = stream[self.sent_to:self.sent_to + self.chunk_bytes]
            out.append(("ota", encode_chunk(self.release.tag, self.sent_to, data)))
            self.sent_to += len(data)
            self.chunks_sent += 1
            self.bytes_sent += len(data)
            self._tokens -= 1
        return out


# --------------------------------------------------------------------------- MQTT

class MqttClient:
    """A blocking MQTT 3.1.1 client on ferry.gateway.mqtt: QoS 1 publish without waiting for the
    PUBACK (the gateway applies its own flow control), subscribe, receive with a timeout."""

    def __init__(self, host: str, port: int, client_id: str, username: str | None = None,
                 password: str | None = None, ca: Path | None = None, keepalive_s: int = 30,
                 timeout_s: float = 10.0) -> None:
        from ferry.gateway import mqtt

        self._mqtt = mqtt
        sock = socket.create_connection((host, port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ca is not None:
            ctx = ssl.create_default_context(cafile=str(ca))
            sock = ctx.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self._dec = mqtt.Decoder(server_side=False, protocol_version=mqtt.ProtocolVersion.V311)
        self._pid = 0
        self._keepalive_s = keepalive_s
        self._last_tx = time.monotonic()
        self.unacked: set[int] = set()
        self._queue: list = []
        self._send(mqtt.Connect(client_id=client_id, protocol_version=mqtt.ProtocolVersion.V311,
                                clean_start=True, keepalive_s=keepalive_s, username=username,
                                password=None if password is None else password.encode()))
        connack = self._wait(lambda p: isinstance(p, mqtt.Connack), timeout_s)
        if connack is None or connack.reason_code != mqtt.ReasonCode.SUCCESS:
            self.close()
            raise OtaError(f"the gateway refused the connection: {connack}")

    def _send(self, packet) -> None:
        self._write(self._mqtt.encode(packet, self._mqtt.ProtocolVersion.V311))

    def _write(self, data: bytes) -> None:
        self.sock.sendall(data)
        self._last_tx = time.monotonic()

    def _next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    def subscribe(self, topic_filter: str, timeout_s: float = 10.0) -> None:
        m = self._mqtt
        pid = self._next_pid()
        self._send(m.Subscribe(packet_id=pid, subscriptions=(m.Subscription(topic_filter, 1),)))
        if self._wait(lambda p: isinstance(p, m.Suback) and p.packet_id == pid, timeout_s) is None:
            raise OtaError(f"no SUBACK for {topic_filter}")

    def publish(self, topic: str, payload: bytes) -> None:
        pid = self._next_pid()
        self.unacked.add(pid)
        self._write(self._mqtt.encode_publish(topic.encode(), payload, 1, packet_id=pid))

    def _wait(self, match, timeout_s: float):
        end = time.monotonic() + timeout_s
        while True:
            for i, p in enumerate(self._queue):
                if match(p):
                    return self._queue.pop(i)
            left = end - time.monotonic()
            if left <= 0:
                return None
            self._read(left)

    def _read(self, timeout_s: float) -> None:
        m = self._mqtt
        pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        if not pending and not select.select([self.sock], [], [], max(0.0, timeout_s))[0]:
            return
        data = self.sock.recv(65536)
        if not data:
            raise OtaError("the gateway closed the connection")
        for p in self._dec.feed(data):
            if isinstance(p, m.Puback):
                self.unacked.discard(p.packet_id)
            elif isinstance(p, m.Publish):
                if p.qos == 1 and p.packet_id is not None:
                    self._send(m.Puback(packet_id=p.packet_id))
                self._queue.append(p)
            elif not isinstance(p, m.Pingresp):
                self._queue.append(p)

    def messages(self, timeout_s: float) -> list:
        """PUBLISHes received within timeout_s (returns as soon as there is one)."""
        m = self._mqtt
        if time.monotonic() - self._last_tx >= self._keepalive_s / 2:
            self._send(m.Pingreq())
        if not any(isinstance(p, m.Publish) for p in self._queue):
            self._read(timeout_s)
        out = [p for p in self._queue if isinstance(p, m.Publish)]
        self._queue = [p for p in self._queue if not isinstance(p, m.Publish)]
        return out

    def close(self) -> None:
        try:
            self._send(self._mqtt.Disconnect())
        except OSError:
            pass
        self.sock.close()


def push(client: MqttClient, site: str, devices: Iterable[str], release: Release,
         keys: dict[str, bytes] | None = None, chunk_bytes: int = DEFAULT_CHUNK, window: int = DEFAULT_WINDOW,
         rate_per_s: float = DEFAULT_RATE, timeout_s: float = 3600.0, out=None) -> dict[str, DevicePush]:
    """Offer `release` to `devices` and stream it until each is installed, current or failed."""
    keys = keys or {}
    cid = "ota-" + release.sha256[:8] + "-" + "%06x" % random.getrandbits(24)
    pushes = {}
    for dev in devices:
        if keys and dev not in keys:
            raise OtaError(f"no HMAC key for {dev}")
        topic = f"ferry/{site}/{dev}/ota"
        pushes[dev] = DevicePush(dev, release, cid, min(chunk_bytes, max_chunk(topic)), window, rate_per_s)
    client.subscribe(f"ferry/{site}/+/reply")
    end = time.monotonic() + timeout_s
    while not all(p.done for p in pushes.values()) and time.monotonic() < end:
        now = time.monotonic()
        for dev, p in pushes.items():
            for channel, payload in p.due(now):
                if channel == "cmd":
                    payload = offer_command(release, cid, keys.get(dev))
                client.publish(f"ferry/{site}/{dev}/{channel}", payload)
        for msg in client.messages(0.05):
            dev = msg.topic.split("/")[2]
            try:
                reply = json.loads(msg.payload)
            except ValueError:
                continue
            if dev in pushes and isinstance(reply, dict) and reply.get("id") == cid:
                before = pushes[dev].state
                pushes[dev].on_reply(reply, time.monotonic())
                if out is not None and pushes[dev].state is not before:
                    print(f"{dev}: {pushes[dev].state.value} {pushes[dev].error}".rstrip(), file=out)
    return pushes


def choose_devices(devices: Sequence[str], percent: float | None, seed: str) -> list[str]:
    """All devices, or a stable `percent` of them (the same ones for the same release)."""
    if percent is None:
        return list(devices)
    ranked = sorted(devices, key=lambda d: hashlib.sha256((seed + d).encode()).digest())
    return ranked[:max(1, round(len(ranked) * percent / 100))]


def collect_status(client: MqttClient, site: str, wait_s: float = 2.0) -> dict[str, dict]:
    """Each device's retained status (its `fw` and `ota` fields) under `site`."""
    client.subscribe(f"ferry/{site}/+/status")
    found: dict[str, dict] = {}
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        for msg in client.messages(0.1):
            try:
                found[msg.topic.split("/")[2]] = json.loads(msg.payload)
            except ValueError:
                pass
    return found


# --------------------------------------------------------------------------- CLI

def _broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host, int(port)) if host else (text, 1883)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferry ota", description="Over-the-air firmware updates (docs/ota.md).")
    sub = p.add_subparsers(dest="action", required=True)
    for name in ("push", "status"):
        s = sub.add_parser(name)
        s.add_argument("--broker", type=_broker, default=("127.0.0.1", 1883), metavar="HOST[:PORT]")
        s.add_argument("--ca", type=Path, help="the gateway's CA certificate: TLS")
        s.add_argument("--user", required=True, help="an operator of the gateway")
        s.add_argument("--site", required=True)
        if name == "push":
            s.add_argument("source", type=Path, metavar="DIR|WHEEL",
                           help="the application files: a folder of *.py, or a ferry-iot wheel (its firmware); "
                                "main.py and boot_select.py are left out")
            s.add_argument("--version", required=True, dest="release_version")
            who = s.add_mutually_exclusive_group(required=True)
            who.add_argument("--devices", nargs="+")
            who.add_argument("--percent", type=float, help="a stable share of the devices that have a status")
            s.add_argument("--board-mpy", type=int, help="the boards' sys.implementation._mpy (ferry flash prints it); "
                                                         "left out: sources")
            s.add_argument("--keys", type=Path, help="per-device HMAC keys: lines `<device> <hex key>`")
            s.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
            s.add_argument("--window", type=int, default=DEFAULT_WINDOW)
            s.add_argument("--rate", type=float, default=DEFAULT_RATE, help="chunks per second per device")
            s.add_argument("--timeout", type=float, default=3600.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    password = os.environ.get("FERRY_OTA_PASSWORD") or getpass.getpass(f"password for {args.user}: ")
    try:
        client = MqttClient(args.broker[0], args.broker[1], f"ferry-ota-{os.getpid()}", args.user, password, args.ca)
        try:
            if args.action == "status":
                for dev, st in sorted(collect_status(client, args.site).items()):
                    ota = st.get("ota") or {}
                    print(f"{dev}\t{st.get('state')}\tfw {st.get('fw')}\t{json.dumps(ota, separators=(',', ':'))}")
                return 0
            release = build_release(args.source, args.release_version, args.board_mpy)
            devices = args.devices or choose_devices(sorted(collect_status(client, args.site)), args.percent,
                                                     release.sha256)
            keys = load_keys(args.keys) if args.keys else None
            print(f"release {release.version} {release.sha256[:8]}: {len(release.files)} files, {release.size} bytes, "
                  f"{len(devices)} devices")
            result = push(client, args.site, devices, release, keys, args.chunk, args.window, args.rate,
                          args.timeout, out=sys.stdout)
        finally:
            client.close()
    except (OtaError, OSError) as e:
        print(f"ferry ota: {e}", file=sys.stderr)
        return 2
    for dev, p in sorted(result.items()):
        done = p.state.value if p.done else f"{p.state.value}, timed out at {p.next} of {release.size}"
        print(f"{dev}: {done}{': ' + p.error if p.error else ''} ({p.chunks_sent} chunks, {p.bytes_sent} bytes, "
              f"{p.rewinds} rewinds, {p.offers} offers)")
    failed = [d for d, p in result.items() if p.state is PushState.FAILED or not p.done]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
