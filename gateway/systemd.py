"""The gateway's side of systemd: readiness and watchdog on `NOTIFY_SOCKET`, log lines journald ranks.

`Type=notify` services tell systemd they are ready by sending `READY=1` as one datagram
to the AF_UNIX socket named in `NOTIFY_SOCKET` (sd_notify(3); a leading `@` names an
abstract socket). That is a few lines, so no dependency. With `WatchdogSec=` set,
systemd passes `WATCHDOG_USEC` and restarts the service when no `WATCHDOG=1` arrives in
time: sent from the event loop, it proves the loop still turns.

Under systemd, stderr goes to the journal (`JOURNAL_STREAM` names it): journald stamps
each line itself and reads a `<N>` syslog priority prefix, so log lines carry the
priority instead of a time stamp (sd-daemon(3)).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

# logging level -> syslog priority (sd-daemon(3): SD_ERR 3, SD_WARNING 4, SD_INFO 6, SD_DEBUG 7)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def notify(message: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send `message` (e.g. "READY=1") to the service manager; False when not run by one.

    A socket error is logged, never raised: the gateway serves devices either way.
    """
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", env["NOTIFY_SOCKET"], exc)
        return False
    return True


def watchdog_interval_s(env: Mapping[str, str] = os.environ) -> float | None:
    """How often to send WATCHDOG=1 (half of `WATCHDOG_USEC`), or None when no watchdog is set for us."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message`, for a stderr that journald reads."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _PRIORITIES if record.levelno >= level), 7)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def stderr_is_journal(env: Mapping[str, str] = os.environ) -> bool:
    """True when stderr is the journal stream systemd connected (`JOURNAL_STREAM` = device:inode)."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def configure_logging(level: str, env: Mapping[str, str] = os.environ) -> None:
    """Log to stderr: priority-prefixed lines for journald, time-stamped lines otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if stderr_is_journal(env) else logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
