"""The link simulator: TCP proxies that add latency, jitter, bandwidth caps, stalls, resets,
blackholes and outages between devices and the gateway, or the gateway and Kafka.

    async with Link(upstream=("127.0.0.1", 1883), profile="wifi-flaky") as link:
        ...  # clients connect to 127.0.0.1:link.port
        link.set_profile("outage")

    python -m ferry.hwsim.link serve --listen 127.0.0.1:11883 --upstream 127.0.0.1:1883 \\
        --profile wifi-flaky --control 127.0.0.1:9999
    python -m ferry.hwsim.link set --control 127.0.0.1:9999 --link link --profile outage

This module gathers the public API and is the command line (`main(argv) -> int`).
The pieces: `link_profile` (profiles and presets), `link_shaper` (sans-IO timing),
`link_core` (the asyncio proxy), `link_control` (LinkSet and the control socket),
`link_runner` (LinkThread, LinkProcess). Profiles and their numbers: docs/link-profiles.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Sequence

from ferry.addresses import host_port
from ferry.hwsim.link_control import (
    ControlError, ControlOp, ControlRequest, LinkControl, LinkControlError, LinkSet, apply_request,
    handle_line, parse_request,
)
from ferry.hwsim.link_core import Link, LinkConfig, LinkStats, ScheduleStep, config_from_dict, config_to_dict
from ferry.hwsim.link_profile import (
    PERFECT, PROFILES, LinkProfile, ProfileError, ProfileSpec, describe, preset, profile_from_dict,
    profile_to_dict, resolve_profile,
)
from ferry.hwsim.link_runner import LinkProcess, LinkThread

__all__ = [
    "PERFECT", "PROFILES", "ControlError", "ControlOp", "ControlRequest", "Link", "LinkConfig",
    "LinkControl", "LinkControlError", "LinkProcess", "LinkProfile", "LinkSet", "LinkStats",
    "LinkThread", "ProfileError", "ProfileSpec", "ScheduleStep", "apply_request", "config_from_dict",
    "config_to_dict", "describe", "handle_line", "main", "parse_request", "preset", "profile_from_dict",
    "profile_to_dict", "resolve_profile",
]

log = logging.getLogger("ferry.hwsim.link")

EXIT_USAGE = 2
EXIT_CONTROL_FAILED = 1



def _profile_arg(text: str) -> LinkProfile:
    """A preset name, or a JSON object of profile fields (`{"base": "cellular", "latency_ms": 300}`)."""
    try:
        return resolve_profile(json.loads(text) if text.lstrip().startswith("{") else text)
    except (ValueError, ProfileError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _link_arg(text: str) -> LinkConfig:
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object of LinkConfig fields")
        return config_from_dict(data)
    except (ValueError, TypeError, ProfileError) as exc:
        raise argparse.ArgumentTypeError(f"--link: {exc}") from None


def _step_arg(text: str) -> ScheduleStep:
    at, sep, profile = text.partition("=")
    try:
        return ScheduleStep(float(at), _profile_arg(profile))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AT_S=PROFILE, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ferry.hwsim.link",
                                     description="Fault-injecting TCP links for Ferry's simulator.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run links until SIGTERM")
    serve.add_argument("--listen", type=host_port, metavar="HOST:PORT",
                       help="where the single link listens (port 0 picks one; it is logged)")
    serve.add_argument("--upstream", type=host_port, metavar="HOST:PORT", help="where it forwards to")
    serve.add_argument("--profile", type=_profile_arg, default=PERFECT,
                       help=f"preset ({', '.join(PROFILES)}) or JSON object of fields")
    serve.add_argument("--name", default="link", help="the single link's name (default: link)")
    serve.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    serve.add_argument("--link", dest="links", type=_link_arg, action="append", default=[],
                       metavar="JSON", help="a further link as a JSON object of LinkConfig fields; repeatable")
    serve.add_argument("--control", type=host_port, metavar="HOST:PORT",
                       help="JSON-lines control socket (port 0 picks one; it is logged)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    def control_command(name: str, help_text: str, link_required: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--control", type=host_port, required=True, metavar="HOST:PORT")
        sub.add_argument("--link", required=link_required, help="link name (optional with one link)")
        return sub

    set_cmd = control_command("set", "switch a running link's profile")
    set_cmd.add_argument("--profile", type=_profile_arg, required=True,
                         help="preset name or JSON object of fields")
    schedule = control_command("schedule", "replace a running link's schedule")
    schedule.add_argument("steps", type=_step_arg, nargs="*", metavar="AT_S=PROFILE",
                          help="e.g. 5=outage 20=wifi-good (seconds from now); none clears it")
    control_command("reset", "cut every connection of a link with RST")
    control_command("stats", "print counters as JSON")
    commands.add_parser("profiles", help="print the preset profiles as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "serve":
        return _serve(args)
    if args.command == "profiles":
        print(json.dumps({name: profile_to_dict(p) for name, p in PROFILES.items()}, indent=2))
        return 0
    control = LinkControl(args.control[1], args.control[0])
    try:
        if args.command == "set":
            print(json.dumps(profile_to_dict(control.set_profile(args.profile, args.link))))
        elif args.command == "schedule":
            control.schedule(args.steps, args.link)
            print(json.dumps([[s.at_s, s.profile.name] for s in args.steps]))
        elif args.command == "reset":
            print(json.dumps({"cut": control.reset_all(args.link)}))
        else:
            stats = control.stats(args.link)
            print(json.dumps({name: dataclasses.asdict(s) for name, s in stats.items()}, indent=2))
    except LinkControlError as exc:
        print(f"hwsim.link {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONTROL_FAILED
    return 0


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configs = list(args.links)
    if args.upstream is not None:
        listen = args.listen or ("127.0.0.1", 0)
        configs.insert(0, LinkConfig(upstream_host=args.upstream[0], upstream_port=args.upstream[1],
                                     name=args.name, listen_host=listen[0], listen_port=listen[1],
                                     profile=args.profile, seed=args.seed))
    elif args.listen is not None:
        print("hwsim.link serve: --listen needs --upstream", file=sys.stderr)
        return EXIT_USAGE
    if not configs:
        print("hwsim.link serve: give --upstream (and --listen) or at least one --link", file=sys.stderr)
        return EXIT_USAGE
    control = args.control
    link_set = LinkSet(configs, control_host=control[0] if control else "127.0.0.1",
                       control_port=control[1] if control else None)
    try:
        asyncio.run(_run_until_signal(link_set))
    except (OSError, ValueError) as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


async def _run_until_signal(link_set: LinkSet) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with link_set:
        log.info("ready: %s", ", ".join(f"{name}=%s:%d" % link.address for name, link in link_set.links.items()))
        await stop.wait()
        log.info("stopping")


if __name__ == "__main__":
    sys.exit(main())
