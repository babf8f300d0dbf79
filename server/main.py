"""`ferry worker` / `python -m ferry.server.main`: run the Faust analytics worker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ferry.gc_tuning import tune_gc
from ferry.server.config import ENV_CONFIG_FILE, ENV_PREFIX, ConfigError, ServerConfig, load_config

FLAGS = ("web_host", "web_port", "advertised_url", "api_token_file")
"""The `ServerConfig` fields that are also flags (`--web-host` ...); a flag wins over the file and the
environment. The token itself has no flag: the command line is visible to every user of the machine."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry worker",
        allow_abbrev=False,  # else `--api-token SECRET` would be taken for --api-token-file, and echoed
        description="Run the Faust analytics worker: dedupe, loss accounting, windows, HTTP API. "
                    f"Settings come from the [server] table of --config (or ${ENV_CONFIG_FILE}) "
                    f"and {ENV_PREFIX}<FIELD> environment variables, then these flags; see docs/server.md.",
    )
    parser.add_argument("--config", type=Path, help="TOML file with a [server] table")
    parser.add_argument("--web-host", metavar="HOST",
                        help="address the HTTP API and dashboard bind to (default 127.0.0.1: this machine only); "
                             "a wildcard (0.0.0.0, ::) needs --advertised-url")
    parser.add_argument("--web-port", metavar="PORT", help="port of the HTTP API and dashboard (default 6066)")
    parser.add_argument("--advertised-url", metavar="URL",
                        help="the URL the other workers of the app reach this one at, e.g. http://10.0.0.5:6066 "
                             "(default http://HOST:PORT of --web-host and --web-port)")
    parser.add_argument("--api-token-file", metavar="PATH",
                        help="require 'Authorization: Bearer <token>' on the API and /metrics, the token read "
                             f"from PATH (or set {ENV_PREFIX}API_TOKEN); the dashboard's page stays open")
    return parser


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The `ServerConfig` of parsed `ferry worker` arguments (raises `ConfigError`)."""
    overrides = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    return load_config(environ, path=args.config, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"ferry worker: {exc}", file=sys.stderr)
        return 2
    # Faust is imported only here, so a config error is reported without its start-up cost.
    import faust

    from ferry.server.allocator import fix_thresholds
    from ferry.server.app import create_app
    from ferry.server.pipeline import register_pipeline
    from ferry.server.streams import wire

    app = create_app(config)
    streams = wire(app, config)
    # `/pipeline` and the task scraping `config.gateways` (server/pipeline.py).
    register_pipeline(app, config, streams.worker)
    worker = faust.Worker(app, loglevel=config.log_level)
    # Faust's terminal spinner sets the root logger to DEBUG so that it can spin on every
    # record: every library's debug message would then be built and thrown away.
    worker.spinner = None
    fix_thresholds()
    tune_gc()
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
