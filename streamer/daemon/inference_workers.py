"""The supervisor's inference workers: one per entry of ``engine.devices``, or the one of ``engine.device``.

Each `InferenceWorker` is a lane of its own: its process (`InferenceProcess`: restart policy, heartbeat),
its `WorkerContext` (notification socket, epoch, ``engine_on_gpu``, the GPU its NVDEC sources decode on),
the source workers of the streams placed on it (its `DecoderGroups`), its status file and its ledger. So
a worker that crashes and restarts touches nothing of the others.

With one worker (``engine.devices`` left out, or one entry such as ``[0]``) the lane's folder is the run
directory itself and the worker binds ``publish.endpoint``: everything is as it was before several
workers existed (only the engine's device is the entry's). With several, each lane has a folder
``<run dir>/<name>/`` (``gpu0``, ``cpu1``, ...) and its worker publishes on an ``ipc://`` endpoint there,
relayed by the supervisor's `streamer.output.forwarder.Forwarder`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.config import worker_names
from streamer.daemon.decoder_groups import DecoderGroups
from streamer.daemon.processes import InferenceProcess
from streamer.messages import Shutdown
from streamer.observability.picture import PICTURES_DIR
from streamer.output.forwarder import worker_endpoint
from streamer.transport.notify import NotifySender
from streamer.workers.common import WorkerContext
from streamer.workers.ledger import ledger_dir

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext

    from streamer.config import Config
    from streamer.daemon.restart import RestartPolicy
    from streamer.messages import StreamEvent

log = logging.getLogger(__name__)


class DevicesError(ValueError):
    """``engine.devices: all`` on a host where no GPU is found, or a GPU index that is not there."""


def count_gpus() -> int:
    """How many GPUs ``nvidia-smi -L`` lists (0 without it): the supervisor never imports CUDA."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
        return sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return 0


def resolve_devices(cfg: Config) -> list[str] | None:
    """The devices of the workers (``cuda:N`` / ``cpu``); None for the single worker of ``engine.device``.

    Raises:
        DevicesError: ``all`` finds no GPU, or a stream's ``device`` names a GPU that ``all`` did not find.
    """
    devices = cfg.engine.devices
    if devices is None:
        return None
    if devices != "all":
        return list(devices)
    n = count_gpus()
    if n == 0:
        raise DevicesError("engine.devices: all, but nvidia-smi lists no GPU on this host")
    found = [f"cuda:{i}" for i in range(n)]
    names = worker_names(found)
    for i, source in enumerate(cfg.sources):
        if source.device is not None and source.device not in names:
            raise DevicesError(
                f"sources[{i}].device: {source.device}: this host has {', '.join(names)} "
                "(engine.devices: all)"
            )
    return found


def cpu_threads(devices: list[str]) -> int | None:
    """Each CPU worker's share of the cores when several run and ``engine.threads`` is not set."""
    cpus = devices.count("cpu")
    return max(1, (os.cpu_count() or 1) // cpus) if cpus > 1 else None


@dataclass
class InferenceWorker:
    """One inference worker and everything that hangs off it."""

    index: int
    name: str
    """``gpu0``, ``cpu1``, ...; "" for a daemon's only worker (no ``engine.devices``, or one entry)."""
    device: str | None
    """``cuda:N`` or ``cpu``; None: ``engine.device`` as configured."""
    ctx: WorkerContext
    process: InferenceProcess
    notify: NotifySender
    groups: DecoderGroups
    threads: int | None = None
    """CPU threads given to its engine when ``engine.threads`` is not set (its share of the cores)."""
    ready_at: float = 0.0
    after_restart: list[StreamEvent] = field(default_factory=list)
    """Events for its next process to publish (about the one that was killed)."""
    failed: bool = False
    """Its restart budget is spent: its streams moved to the others (`streamer.daemon.placement`)."""

    @property
    def label(self) -> str:
        return f"inference worker {self.name}" if self.name else "the inference worker"

    def restart_planned(self) -> None:
        """Ask its process to finish the frames in hand and exit, to be started again (new settings, over
        its memory budget): a planned restart, not counted as a crash."""
        self.process.planned = True
        self.notify.send(Shutdown())

    @property
    def run_dir(self) -> Path:
        return Path(self.ctx.run_dir)

    @property
    def status_path(self) -> Path:
        return self.run_dir / "status.json"

    def config(self, cfg: Config) -> Config:
        """The config its process runs with: its own device and threads, and its own endpoint."""
        if self.device is None:
            return cfg
        engine = cfg.engine.model_copy(
            update={"device": self.device, "devices": None, "threads": cfg.engine.threads or self.threads}
        )
        if not self.name:  # the only worker (engine.devices: [N]): it binds publish.endpoint itself
            return cfg.model_copy(update={"engine": engine})
        publish = cfg.publish.model_copy(
            update={"endpoint": worker_endpoint(self.ctx.run_dir), "curve": None}
        )
        return cfg.model_copy(update={"engine": engine, "publish": publish})

    def bump_epoch(self) -> None:
        """Tell its sources that frames announced to its old process will never be read."""
        epoch = self.ctx.inference_epoch
        with epoch.get_lock():
            epoch.value += 1

    def close(self) -> None:
        self.notify.close()


def make_workers(
    mpc: SpawnContext, cfg: Config, run_dir: Path, log_queue: Any, policy: RestartPolicy
) -> list[InferenceWorker]:
    """The lanes for `cfg` (not started). Raises `DevicesError` as `resolve_devices`."""
    devices = resolve_devices(cfg)
    # One entry ([0]) is the single worker of engine.device on that device: no folder, no forwarder.
    names = worker_names(devices) if devices is not None and len(devices) > 1 else [""]
    threads = cpu_threads(devices) if devices is not None else None
    workers = []
    for index, name in enumerate(names):
        folder = run_dir / name if name else run_dir
        folder.mkdir(exist_ok=True)
        if name:  # the streams' pictures, when the supervisor serves them: one folder for all workers
            (folder / PICTURES_DIR).symlink_to(run_dir / PICTURES_DIR)
        device = devices[index] if devices is not None else None
        on = device or cfg.engine.device  # NVDEC decodes on the engine's GPU (the CUDA ring needs both there)
        gpu = int(on.partition(":")[2]) if on.startswith("cuda:") else 0
        endpoint = f"ipc://{folder}/notify.sock"
        ctx = WorkerContext(
            str(folder), endpoint, log_queue, cfg.logging.level, None, os.getpid(), mpc.Value("i", 0),
            mpc.Value("b", 0), cuda_device=gpu,
        )  # fmt: skip
        workers.append(
            InferenceWorker(
                index, name, device, ctx, InferenceProcess(mpc, ctx, policy, name), NotifySender(endpoint),
                DecoderGroups(mpc, ctx), threads if device == "cpu" else None,
            )
        )  # fmt: skip
    return workers


def move_ledger(sid: str, source: InferenceWorker, target: InferenceWorker) -> None:
    """Hand stream `sid`'s accounting to `target` (its seq goes on there), from a `source` that is dead."""
    old = ledger_dir(source.run_dir) / sid
    if old.exists():
        ledger_dir(target.run_dir).mkdir(exist_ok=True)
        os.replace(old, ledger_dir(target.run_dir) / sid)


__all__ = ["DevicesError", "InferenceWorker", "make_workers", "move_ledger", "resolve_devices"]
