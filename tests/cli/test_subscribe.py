"""``yolostream subscribe`` (`streamer.cli.subscribe`) against real publishers on loopback: what it prints,
when it stops, what it says on stderr, Ctrl-C and a closed pipe, and CURVE keys."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from streamer.cli.keys import make_keys
from streamer.cli.subscribe import subscribe_main
from streamer.messages import EVENT_DROPPED, EVENT_STARTED
from streamer.output.protocol import DetectionsMessage, EventMessage
from streamer.output.publish import Publisher
from tests.support.curve import Keys
from tests.support.pubsub import TIMEOUT, det, evt, wait_subscribed

REPO = Path(__file__).resolve().parents[2]
CURVE_TIMEOUT = 5.0  # seconds, for the test with keys: under QUIET_HINT_S, so no hint is waited for


@pytest.fixture
def pub() -> Iterator[Publisher]:
    with Publisher("tcp://127.0.0.1:*") as p:
        yield p


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def curve_pub(keys: Keys) -> Iterator[Publisher]:
    """A CURVE publisher that admits alice and bob."""
    with Publisher.from_config(keys.config()) as p:
        yield p


def run_main(
    pub: Publisher, subscriptions: int, publish: list[DetectionsMessage | EventMessage], **kwargs: object
) -> tuple[int, list[str]]:
    """Run subscribe_main in a thread, publish once it has subscribed, return its exit code and lines."""
    out = io.StringIO()
    result: list[int] = []
    args = {"streams": None, "raw_json": False, "limit": None, "timeout": TIMEOUT} | kwargs
    thread = threading.Thread(target=lambda: result.append(subscribe_main(pub.endpoint, out=out, **args)))  # type: ignore[arg-type]
    thread.start()
    try:
        wait_subscribed(pub, subscriptions)
        for msg in publish:
            pub.publish(msg)
    finally:
        thread.join(TIMEOUT + 5)
    assert not thread.is_alive() and result, "subscribe_main did not return"
    return result[0], out.getvalue().splitlines()


def test_subscribe_main_stops_after_limit(pub: Publisher) -> None:
    msgs: list[DetectionsMessage | EventMessage] = [evt("cam1", EVENT_STARTED, "opened")]
    msgs += [det("cam1", i, n=i % 2) for i in range(3)] + [evt("cam1", EVENT_DROPPED, "behind")]
    code, lines = run_main(pub, 2, msgs, limit=4)
    assert code == 0
    assert lines == [
        "cam1 #0 EVENT started: opened",
        "cam1 #1 frame 0 pts 0.000s 0 dets",
        "cam1 #2 frame 1 pts 0.040s 1 det: car 0.77 [10,20,30,40]",
        "cam1 #3 frame 2 pts 0.080s 0 dets",
    ]


def test_subscribe_main_raw_json_and_stream_filter(pub: Publisher) -> None:
    msgs: list[DetectionsMessage | EventMessage] = [det("cam10", 0), det("cam1", 5, n=1), evt("cam1")]
    code, lines = run_main(pub, 2, msgs, streams=["cam1"], raw_json=True, limit=2)
    assert code == 0
    objs = [json.loads(line) for line in lines]
    assert [(o["type"], o["stream"], o["seq"]) for o in objs] == [("det", "cam1", 0), ("evt", "cam1", 1)]
    assert objs[0]["detections"] == [
        {"class_id": 2, "class_name": "car", "score": 0.77, "box": [10.4, 20.5, 30.0, 40.49]}
    ]
    assert objs[1]["event"] == "eos" and objs[1]["v"] == 1


def test_subscribe_main_times_out(pub: Publisher, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_main(pub, 2, [det("cam1", 0)], timeout=0.5)
    assert code == 1
    assert lines == ["cam1 #0 frame 0 pts 0.000s 1 det: car 0.77 [10,20,30,40]"]
    assert f"no message from {pub.endpoint} for 0.5 s" in capsys.readouterr().err


def test_subscribe_main_says_what_it_waits_for_and_hints_once_when_nothing_comes(
    pub: Publisher, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamer.cli.subscribe

    monkeypatch.setattr(streamer.cli.subscribe, "QUIET_HINT_S", 0.3)
    code, lines = run_main(pub, 2, [], streams=["cam1", "cam2"], timeout=1.5)
    assert code == 1 and lines == []  # stdout keeps only messages
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"yolostream subscribe: waiting for messages of cam1, cam2 from {pub.endpoint}"
    hints = [line for line in err if "nothing from" in line]
    assert len(hints) == 1 and "is the daemon running and publishing there?" in hints[0]
    assert f"no message from {pub.endpoint} for 1.5 s" in err[-1]


def test_subscribe_main_invalid_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert subscribe_main("tcp://127.0.0.1:1", ["bad id"], False, None, 1.0) == 2
    assert "invalid stream id" in capsys.readouterr().err
    assert subscribe_main("nonsense://x", None, False, None, 1.0) == 1
    assert "nonsense://x" in capsys.readouterr().err


WAITING = "yolostream subscribe: waiting for messages of every stream from {}"  # (on stderr: no traceback)


# A shell starts a command with SIGINT at its default and unblocked; a child inherits an ignored or blocked
# SIGINT from its parent instead, and the pytest process may have one from something earlier in the suite
# (both Ctrl-C tests hung in full runs only, with the child in its poll loop). So the child starts as from a
# terminal, and the test says when its parent's state differed.
_AS_FROM_A_TERMINAL = (
    "import signal; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
)


def _signal_masks(pid: int) -> dict[str, str]:
    """A process's blocked, ignored and caught signal masks (hex, from /proc): what a child inherits
    (blocked and ignored signals survive exec). Empty when unreadable."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":\t", 1) for line in lines if ":\t" in line)
    return {key: value.strip() for key, value in fields if key in ("SigBlk", "SigIgn", "SigCgt")}


