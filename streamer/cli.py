"""Command-line interface: argument parsing only; every command calls into the modules that do the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from streamer import __version__
from streamer.errors import EXIT_CONFIG, EXIT_OK, ConfigError

if TYPE_CHECKING:
    from streamer.config import Config

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


def _load(path: str) -> Config:
    from streamer.config import load_config

    return load_config(path)


def _cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(f"{args.config}: OK ({len(cfg.sources)} stream(s): {', '.join(s.id for s in cfg.sources)})")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from streamer.supervisor import Supervisor

    return Supervisor(_load(args.config)).run()


def _cmd_subscribe(args: argparse.Namespace) -> int:
    from streamer.client import subscribe_main

    endpoint = args.endpoint
    if args.config:
        endpoint = _load(args.config).publish.endpoint
    return subscribe_main(endpoint, args.stream or None, args.json, args.count, args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolostream", description="Detect objects in video streams and publish them over ZeroMQ."
    )
    parser.add_argument("--version", action="version", version=f"yolostream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon on a config file until stopped (or all streams end)")
    p.add_argument("config", help="path to the YAML config")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate a config file without starting anything")
    p.add_argument("config", help="path to the YAML config")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("subscribe", help="print the detections and events a daemon publishes")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"publisher endpoint [{DEFAULT_ENDPOINT}]")
    p.add_argument("--config", help="take the endpoint from this config file instead")
    p.add_argument("--stream", action="append", metavar="ID", help="only this stream (repeatable)")
    p.add_argument("--json", action="store_true", help="print each message as one JSON line")
    p.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    p.add_argument("--timeout", type=float, metavar="S", help="exit (code 1) when nothing arrives for S s")
    p.set_defaults(func=_cmd_subscribe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
