"""Command-line address parsing shared by every `ferry` subcommand."""

from __future__ import annotations

import argparse


def host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` (HOST may be empty for 127.0.0.1) as an argparse type."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)
