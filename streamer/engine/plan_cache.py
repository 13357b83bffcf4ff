"""The on-disk cache of serialized TensorRT engines ("plans").

A plan is only valid for the exact ONNX bytes, TensorRT version, GPU model and compute capability,
precision (with the INT8 calibration data), optimisation profile and workspace limit it was built with.
All of these, plus `CACHE_FORMAT`, go into a `PlanKey`; its SHA-256 names the file::

    cache_dir()/engines/<model-stem>-<key[:16]>.plan
    cache_dir()/engines/<model-stem>-<key[:16]>.json     the key's fields, the full key, the plan's hash

A plan is loaded only when its JSON sidecar holds the same key fields and the plan's size and SHA-256;
anything else (another key that shares the file name, a sidecar from another build, a truncated or
corrupt plan, unreadable JSON) means "rebuild", with a log line saying why. Both files are written
atomically (temporary file in the same folder, fsync, ``os.replace``), the plan first and the sidecar
last, so a crash at any point leaves either the old pair, or a pair that does not match and is rebuilt:
never a partial file under the final name, never a mismatched pair that loads.

Pure Python: nothing here imports TensorRT, so all of it is tested on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streamer.paths import cache_dir

__all__ = ["CACHE_FORMAT", "PlanCache", "PlanKey", "atomic_write", "file_sha256"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump when the way yolostream builds plans changes in a way the other key fields do not show."""

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PlanKey:
    """Everything that makes a built plan invalid when it changes."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    """``"major.minor"``, e.g. ``"9.0"`` for H100."""
    precision: str
    calibration_sha256: str | None
    """SHA-256 of the INT8 calibration cache (int8 only; None otherwise)."""
    min_batch: int
    opt_batch: int
    max_batch: int
    input_height: int
    input_width: int
    workspace_bytes: int | None
    """The builder's workspace memory-pool limit; None: TensorRT's default (the GPU's memory)."""
    cache_format: int = CACHE_FORMAT

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if (self.precision == "int8") != (self.calibration_sha256 is not None):
            raise ValueError("calibration_sha256 is required for int8 and only for int8")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= min_batch <= opt_batch <= max_batch, got {self.min_batch}, {self.opt_batch}, "
                f"{self.max_batch}"
            )
        if self.input_height <= 0 or self.input_width <= 0:
            raise ValueError(f"input size must be positive, got {self.input_height}x{self.input_width}")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise ValueError(f"workspace_bytes must be positive or None, got {self.workspace_bytes}")

    def fields(self) -> dict[str, Any]:
        """The key's fields as a JSON-ready dict (what the sidecar stores)."""
        return asdict(self)

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the fields in canonical JSON: the cache key."""
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either the old file or all of `data`, even on a crash.

    A temporary file in the same folder is written, flushed and fsync'd, then renamed over `path`
    (``os.replace``: atomic on POSIX), and the folder is fsync'd so the rename survives a power cut. On
    any error the temporary file is removed and the error re-raised; `path` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened and fsync'd
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PlanCache:
    """Plans on disk under ``<root>/engines`` (root: `streamer.paths.cache_dir` by default)."""

    def __init__(self, root: Path | None = None) -> None:
        self.dir = (root if root is not None else cache_dir()) / "engines"

    def plan_path(self, model_stem: str, key: PlanKey) -> Path:
        """``<dir>/<model-stem>-<key[:16]>.plan`` (the stem made safe for a file name)."""
        stem = _UNSAFE.sub("_", model_stem).strip("._") or "model"
        return self.dir / f"{stem}-{key.digest[:16]}.plan"

    @staticmethod
    def sidecar_path(plan: Path) -> Path:
        return plan.with_suffix(".json")

    def load(self, model_stem: str, key: PlanKey) -> bytes | None:
        """The cached plan for `key`, or None (logging why) when there is none that may be used."""
        plan_path = self.plan_path(model_stem, key)
        sidecar_path = self.sidecar_path(plan_path)
        if not plan_path.exists() and not sidecar_path.exists():
            log.info("no cached TensorRT engine for %s (%s): building one", model_stem, plan_path.name)
            return None
        try:
            meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            log.warning(
                "cached TensorRT engine %s has an unreadable sidecar (%s): rebuilding", plan_path, exc
            )
            return None
        if meta.get("key") != key.digest or meta.get("fields") != key.fields():
            changed = _changed_fields(meta.get("fields"), key.fields())
            log.info("cached TensorRT engine %s is stale (%s): rebuilding", plan_path, changed)
            return None
        try:
            data = plan_path.read_bytes()
        except OSError as exc:
            log.warning("cached TensorRT engine %s cannot be read (%s): rebuilding", plan_path, exc)
            return None
        if len(data) != meta.get("plan_bytes") or hashlib.sha256(data).hexdigest() != meta.get("plan_sha256"):
            log.warning(
                "cached TensorRT engine %s is corrupt or truncated (%d bytes, expected %s): rebuilding",
                plan_path, len(data), meta.get("plan_bytes"),
            )  # fmt: skip
            return None
        return data

    def store(self, model_stem: str, key: PlanKey, plan: bytes) -> Path:
        """Write `plan` and its sidecar atomically (plan first); returns the plan's path."""
        if not plan:
            raise ValueError("refusing to cache an empty plan")
        plan_path = self.plan_path(model_stem, key)
        meta = {
            "key": key.digest,
            "fields": key.fields(),
            "plan_bytes": len(plan),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
        }
        atomic_write(plan_path, plan)
        atomic_write(
            self.sidecar_path(plan_path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        )
        return plan_path

    def discard(self, model_stem: str, key: PlanKey) -> None:
        """Remove a plan and its sidecar (e.g. one that TensorRT refused to deserialize)."""
        plan_path = self.plan_path(model_stem, key)
        for path in (self.sidecar_path(plan_path), plan_path):  # sidecar first: a lone plan never loads
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def get_or_build(
        self, model_stem: str, key: PlanKey, build: Callable[[], bytes]
    ) -> tuple[bytes, Path, bool]:
        """The cached plan for `key`, else `build()`'s, stored. Returns (plan, path, whether it was built)."""
        plan = self.load(model_stem, key)
        if plan is not None:
            return plan, self.plan_path(model_stem, key), False
        plan = build()
        return plan, self.store(model_stem, key, plan), True


def _changed_fields(old: object, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "no key fields recorded"
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    changed += [f"{k}: {old[k]!r} -> (none)" for k in old if k not in new]
    return "; ".join(changed) or "key digest differs"
