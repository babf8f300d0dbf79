"""Several links in one asyncio process, and the JSON-lines control socket that steers them.

Protocol (one JSON object per line each way, on 127.0.0.1):

    {"link": "devices", "profile": "outage"}                        -> {"ok": true, "link": "devices", "profile": {...}}
    {"link": "devices", "profile": {"base": "cellular", "latency_ms": 300}}
    {"link": "devices", "schedule": [[0.5, "outage"], [2.0, "wifi-good"]]}
    {"op": "reset_all", "link": "devices"}                          -> {"ok": true, "link": "devices", "cut": 3}
    {"op": "stats"}                                                 -> {"ok": true, "stats": {"devices": {...}}}
    {"op": "links"}  /  {"op": "ping"}
    anything wrong                                                  -> {"ok": false, "error": "..."}

`op` may be left out when the request has `profile` (set_profile) or `schedule`.
`link` may be left out when the process runs a single link. `parse_request` and
`apply_request` are pure (no sockets), so the protocol is tested without a server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ferry.hwsim.link_core import Link, LinkConfig, LinkStats, ScheduleStep
from ferry.hwsim.link_profile import LinkProfile, ProfileError, ProfileSpec, profile_to_dict, resolve_profile

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024


class ControlOp(enum.Enum):
    SET_PROFILE = "set_profile"
    SCHEDULE = "schedule"
    RESET_ALL = "reset_all"
    STATS = "stats"
    LINKS = "links"
    PING = "ping"


class ControlError(ValueError):
    """A request the control API cannot carry out; its message goes back as `error`."""


class LinkControlError(RuntimeError):
    """The control server answered `{"ok": false}` (or did not answer)."""


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One parsed control line."""

    op: ControlOp
    link: str | None = None
    """Which link; None means the only one."""
    profile: LinkProfile | None = None
    """For SET_PROFILE."""
    schedule: tuple[ScheduleStep, ...] = ()
    """For SCHEDULE: replaces the pending schedule (empty clears it)."""


