"""`ferry worker` / `python -m ferry.server.main`: run the Faust analytics worker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ferry.server.config import ENV_CONFIG_FILE, ENV_PREFIX, ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry worker",
        description="Run the Faust analytics worker: dedupe, loss accounting, windows, HTTP API. "
                    f"Settings come from the [server] table of --config (or ${ENV_CONFIG_FILE}) "
                    f"and {ENV_PREFIX}<FIELD> environment variables; see docs/server.md.",
    )
    parser.add_argument("--config", type=Path, help="TOML file with a [server] table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = load_config(path=args.config)
    except ConfigError as exc:
        print(f"ferry worker: {exc}", file=sys.stderr)
        return 2
    # Faust is imported only here, so a config error is reported without its start-up cost.
    import faust

    from ferry.server.app import create_app
    from ferry.server.streams import wire

    app = create_app(config)
    streams = wire(app, config)
    worker = faust.Worker(app, loglevel=config.log_level)
    # Faust's terminal spinner sets the root logger to DEBUG so that it can spin on every
    # record: every library's debug message would then be built and thrown away.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:
        code = 0
    if streams.worker.stall_reason is not None:
        print(f"ferry worker: stopped: consumer stalled: {streams.worker.stall_reason}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
