"""The run directory: one folder per running daemon on a tmpfs, holding its frame rings, sockets, status
files, ledgers and metrics; removed when the daemon stops, and by the next daemon if it was killed."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

RUN_DIR_PREFIX = "yolostream-"


def shm_root() -> Path:
    """Where run directories live: a tmpfs, so frame rings are shared memory."""
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def remove_stale_run_dirs(root: Path) -> None:
    """Remove run directories left by daemons that were killed (their pid is gone)."""
    for path in root.glob(f"{RUN_DIR_PREFIX}*"):
        pid = path.name[len(RUN_DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        log.info("removing %s, left behind by a daemon that was killed", path)
        shutil.rmtree(path, ignore_errors=True)


def make_run_dir() -> Path:
    """A new run directory for this process (``yolostream-<pid>-…``), after removing stale ones."""
    root = shm_root()
    remove_stale_run_dirs(root)
    return Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-", dir=root))
