"""Run links from synchronous code: on a background thread, or in a child process.

* `LinkThread` runs a `LinkSet` on its own event loop in a daemon thread and
  forwards `set_profile`/`schedule`/`reset_all`/`stats` to that loop.
* `LinkProcess` runs `python -m ferry.hwsim.link serve` through
  `ferry.process.ManagedProcess` (own process group, log file, SIGTERM then
  SIGKILL) and steers it over the control socket, as `ferry sim` will.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from ferry.process import ManagedProcess, ProcessFailed, free_port
from ferry.hwsim.link_control import LinkControl, LinkSet
from ferry.hwsim.link_core import Link, LinkConfig, LinkStats, ScheduleStep, config_to_dict
from ferry.hwsim.link_profile import LinkProfile, ProfileSpec, resolve_profile

T = TypeVar("T")

THREAD_CALL_TIMEOUT_S = 10.0
PROCESS_READY_TIMEOUT_S = 20.0


class LinkThread:
    """A LinkSet on a background event loop: `with LinkThread([config]) as links: links.port()`."""

    def __init__(self, links: Iterable[Link | LinkConfig], control_port: int | None = None) -> None:
        self.link_set = LinkSet(links, control_port=control_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = THREAD_CALL_TIMEOUT_S) -> LinkThread:
        ready = threading.Event()
        failures: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.link_set.start())
            except BaseException as exc:  # handed to the starting thread
                failures.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="hwsim-links", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError(f"links not started after {timeout_s} s")
        if failures:
            self._thread.join()
            raise failures[0]
        return self

    def stop(self, timeout_s: float = THREAD_CALL_TIMEOUT_S) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.link_set.stop(), loop).result(timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)

    def __enter__(self) -> LinkThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the links' loop and return its result (or raise its error)."""
        if self._loop is None:
            raise RuntimeError("LinkThread is not started")

        async def invoke() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(THREAD_CALL_TIMEOUT_S)

    def link(self, name: str | None = None) -> Link:
        """The link called `name` (or the only one). Call its methods through `call`."""
        if name is None:
            if len(self.link_set.links) != 1:
                raise ValueError(f"say which link: {', '.join(self.link_set.links)}")
            return next(iter(self.link_set.links.values()))
        return self.link_set[name]

    def port(self, name: str | None = None) -> int:
        return self.link(name).port

    @property
    def control_port(self) -> int:
        return self.link_set.control_port

    def set_profile(self, profile: ProfileSpec, link: str | None = None) -> LinkProfile:
        return self.call(self.link(link).set_profile, profile)

    def schedule(self, steps: Sequence[ScheduleStep | tuple[float, ProfileSpec]],
                 link: str | None = None) -> list[ScheduleStep]:
        return self.call(self.link(link).schedule, steps)

    def reset_all(self, link: str | None = None) -> int:
        return self.call(self.link(link).reset_all)

    def stats(self, link: str | None = None) -> LinkStats:
        return self.call(self.link(link).stats)


class LinkProcess:
    """`python -m ferry.hwsim.link serve` in a child process with a log file and a control socket.

    Links with `listen_port=0` get a free port chosen here, so `port(name)` is
    known before the child starts.
    """

    def __init__(self, links: Sequence[LinkConfig], log_dir: Path, control_port: int | None = None,
                 log_level: str = "INFO") -> None:
        if not links:
            raise ValueError("LinkProcess needs at least one link")
        self.configs = {c.name: c if c.listen_port else dataclasses.replace(c, listen_port=free_port())
                        for c in links}
        self.control_port = control_port or free_port()
        argv = [sys.executable, "-m", "ferry.hwsim.link", "serve", "--control", f"127.0.0.1:{self.control_port}",
                "--log-level", log_level]
        for config in self.configs.values():
            argv += ["--link", json.dumps(config_to_dict(config))]
        self.process = ManagedProcess(f"link-{'+'.join(self.configs)}", argv,
                                      log_dir / f"link-{self.control_port}.log")
        self.control = LinkControl(self.control_port)

    @classmethod
    def for_upstream(cls, upstream: tuple[str, int], log_dir: Path, profile: ProfileSpec = "perfect",
                     name: str = "link", **options: object) -> LinkProcess:
        """One link to `upstream`; `options` are further LinkConfig fields."""
        config = LinkConfig(upstream_host=upstream[0], upstream_port=upstream[1], name=name,
                            profile=resolve_profile(profile), **options)  # type: ignore[arg-type]
        return cls([config], log_dir)

    def port(self, name: str | None = None) -> int:
        if name is None:
            if len(self.configs) != 1:
                raise ValueError(f"say which link: {', '.join(self.configs)}")
            return next(iter(self.configs.values())).listen_port
        return self.configs[name].listen_port

    def start(self, timeout_s: float = PROCESS_READY_TIMEOUT_S) -> LinkProcess:
        self.process.start()
        try:
            self.process.wait_ready(self.control.ping, timeout_s)
        except ProcessFailed:
            self.process.stop()
            raise
        return self

    def stop(self) -> int | None:
        """SIGTERM (the server closes every link), SIGKILL after the grace period."""
        return self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def __enter__(self) -> LinkProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def set_profile(self, profile: ProfileSpec, link: str | None = None) -> LinkProfile:
        return self.control.set_profile(profile, link)

    def schedule(self, steps: Sequence[ScheduleStep | tuple[float, ProfileSpec]], link: str | None = None) -> None:
        self.control.schedule(steps, link)

    def reset_all(self, link: str | None = None) -> int:
        return self.control.reset_all(link)

    def stats(self, link: str | None = None) -> dict[str, LinkStats]:
        return self.control.stats(link)
