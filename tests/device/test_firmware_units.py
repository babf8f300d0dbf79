"""The firmware's pure parts on the real MicroPython interpreter, without a board or broker:
MQTT packets against the golden umqtt bytes, settings validation, commands and their
replies, the boot counter, the reconnect backoff, the SHT31 decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferry.hwsim.board import SHIMS_DIR
from ferry.hwsim.micropython import DEVICE_LIB_DIR, run_code
from tests.device.fw_support import DEVICE_DIR
from tests.vectors import load as load_vectors

SESSION = load_vectors("device/umqtt_simple_session.json")


def run_fw(code: str, shims: bool = False) -> dict:
    """Run `code` with the firmware on sys.path; it prints one JSON object last."""
    path = [DEVICE_DIR, DEVICE_LIB_DIR] + ([SHIMS_DIR] if shims else [])
    result = run_code(code, sys_path=path, heap_bytes=256 * 1024)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_publish_is_the_golden_umqtt_packet_in_one_buffer() -> None:
    client = SESSION["client"]
    out = run_fw(f"""
import json, binascii, packets
topic = {client['publish_topic'].encode()!r}
payload = memoryview(bytearray({client['publish_payload'].encode()!r}))
p = packets.Publisher(topic, 236)
start = p.build(1, payload, packets.QOS1)
first = binascii.hexlify(p.buf[start:p.end]).decode()
p.build(1, payload, packets.QOS1 | packets.DUP)
dup = binascii.hexlify(p.buf[p.start:p.end]).decode()
long = bytes(range(48, 48 + 70)) * 3
p.build(513, long, packets.QOS1)
big = binascii.hexlify(p.buf[p.start:p.end]).decode()
print(json.dumps({{"first": first, "dup": dup, "big": big}}))
""")
    golden = SESSION["packets"][1]["hex"]
    assert out["first"] == golden  # what umqtt.simple 1.3.4 sends in four writes
    assert out["dup"] == "3a" + golden[2:]
    topic = client["publish_topic"].encode()
    body = len(topic).to_bytes(2, "big") + topic + (513).to_bytes(2, "big") + bytes(range(48, 118)) * 3
    assert len(body) >= 128
    assert bytes.fromhex(out["big"]) == bytes([0x32, len(body) & 0x7F | 0x80, len(body) >> 7]) + body


def test_connect_is_the_golden_umqtt_packet_and_connack_is_parsed() -> None:
    """Ferry sends CONNECT itself, byte for byte what umqtt.simple 1.3.4 sends, whichever
    umqtt.simple a board's image freezes."""
    client = SESSION["client"]
    out = run_fw(f"""
import json, binascii, packets
c = packets.connect_bytes({client['client_id'].encode()!r}, {client['keepalive_s']}, {client['will_topic'].encode()!r},
                          {client['will_payload'].encode()!r})
res = {{"connect": binascii.hexlify(c).decode()}}
for name, first, body in (("present", 0x20, b"\\x01\\x00"), ("new", 0x20, b"\\x00\\x00"),
                          ("refused", 0x20, b"\\x00\\x05"), ("publish", 0x30, b"\\x00\\x00"),
                          ("short", 0x20, b"\\x00")):
    res[name] = packets.connack_code(first, body, len(body))
res["present_flag"] = packets.connack_session_present(b"\\x01\\x00")
print(json.dumps(res))
""")
    assert out.pop("connect") == SESSION["packets"][0]["hex"]
    assert out == {"present": 0, "new": 0, "refused": 5, "publish": -1, "short": -1, "present_flag": 1}


def test_connect_with_user_name_and_password_is_the_gateways_own_packet() -> None:
    """The credentials (MQTT 3.1.1 3.1.2.8-9): the user name and password flags, both after the will;
    byte for byte what the gateway's encoder makes, and its decoder reads them back. A long
    password takes the remaining length past 127 (two length bytes)."""
    from ferry.gateway.mqtt.decoder import Decoder
    from ferry.gateway.mqtt.encoder import encode
    from ferry.gateway.mqtt.packets import Connect, ProtocolVersion, Will

    client = SESSION["client"]
    passwords = ["Zx9-kQ_3vN0pLw7tYb2mRc4e", "p" * 128]
    out = run_fw(f"""
import json, binascii, packets
res = []
for pw in {passwords!r}:
    c = packets.connect_bytes({client['client_id'].encode()!r}, {client['keepalive_s']}, {client['will_topic'].encode()!r},
                              {client['will_payload'].encode()!r}, {client['client_id'].encode()!r}, pw.encode())
    res.append(binascii.hexlify(c).decode())
c = packets.connect_bytes(b"d", 60, b"t", b"w", b"", b"ignored")  # no user name: neither is sent
res.append(binascii.hexlify(c).decode())
print(json.dumps(res))
""")
    will = Will(client["will_topic"], client["will_payload"].encode(), qos=1, retain=True)
    for hexed, password in zip(out[:2], passwords, strict=True):
        expected = Connect(client["client_id"], ProtocolVersion.V311, clean_start=False,
                           keepalive_s=client["keepalive_s"], username=client["client_id"],
                           password=password.encode(), will=will)
        assert bytes.fromhex(hexed) == encode(expected, ProtocolVersion.V311)
        assert Decoder(server_side=True).feed(bytes.fromhex(hexed)) == [expected]
    assert bytes.fromhex(out[2])[9] == 0x2C  # the flags byte: will only, as without credentials