def parse_request(line: bytes | str) -> ControlRequest:
    """A ControlRequest from one JSON line; ControlError says what is wrong with it."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ControlError("a request is a JSON object")
    op_name = data.pop("op", None)
    if op_name is None:
        op_name = "set_profile" if "profile" in data else "schedule" if "schedule" in data else None
    try:
        op = ControlOp(op_name)
    except ValueError:
        raise ControlError(f"unknown op {op_name!r}; ops: {', '.join(o.value for o in ControlOp)}") from None
    link = data.pop("link", None)
    if link is not None and not isinstance(link, str):
        raise ControlError(f"link: expected a name, got {link!r}")
    try:
        if op is ControlOp.SET_PROFILE:
            if "profile" not in data:
                raise ControlError("set_profile needs a profile")
            return ControlRequest(op, link, profile=resolve_profile(data.pop("profile")))
        if op is ControlOp.SCHEDULE:
            steps = data.pop("schedule", None)
            if not isinstance(steps, list):
                raise ControlError("schedule: expected a list of [at_s, profile]")
            return ControlRequest(op, link, schedule=tuple(_step(s) for s in steps))
    except ProfileError as exc:
        raise ControlError(str(exc)) from None
    return ControlRequest(op, link)


def _step(item: object) -> ScheduleStep:
    if isinstance(item, dict):
        at_s, profile = item.get("at_s"), item.get("profile")
    elif isinstance(item, list) and len(item) == 2:
        at_s, profile = item
    else:
        raise ControlError(f"schedule step: expected [at_s, profile], got {item!r}")
    if isinstance(at_s, bool) or not isinstance(at_s, (int, float)) or at_s < 0:
        raise ControlError(f"schedule step: at_s must be a number >= 0, got {at_s!r}")
    return ScheduleStep(float(at_s), resolve_profile(profile))  # type: ignore[arg-type]


def apply_request(links: Mapping[str, Link], request: ControlRequest) -> dict[str, object]:
    """Carry out `request` on `links` (on their loop) and build the reply object."""
    if request.op is ControlOp.PING:
        return {"ok": True}
    if request.op is ControlOp.LINKS:
        return {"ok": True, "links": {name: {"port": link.port, "profile": link.profile.name,
                                             "upstream": "%s:%d" % link.upstream}
                                      for name, link in links.items()}}
    if request.op is ControlOp.STATS and request.link is None:
        return {"ok": True, "stats": {name: dataclasses.asdict(link.stats()) for name, link in links.items()}}
    link = _pick(links, request.link)
    if request.op is ControlOp.STATS:
        return {"ok": True, "link": link.name, "stats": {link.name: dataclasses.asdict(link.stats())}}
    if request.op is ControlOp.SET_PROFILE:
        assert request.profile is not None
        return {"ok": True, "link": link.name, "profile": profile_to_dict(link.set_profile(request.profile))}
    if request.op is ControlOp.SCHEDULE:
        steps = link.schedule(request.schedule)
        return {"ok": True, "link": link.name,
                "schedule": [[s.at_s, profile_to_dict(s.profile)] for s in steps]}
    return {"ok": True, "link": link.name, "cut": link.reset_all()}


def _pick(links: Mapping[str, Link], name: str | None) -> Link:
    if name is None:
        if len(links) != 1:
            raise ControlError(f"say which link: {', '.join(links) or 'none running'}")
        return next(iter(links.values()))
    try:
        return links[name]
    except KeyError:
        raise ControlError(f"no link {name!r}; links: {', '.join(links) or 'none'}") from None


def handle_line(links: Mapping[str, Link], line: bytes) -> bytes:
    """One request line in, one reply line out; never raises for a bad request."""
    try:
        reply = apply_request(links, parse_request(line))
    except (ControlError, ProfileError) as exc:
        reply = {"ok": False, "error": str(exc)}
    except Exception as exc:  # a failure to carry it out must not kill the control socket
        log.exception("control request %r failed", line)
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return json.dumps(reply).encode() + b"\n"


class LinkSet:
    """Named links started and stopped together, with an optional control socket.

    `control_port=None` runs no control socket; 0 picks a free port.
    """

    def __init__(self, links: Iterable[Link | LinkConfig] = (), control_host: str = "127.0.0.1",
                 control_port: int | None = None) -> None:
        self.links: dict[str, Link] = {}
        for link in links:
            self.add(link)
        self._control_host = control_host
        self._control_port = control_port
        self._server: asyncio.Server | None = None

    def add(self, link: Link | LinkConfig) -> Link:
        """Add a link; call before `start()`."""
        if isinstance(link, LinkConfig):
            link = Link(config=link)
        if link.name in self.links:
            raise ValueError(f"two links named {link.name!r}")
        self.links[link.name] = link
        return link

    def __getitem__(self, name: str) -> Link:
        return self.links[name]

    @property
    def control_port(self) -> int:
        if self._server is None:
            raise RuntimeError("no control socket running")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> LinkSet:
        started: list[Link] = []
        try:
            for link in self.links.values():
                await link.start()
                started.append(link)
            if self._control_port is not None:
                self._server = await asyncio.start_server(
                    self._serve_control, self._control_host, self._control_port,
                    limit=MAX_REQUEST_BYTES, reuse_address=True)
                log.info("link control on %s:%d", self._control_host, self.control_port)
        except BaseException:
            for link in started:
                await link.stop()
            raise
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in self.links.values():
            await link.stop()

    async def __aenter__(self) -> LinkSet:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(handle_line(self.links, line))
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.debug("control connection ended: %r", exc)
        finally:
            writer.close()


def _wire_profile(spec: ProfileSpec) -> object:
    if isinstance(spec, LinkProfile):
        return profile_to_dict(spec)
    return spec if isinstance(spec, str) else dict(spec)


class LinkControl:
    """Blocking client for the control socket: `LinkControl(port).set_profile("outage")`."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s

    def request(self, payload: Mapping[str, object]) -> dict[str, object]:
        """Send one request, return the reply; LinkControlError if it is not ok."""
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as sock:
                sock.sendall(json.dumps(payload).encode() + b"\n")
                with sock.makefile("rb") as replies:
                    line = replies.readline(MAX_REQUEST_BYTES)
        except OSError as exc:
            raise LinkControlError(f"control {self.host}:{self.port}: {exc}") from exc
        if not line:
            raise LinkControlError(f"control {self.host}:{self.port} closed without a reply")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise LinkControlError(str(reply.get("error", reply)))
        return reply

    def ping(self) -> bool:
        """True when the control socket answers (a readiness check)."""
        try:
            self.request({"op": "ping"})
        except (LinkControlError, ValueError):
            return False
        return True

    def set_profile(self, profile: ProfileSpec, link: str | None = None) -> LinkProfile:
        reply = self.request(_with_link({"op": "set_profile", "profile": _wire_profile(profile)}, link))
        return resolve_profile(reply["profile"])  # type: ignore[arg-type]

    def schedule(self, steps: Sequence[ScheduleStep | tuple[float, ProfileSpec]],
                 link: str | None = None) -> None:
        wire = [[s.at_s, _wire_profile(s.profile)] if isinstance(s, ScheduleStep)
                else [s[0], _wire_profile(s[1])] for s in steps]
        self.request(_with_link({"op": "schedule", "schedule": wire}, link))

    def reset_all(self, link: str | None = None) -> int:
        return int(self.request(_with_link({"op": "reset_all"}, link))["cut"])  # type: ignore[call-overload]

    def stats(self, link: str | None = None) -> dict[str, LinkStats]:
        reply = self.request(_with_link({"op": "stats"}, link))
        return {name: LinkStats(**values) for name, values in reply["stats"].items()}  # type: ignore[union-attr]

    def links(self) -> dict[str, dict[str, object]]:
        return self.request({"op": "links"})["links"]  # type: ignore[return-value]


def _with_link(payload: dict[str, object], link: str | None) -> dict[str, object]:
    if link is not None:
        payload["link"] = link
    return payload