def _start_subscribe_process(endpoint: str, prelude: str = "", **popen: object) -> subprocess.Popen[str]:
    masks = _signal_masks(os.getpid())
    for key, what in (("SigIgn", "ignores"), ("SigBlk", "blocks")):
        if int(masks.get(key, "0"), 16) & (1 << (signal.SIGINT - 1)):
            warnings.warn(f"the test process {what} SIGINT ({key} {masks[key]})", stacklevel=2)
    code = (
        f"{_AS_FROM_A_TERMINAL}{prelude}import sys; from streamer.cli.subscribe import subscribe_main; "
        f"sys.exit(subscribe_main({endpoint!r}, None, False, None, None))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, text=True, **popen)  # type: ignore[call-overload]


def _after_ctrl_c(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """(stdout, stderr) once `proc` has exited after SIGINT. Its exit is waited for, not the end of its
    pipes: another process of the suite that inherited them could hold them open. If it has not exited
    within TIMEOUT, fail with the Python stack of every thread (faulthandler, on SIGABRT)."""
    assert proc.stdout is not None and proc.stderr is not None
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        signals = _signal_masks(proc.pid)
        proc.send_signal(signal.SIGABRT)
        proc.wait(timeout=TIMEOUT)
        pytest.fail(
            f"still running {TIMEOUT:.0f} s after SIGINT; its signal state: {signals}; this process's: "
            f"{_signal_masks(os.getpid())}; its stacks:\n{_available(proc.stderr)}"
        )
    return _available(proc.stdout), _available(proc.stderr)


def _available(pipe: IO[str]) -> str:
    """What the pipe holds now (past what was read from it already), without waiting for its end."""
    os.set_blocking(pipe.fileno(), False)
    chunks = []
    while True:
        try:
            chunk = os.read(pipe.fileno(), 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_subscribe_main_ctrl_c_is_quiet(pub: Publisher) -> None:
    proc = _start_subscribe_process(pub.endpoint, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_subscribed(pub, 2)
        pub.publish(evt("cam1", EVENT_STARTED, "opened"))
        assert proc.stdout is not None
        assert proc.stdout.readline() == "cam1 #0 EVENT started: opened\n"
        out, err = _after_ctrl_c(proc)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and err.splitlines() == [WAITING.format(pub.endpoint)] and out == ""


# A thread that takes SIGINT for the process while the main thread cannot: the signal then never interrupts
# the main thread's poll, as when it lands just before libzmq blocks (how the test above once hung under
# load: a poll without a timeout waited for ever with Ctrl-C pending).
SIGNAL_ELSEWHERE = (
    "import signal, threading, time; threading.Thread(target=time.sleep, args=(3600,), daemon=True).start(); "
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); "
)


def test_subscribe_main_acts_on_a_ctrl_c_that_did_not_interrupt_its_poll(pub: Publisher) -> None:
    proc = _start_subscribe_process(
        pub.endpoint, prelude=SIGNAL_ELSEWHERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_subscribed(pub, 2)
        pub.publish(evt("cam1", EVENT_STARTED, "opened"))
        assert proc.stdout is not None
        assert proc.stdout.readline() == "cam1 #0 EVENT started: opened\n"  # now waiting with no timeout
        out, err = _after_ctrl_c(proc)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and err.splitlines() == [WAITING.format(pub.endpoint)] and out == ""


def test_subscribe_main_closed_pipe_is_quiet(pub: Publisher) -> None:
    r, w = os.pipe()
    proc = _start_subscribe_process(pub.endpoint, stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    try:
        wait_subscribed(pub, 2)
        with os.fdopen(r) as reader:
            pub.publish(evt("cam1", EVENT_STARTED, "opened"))
            assert reader.readline() == "cam1 #0 EVENT started: opened\n"
        for i in range(100):  # the reader is gone: the next write fails with EPIPE
            pub.publish(det("cam1", i))
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and err.splitlines() == [WAITING.format(pub.endpoint)]


# ------------------------------------------------------------------------------------------ CURVE


def test_subscribe_command_with_keys(
    keys: Keys, curve_pub: Publisher, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    client_key = keys.root / "clients" / "bob.key_secret"
    args = (curve_pub.endpoint, None, False, 3, CURVE_TIMEOUT)
    thread = threading.Thread(
        target=lambda: result.append(
            subscribe_main(*args, out=out, server_key=keys.server_public, client_key=client_key)
        )
    )
    result: list[int] = []
    thread.start()
    try:
        assert curve_pub.wait_for_subscribers(2, CURVE_TIMEOUT)
        for i in range(3):
            curve_pub.publish(det("cam1", i))
    finally:
        thread.join(CURVE_TIMEOUT + 5)
    assert result == [0]
    assert len(out.getvalue().splitlines()) == 3

    stranger = keys.root.parent / "stranger"
    assert make_keys(stranger, ["x"], force=False, out=io.StringIO()) == 0
    code = subscribe_main(
        curve_pub.endpoint, None, False, None, 1.0, server_key=keys.server_public,
        client_key=stranger / "clients" / "x.key_secret",
    )  # fmt: skip
    assert code == 1
    assert "refused this subscriber's CURVE key" in capsys.readouterr().err
    assert subscribe_main(curve_pub.endpoint, None, False, None, 1.0, server_key=keys.root / "nope.key") == 2
    assert "nope.key" in capsys.readouterr().err
    assert subscribe_main(curve_pub.endpoint, None, False, None, 1.0, client_key=client_key) == 2
    assert "--client-key needs --server-key" in capsys.readouterr().err