def test_incoming_publish_is_parsed_in_place() -> None:
    out = run_fw("""
import json, packets
body = bytearray(b"\\x00\\x0dferry/s/d/cmd\\x01\\x02{\\"v\\":1}")
inc = packets.Incoming()
ok = inc.parse_publish(0x32, body, len(body))
res = {"ok": ok, "pid": inc.pid, "payload": bytes(body[inc.payload_start:inc.payload_end]).decode(),
       "is_cmd": inc.topic_is(body, b"ferry/s/d/cmd"), "is_other": inc.topic_is(body, b"ferry/s/d/cmx")}
q0 = bytearray(b"\\x00\\x01tXY")
inc.parse_publish(0x30, q0, len(q0))
res["q0"] = [inc.pid, bytes(q0[inc.payload_start:inc.payload_end]).decode()]
res["short"] = inc.parse_publish(0x32, bytearray(b"\\x00\\x09ab"), 4)
print(json.dumps(res))
""")
    assert out == {"ok": True, "pid": 0x0102, "payload": '{"v":1}', "is_cmd": True, "is_other": False,
                   "q0": [0, "XY"], "short": False}


BASE = {"site": "lab", "wifi_ssid": "ap", "broker_host": "10.0.0.2", "tls": False}


@pytest.mark.parametrize(("change", "error"), [
    ({"site": "a/b"}, "site: must be 1-64 characters of A-Z a-z 0-9 _ -"),
    ({"broker_host": None}, "broker_host: must be a string of 1-253 characters"),
    ({"broker_port": 0}, "broker_port: must be an integer 1..65535, got 0"),
    ({"sample_ms": 50}, "sample_ms: must be an integer 100..86400000, got 50"),
    ({"sample_s": 30, "sample_ms": 30000}, "sample_s: give sample_s or sample_ms, not both"),
    ({"mode": "sometimes"}, "mode: must be one of always_on duty_cycle, got 'sometimes'"),
    ({"sampel_s": 3}, "sampel_s: unknown key"),
    ({"backoff_min_ms": 5000, "backoff_max_ms": 1000}, "backoff_max_ms: must be >= backoff_min_ms"),
    ({"wdt_timeout_ms": 5000}, "wdt_timeout_ms: must exceed 2 x connect_timeout_ms + ack_timeout_ms"),
    ({"tls": "yes"}, "tls: must be true or false, got 'yes'"),
    ({"tls": 1}, "tls: must be true or false, got 1"),
    ({"broker_tls_port": 70000}, "broker_tls_port: must be an integer 1..65535, got 70000"),
    ({"mqtt_password": "x" * 129}, "mqtt_password: must be a string of 0-128 characters"),
])
def test_settings_errors_name_the_key(change: dict, error: str) -> None:
    raw = {**BASE, **change}
    if "broker_host" in change and change["broker_host"] is None:
        raw["broker_host"] = 5
    out = run_fw(f"""
import json
from settings import Settings, SettingsError
try:
    Settings(json.loads({json.dumps(raw)!r}), "/ferry_config.json")
    print(json.dumps({{"error": None}}))
except SettingsError as e:
    print(json.dumps({{"error": str(e)}}))
""")
    assert out["error"] is not None and out["error"].startswith(f"/ferry_config.json: {error}"), out


