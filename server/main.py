"""`ferry worker` / `python -m server.main`: run the Faust analytics worker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from server.config import ENV_CONFIG_FILE, ENV_PREFIX, ConfigError, load_config


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

    from server.app import create_app
    from server.streams import wire

    app = create_app(config)
    wire(app, config)
    worker = faust.Worker(app, loglevel=config.log_level)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
