# Ferry firmware: commands from ferry/<site>/<device>/cmd and their replies
# (docs/contract.md, "Command and reply"). Pure: bytes in, reply bytes out; the only
# side effect is Settings.update(), which persists what it changes. Rare, so it may
# allocate freely.
import json

from settings import SETTABLE, SettingsError


def _reply(cid, ok, body):
    """The reply JSON with the contract's key order (MicroPython dicts do not keep one)."""
    head = '{"v":1,"id":%s,"ok":%s,' % (json.dumps(cid), "true" if ok else "false")
    if ok:
        return (head + '"result":%s}' % json.dumps(body)).encode()
    return (head + '"error":%s}' % json.dumps(body)).encode()


def _settable_now(settings):
    return {"sample_s": settings.sample_ms // 1000, "sample_ms": settings.sample_ms, "mode": settings.mode}


def handle(settings, payload):
    """Run one command; returns (reply bytes, True when a setting changed)."""
    try:
        cmd = json.loads(payload)
    except ValueError:
        return _reply(None, False, "payload: not JSON"), False
    if not isinstance(cmd, dict):
        return _reply(None, False, "payload: not a JSON object"), False
    cid = cmd.get("id")
    if not isinstance(cid, str) or not 1 <= len(cid) <= 64:
        return _reply(None, False, "id: must be a string of 1-64 characters"), False
    if cmd.get("v") != 1:
        return _reply(cid, False, "v: unsupported contract version %r" % (cmd.get("v"),)), False
    op = cmd.get("op")
    if op == "get":
        return _reply(cid, True, _settable_now(settings)), False
    if op != "set":
        return _reply(cid, False, "op: unknown %r (known: set get)" % (op,)), False
    args = cmd.get("args")
    if not isinstance(args, dict):
        return _reply(cid, False, "args: must be an object of %s" % " ".join(SETTABLE)), False
    try:
        settings.update(args)
    except SettingsError as e:
        return _reply(cid, False, str(e)), False
    except OSError as e:  # the change is live but could not be written to flash
        return _reply(cid, False, "flash: could not save (%r)" % (e,)), True
    return _reply(cid, True, args), True
