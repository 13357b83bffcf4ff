"""Command-line interface: argument parsing only; every command calls into the modules that do the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streamer import __version__
from streamer.errors import EXIT_CONFIG, EXIT_OK, ConfigError


def _cmd_check(args: argparse.Namespace) -> int:
    from streamer.config import load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.config}: OK ({len(cfg.sources)} stream(s): {', '.join(s.id for s in cfg.sources)})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolostream", description="Detect objects in video streams and publish them over ZeroMQ."
    )
    parser.add_argument("--version", action="version", version=f"yolostream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate a config file without starting anything")
    p.add_argument("config", help="path to the YAML config")
    p.set_defaults(func=_cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
