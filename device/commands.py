# Ferry firmware: commands from ferry/<site>/<device>/cmd and their replies
# (docs/contract.md, "Command and reply"). Pure: bytes in, reply bytes out; the only
# side effect is Settings.update(), which persists what it changes. Rare, so it may
# allocate freely. Every command gets a reply, whatever it holds: one that raised would
# never be PUBACKed and would come back from the broker after every reset.
import json

from micropython import const

from settings import SETTABLE, SettingsError

MAX_COMMAND_BYTES = const(480)  # fits the session's receive buffer with the longest cmd topic


def _reply(cid, ok, body):
    """The reply JSON with the contract's key order (MicroPython dicts do not keep one)."""
    head = '{"v":1,"id":%s,"ok":%s,' % (json.dumps(cid), "true" if ok else "false")
    if ok:
        return (head + '"result":%s}' % json.dumps(body)).encode()
    return (head + '"error":%s}' % json.dumps(body)).encode()


def _settable_now(settings):
    return {"sample_s": settings.sample_ms // 1000, "sample_ms": settings.sample_ms, "mode": settings.mode}


def handle(settings, payload, size, ota=None):
    """Run one command of `size` bytes; returns (reply bytes, True when a setting changed).

    payload: the command (bytes-like), or None when the device kept none of it (too large).
    ota: the offer handler of an update, ota(cid, args) -> reply bytes (docs/ota.md); None: refused.
    """
    if size > MAX_COMMAND_BYTES:
        return _reply(None, False, "payload: %d bytes, more than %d" % (size, MAX_COMMAND_BYTES)), False
    try:
        text = bytes(payload).decode()
    except UnicodeError:
        return _reply(None, False, "payload: not UTF-8"), False
    try:
        cmd = json.loads(text)
    except ValueError:
        return _reply(None, False, "payload: not JSON"), False
    if not isinstance(cmd, dict):
        return _reply(None, False, "payload: not a JSON object"), False
    cid = cmd.get("id")
    if not isinstance(cid, str) or not 1 <= len(cid) <= 64:
        return _reply(None, False, "id: must be a string of 1-64 characters"), False
    if cmd.get("v") != 1:
        return _reply(cid, False, "v: unsupported contract version %r" % (cmd.get("v"),)), False
    try:
        return _run(settings, cmd, cid, ota)
    except Exception as e:  # a bug here or in settings: answered with the command's id
        return _reply(cid, False, "internal: %r" % (e,)), False


def _run(settings, cmd, cid, ota):
    op = cmd.get("op")
    if op == "get":
        return _reply(cid, True, _settable_now(settings)), False
    args = cmd.get("args")
    if op == "ota":
        if ota is None:
            return _reply(cid, False, "op: ota not supported"), False
        if not isinstance(args, dict):
            return _reply(cid, False, "args: must be an object"), False
        return ota(cid, args), False
    if op != "set":
        return _reply(cid, False, "op: unknown %r (known: set get ota)" % (op,)), False
    if not isinstance(args, dict):
        return _reply(cid, False, "args: must be an object of %s" % " ".join(SETTABLE)), False
    try:
        settings.update(args)
    except SettingsError as e:
        return _reply(cid, False, str(e)), False
    except OSError as e:  # the change is live but could not be written to flash
        return _reply(cid, False, "flash: could not save (%r)" % (e,)), True
    return _reply(cid, True, args), True
