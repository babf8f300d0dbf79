"""What a fleet counts per device: what each board generated (from its console) and what reached the
gateway (a paho subscriber on it), the two sides of the fleet's accounting (docs/fleet.md)."""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DeviceTally:
    """What one device generated (console) and what arrived (subscriber)."""

    dev: str
    seqs: dict[int, set[int]] = field(default_factory=dict)  # boot -> distinct seqs delivered
    duplicates: int = 0
    console_seq: dict[int, int] = field(default_factory=dict)  # boot -> readings generated (console)
    loss_end: dict[int, int] = field(default_factory=dict)  # boot -> last seq + 1 of a reported loss
    dropped: int = 0  # the device's outbox.dropped, from its latest status
    status_boot: int = 0  # boot of the latest "online" status
    replies: set[str] = field(default_factory=set)
    boots_seen: list[int] = field(default_factory=list)  # boots from the console, in order
    garbled: int = 0

    def generated_by_boot(self) -> dict[int, int]:
        boots = set(self.seqs) | set(self.console_seq) | set(self.loss_end)
        return {b: max(self.console_seq.get(b, 0), self.loss_end.get(b, 0),
                       max(self.seqs.get(b, ()), default=-1) + 1) for b in sorted(boots)}

    @property
    def generated(self) -> int:
        return sum(self.generated_by_boot().values())

    @property
    def acknowledged(self) -> int:
        return sum(len(s) for s in self.seqs.values())

    def missing(self) -> dict[int, list[int]]:
        """boot -> seqs generated but not (yet) delivered."""
        out = {}
        for b, n in self.generated_by_boot().items():
            got = self.seqs.get(b, set())
            gap = [s for s in range(n) if s not in got]
            if gap:
                out[b] = gap
        return out

    @property
    def in_outbox(self) -> int:
        return max(0, self.generated - self.acknowledged - self.dropped)

    def row(self) -> dict:
        return {"device": self.dev, "boots": len(self.generated_by_boot()), "generated": self.generated,
                "acknowledged": self.acknowledged, "in_outbox": self.in_outbox, "dropped": self.dropped,
                "duplicates": self.duplicates}


_STATS = re.compile(rb"^ferry -?\d+ stats seq (\d+) ")
_WAKE = re.compile(rb"^ferry -?\d+ wake: ")
"""A duty-cycle wake's last line: its one reading (seq 0 of the boot) was sampled and flushed."""
_BOOT = re.compile(rb"^ferry -?\d+ boot (\d+) \(")
_LOSS = re.compile(rb"lost \((\d+), (\d+), (\d+)\)")


class ConsoleTail:
    """Reads only what each board's console.log gained since the last call."""

    def __init__(self, path: Path, tally: DeviceTally) -> None:
        self.path = path
        self.tally = tally
        self.offset = 0
        self.partial = b""
        self.boot: int | None = None

    def read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            m = _STATS.match(line)
            if m and self.boot is not None:
                n = int(m.group(1))
                if n > self.tally.console_seq.get(self.boot, 0):
                    self.tally.console_seq[self.boot] = n
                continue
            if self.boot is not None and _WAKE.match(line):
                self.tally.console_seq[self.boot] = max(1, self.tally.console_seq.get(self.boot, 0))
                continue
            m = _BOOT.match(line)
            if m:
                self.boot = int(m.group(1))
                self.tally.boots_seen.append(self.boot)
                loss = _LOSS.search(line)
                if loss:
                    b, last = int(loss.group(1)), int(loss.group(3))
                    self.tally.loss_end[b] = max(self.tally.loss_end.get(b, 0), last + 1)


class Subscriber:
    """A paho client on the gateway (not through the link) counting readings, statuses and replies."""

    def __init__(self, host: str, port: int, site: str, tallies: dict[str, DeviceTally], *,
                 username: str | None = None, password: str | None = None, tls_ca: Path | None = None,
                 client_id: str | None = None, lock: threading.Lock | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.site = site
        self.tallies = tallies
        self.lock = lock or threading.Lock()
        """Guards `tallies`; subscribers on several gateways that count into the same tallies share one."""
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"ferry-fleet-{os.getpid()}",
                                  protocol=mqtt.MQTTv311, clean_session=False)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.reconnect_delay_set(0.1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect(host, port, 30)
        self.client.loop_start()
        if not self.connected.wait(15):
            self.close()
            raise ConnectionError(f"no CONNACK from the gateway at {host}:{port}")

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        for channel in ("telemetry", "status", "reply"):
            client.subscribe(f"ferry/+/+/{channel}", 1)  # any site: a device may move between sites
        self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4:
            return
        with self.lock:
            tally = self.tallies.get(parts[2])
            if tally is None:
                return
            try:
                obj = json.loads(msg.payload)
                if parts[3] == "telemetry":
                    seqs = tally.seqs.setdefault(int(obj["boot"]), set())
                    seq = int(obj["seq"])
                    if seq in seqs:
                        tally.duplicates += 1
                    else:
                        seqs.add(seq)
                elif parts[3] == "status":
                    if obj.get("state") == "online" and "outbox" in obj:
                        if int(obj["boot"]) >= tally.status_boot:
                            tally.status_boot = int(obj["boot"])
                            tally.dropped = max(tally.dropped, int(obj["outbox"]["dropped"]))
                elif parts[3] == "reply":
                    if obj.get("ok"):
                        tally.replies.add(str(obj.get("id")))
            except (ValueError, KeyError, TypeError):
                tally.garbled += 1

    def command(self, dev: str, payload: dict, site: str | None = None) -> None:
        self.client.publish(f"ferry/{site or self.site}/{dev}/cmd", json.dumps(payload).encode(), 1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