def test_tls_is_the_default_and_needs_the_ca_on_flash(tmp_path: Path) -> None:
    """No silent fall-back to plain MQTT: tls defaults to true, and without the CA file the board
    refuses to start (the error names the key, the file and the way out); plain only when said."""
    path = tmp_path / "ferry_config.json"
    ca = tmp_path / "ca.der"
    out = run_fw(f"""
import json
from settings import Settings, SettingsError
res = {{}}
def load(raw):
    with open({str(path)!r}, "w") as f:
        f.write(json.dumps(raw))
    try:
        s = Settings.load({str(path)!r})
        return [s.tls, s.port(), s.tls_ca_file, s.mqtt_password]
    except SettingsError as e:
        return str(e)
base = {json.dumps({k: v for k, v in BASE.items() if k != "tls"})}
res["default_no_ca"] = load(base)
res["ca_elsewhere"] = load(dict(base, tls_ca_file={str(ca)!r}))
open({str(ca)!r}, "wb").write(b"\x30\x82")
res["ca_there"] = load(dict(base, tls_ca_file={str(ca)!r}, mqtt_password="pw-1"))
res["plain"] = load(dict(base, tls=False, broker_port=1884))
res["tls_port"] = load(dict(base, tls_ca_file={str(ca)!r}, broker_tls_port=18883))
print(json.dumps(res))
""")
    assert out["default_no_ca"] == (f"{path}: tls: no CA certificate at /ferry_ca.der (ferry flash --ca); "
                                    "\"tls\": false is plain MQTT")
    assert out["ca_elsewhere"].startswith(f"{path}: tls: no CA certificate at {ca} ")
    assert out["ca_there"] == [True, 8883, str(ca), "pw-1"]
    assert out["plain"] == [False, 1884, "/ferry_ca.der", ""]
    assert out["tls_port"][:2] == [True, 18883]


def test_settings_defaults_alias_and_runtime_update_persist(tmp_path: Path) -> None:
    path = tmp_path / "ferry_config.json"
    path.write_text(json.dumps({**BASE, "sample_s": 30}))
    out = run_fw(f"""
import json
from settings import Settings, SettingsError
s = Settings.load({str(path)!r})
res = {{"sample_ms": s.sample_ms, "mode": s.mode, "port": s.broker_port, "device_id": s.device_id}}
try:
    s.update({{"sample_s": 0}})
except SettingsError as e:
    res["bad"] = str(e)
try:
    s.update({{"mode": "duty_cycle"}})
except SettingsError as e:
    res["unsettable"] = str(e)
s.update({{"sample_ms": 250}})
res["after"] = Settings.load({str(path)!r}).sample_ms
print(json.dumps(res))
""")
    assert out == {"sample_ms": 30000, "mode": "always_on", "port": 1883, "device_id": "",
                   "bad": "args.sample_s: must be 1..86400", "unsettable": "args.mode: cannot be set",
                   "after": 250}
    assert json.loads(path.read_text()) == {**BASE, "sample_ms": 250}
    assert not (tmp_path / "ferry_config.json.tmp").exists()


def test_commands_answer_as_the_contract_says(tmp_path: Path) -> None:
    path = tmp_path / "ferry_config.json"
    path.write_text(json.dumps(BASE))
    commands = [
        {"v": 1, "id": "c-42", "op": "set", "args": {"sample_s": 30}},
        {"v": 1, "id": "c-43", "op": "set", "args": {"sample_s": 0}},
        {"v": 1, "id": "c-44", "op": "get"},
        {"v": 1, "id": "c-45", "op": "reboot"},
        {"v": 2, "id": "c-46", "op": "get"},
        {"v": 1, "op": "get"},
    ]
    out = run_fw(f"""
import json, commands
from settings import Settings
s = Settings.load({str(path)!r})
cmds = {json.dumps([json.dumps(c) for c in commands] + ["not json"])!r}
res = []
for c in json.loads(cmds):
    reply, changed = commands.handle(s, c.encode(), len(c))
    res.append([reply.decode(), changed])
print(json.dumps(res))
""")
    replies = [(json.loads(r), changed) for r, changed in out]
    assert out[0][0].startswith('{"v":1,"id":"c-42","ok":true,"result":')  # the contract's key order
    assert replies[0] == ({"v": 1, "id": "c-42", "ok": True, "result": {"sample_s": 30}}, True)
    assert replies[1] == ({"v": 1, "id": "c-43", "ok": False, "error": "args.sample_s: must be 1..86400"}, False)
    assert replies[2] == ({"v": 1, "id": "c-44", "ok": True,
                           "result": {"sample_s": 30, "sample_ms": 30000, "mode": "always_on"}}, False)
    assert replies[3][0]["ok"] is False and replies[3][0]["error"].startswith("op: unknown 'reboot'")
    assert replies[4][0]["error"] == "v: unsupported contract version 2"
    assert replies[5][0] == {"v": 1, "id": None, "ok": False, "error": "id: must be a string of 1-64 characters"}
    assert replies[6][0] == {"v": 1, "id": None, "ok": False, "error": "payload: not JSON"}
    assert json.loads(path.read_text())["sample_ms"] == 30000


