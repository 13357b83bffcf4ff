"""Fixtures of the source-worker tests: a real notification pipe (ZeroMQ over ipc) and a stop flag."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from streamer.transport.notify import NotifyReceiver, NotifySender
from streamer.workers.common import StopFlag, WorkerContext


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def pipe(tmp_path: Path, context: zmq.Context) -> Iterator[tuple[NotifySender, NotifyReceiver]]:
    endpoint = f"ipc://{tmp_path}/notify.sock"
    receiver = NotifyReceiver(endpoint, context)
    sender = NotifySender(endpoint, context)
    yield sender, receiver
    sender.close()
    receiver.close()


@pytest.fixture
def stop(tmp_path: Path) -> StopFlag:
    return StopFlag(WorkerContext(str(tmp_path), "", None, "INFO", threading.Event(), os.getppid()))
