"""The one `ferry` command: a subcommand per part of the stack.

Each subcommand's implementation is imported only when it runs, so the gateway
on a Raspberry Pi never imports Faust or the simulator.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

@dataclass(frozen=True, slots=True)
class Subcommand:
    """A subcommand and the module whose `main(argv) -> int` runs it."""

    name: str
    help: str
    module: str


SUBCOMMANDS = (
    Subcommand("gateway", "run the durable MQTT broker and the Kafka bridge (Raspberry Pi)", "ferry.gateway.main"),
    Subcommand("worker", "run the Faust analytics worker", "ferry.server.main"),
    Subcommand("flash", "copy the device firmware to a board with mpremote", "ferry.flash"),
    Subcommand("ota", "push a firmware release to devices over MQTT, or show their update state", "ferry.ota"),
    Subcommand("sim", "run simulated boards, links and power cuts", "ferry.hwsim.cli"),
    Subcommand("demo", "run the whole pipeline locally with a simulated fleet", "ferry.demo"),
    Subcommand("bench", "benchmark a part of Ferry against a peer", "ferry.bench.main"),
    Subcommand("passwd", "add, change or delete a user in a gateway password file", "ferry.gateway.auth.passwd_cli"),
)


def build_parser() -> argparse.ArgumentParser:
    from ferry import __version__

    parser = argparse.ArgumentParser(
        prog="ferry",
        description="Ferry carries sensor readings from MicroPython devices through a durable "
                    "MQTT gateway to Kafka and Faust analytics without losing any.",
    )
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for sub in SUBCOMMANDS:
        commands.add_parser(sub.name, help=sub.help, description=sub.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the subcommand name is parsed here; its own parser reads the rest.
    args = build_parser().parse_args(argv[:1])
    sub = next(s for s in SUBCOMMANDS if s.name == args.command)
    return importlib.import_module(sub.module).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