def test_commands_that_cannot_be_run_are_answered_never_raised(tmp_path: Path) -> None:
    """Non-UTF-8, too large (also when the device kept none of it), a failing handler: each gets an
    error reply, so the device can PUBACK it instead of crashing on it after every redelivery."""
    path = tmp_path / "ferry_config.json"
    path.write_text(json.dumps(BASE))
    big = json.dumps({"v": 1, "id": "c-big", "op": "get", "pad": "x" * 600})
    out = run_fw(f"""
import json, commands
from settings import Settings
s = Settings.load({str(path)!r})
res = [commands.MAX_COMMAND_BYTES]
for payload, size in ((b'\\xff\\xfe{{"v":1}}', 7), ({big!r}.encode(), {len(big)}), (None, 5000)):
    res.append(commands.handle(s, payload, size)[0].decode())
def broken(changes):
    raise RuntimeError("flash driver bug")
s.update = broken
res.append(commands.handle(s, b'{{"v":1,"id":"c-47","op":"set","args":{{"sample_s":5}}}}', 52)[0].decode())
print(json.dumps(res))
""")
    limit, *replies = out
    assert limit == 480
    assert [json.loads(r) for r in replies] == [
        {"v": 1, "id": None, "ok": False, "error": "payload: not UTF-8"},
        {"v": 1, "id": None, "ok": False, "error": f"payload: {len(big)} bytes, more than 480"},
        {"v": 1, "id": None, "ok": False, "error": "payload: 5000 bytes, more than 480"},
        {"v": 1, "id": "c-47", "ok": False, "error": "internal: RuntimeError('flash driver bug',)"},
    ]


def test_boot_counter_counts_and_never_reuses_a_number(tmp_path: Path) -> None:
    path = tmp_path / "ferry_boot"
    out = run_fw(f"""
import json, identity
p = {str(path)!r}
boots = [identity.next_boot(p) for _ in range(3)]
open(p + ".tmp", "w").write("7\\n")  # a save cut off before its rename
boots.append(identity.next_boot(p))
ids = [identity.device_id("", "240AC4000001"), identity.device_id("pump-7", "x")]
print(json.dumps({{"boots": boots, "id": ids[0], "cfg": ids[1]}}))
""")
    assert out == {"boots": [1, 2, 3, 8], "id": "esp32-240ac4000001", "cfg": "pump-7"}
    assert path.read_text() == "8\n"


@pytest.fixture
def board_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What the hw-sim shims read at import, for modules that import hw outside a board."""
    (tmp_path / "wlan").write_text("down")
    monkeypatch.setenv("FERRY_BOARD_STATE", str(tmp_path))
    monkeypatch.setenv("FERRY_BOARD_CTL", "2")  # control messages go to stderr


def test_backoff_doubles_with_jitter_up_to_the_cap(board_env: None) -> None:
    out = run_fw("""
import json
from session import Backoff
b = Backoff(1000, 60000)
rounds = []
for _ in range(200):
    b.reset()
    rounds.append([b.next_ms() for _ in range(9)])
print(json.dumps(rounds))
""", shims=True)
    caps = [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
    for attempt, cap in enumerate(caps):
        draws = [r[attempt] for r in out]
        assert all(cap // 2 <= d <= cap for d in draws), (attempt, min(draws), max(draws))
        assert len(set(draws)) > 50  # jittered, not a fixed schedule
    print("\nbackoff (min 1 s, max 60 s), delay range per attempt: "
          + ", ".join(f"{min(r[a] for r in out) / 1000:.1f}-{max(r[a] for r in out) / 1000:.1f} s"
                      for a in range(len(caps))))


def test_sht31_crc_and_conversion(board_env: None) -> None:
    out = run_fw("""
import json
import sensor_sht31 as hw
raw = bytearray(b"\\x66\\x66\\x00\\x80\\x00\\x00")
raw[2] = hw.crc8(raw, 0)
raw[5] = hw.crc8(raw, 3)
v = [0, 0]
ok = hw.convert(raw, v)
raw[5] ^= 1
bad = hw.convert(raw, [0, 0])
print(json.dumps({"beef": hw.crc8(b"\\xbe\\xef", 0), "ok": ok, "v": v, "bad": bad}))
""", shims=True)
    # Sensirion's datasheet example: CRC(0xBEEF) = 0x92; 0x6666 is 25.00 degC, 0x8000 is 50.00 %RH.
    assert out == {"beef": 0x92, "ok": True, "v": [2500, 5000], "bad": False}
