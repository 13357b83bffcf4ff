"""The subscriber library and the `yolostream subscribe` command, against real publishers on loopback."""

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
import zmq

from streamer.messages import EVENT_DROPPED, EVENT_EOS, EVENT_ERROR, EVENT_STARTED
from streamer.output.client import (
    CurveClient,
    ReceiveTimeout,
    SubscribeError,
    Subscriber,
    format_message,
    handshake_problem,
    subscribe_main,
)
from streamer.output.protocol import (
    AnalyticsMessage,
    Detection,
    DetectionsMessage,
    EventMessage,
    ProtocolError,
    ZoneEventRecord,
    encode,
)
from streamer.output.publish import Publisher

TIMEOUT = 30.0  # seconds: a generous cap on every wait (the events come in milliseconds on an idle machine)
REPO = Path(__file__).resolve().parents[2]


def det(stream: str, frame: int, n: int = 1, seq: int = 0) -> DetectionsMessage:
    dets = [Detection(class_id=2, class_name="car", score=0.77, box=(10.4, 20.5, 30.0, 40.49))] * n
    return DetectionsMessage(
        stream=stream, seq=seq, frame=frame, pts=frame * 0.04, capture_ts=time.time(), width=64, height=48,
        detections=dets,
    )  # fmt: skip


def evt(stream: str, kind: str = EVENT_EOS, message: str = "end of file", seq: int = 0) -> EventMessage:
    return EventMessage(stream=stream, seq=seq, event=kind, message=message, ts=time.time())


@pytest.fixture
def pub() -> Iterator[Publisher]:
    with Publisher("tcp://127.0.0.1:*") as p:
        yield p


def wait_subscribed(pub: Publisher, count: int) -> None:
    """Wait until `count` subscriptions are applied (avoids ZeroMQ's "slow joiner" loss)."""
    assert pub.wait_for_subscribers(count, TIMEOUT), f"only {pub.subscribers} subscription(s) arrived"


def drain(sub: Subscriber, wait: float = 0.2) -> list[DetectionsMessage | EventMessage]:
    """Everything `sub` receives until nothing arrives for `wait` seconds."""
    got: list[DetectionsMessage | EventMessage] = []
    while True:
        try:
            got.append(sub.recv(wait))
        except ReceiveTimeout:
            return got


# ------------------------------------------------------------------------------------------ Subscriber


def test_stream_filter_is_exact(pub: Publisher) -> None:
    with Subscriber(pub.endpoint, streams=["cam1"]) as sub:
        assert sub.subscriptions == (b"det.cam1", b"evt.cam1")
        wait_subscribed(pub, 2)
        for i in range(3):
            pub.publish(det("cam10", i))
            pub.publish(det("cam1", i))
            pub.publish(det("cam1x", i))
        pub.publish(evt("cam10"))
        pub.publish(evt("cam1"))
        got = drain(sub)
    assert [(m.stream, m.type, m.seq) for m in got] == [
        ("cam1", "det", 0), ("cam1", "det", 1), ("cam1", "det", 2), ("cam1", "evt", 3)
    ]  # fmt: skip
    assert sub.gaps == {"cam1": 0}
    assert sub.received == 4


def test_several_streams(pub: Publisher) -> None:
    with Subscriber(pub.endpoint, streams=["a", "b"]) as sub:
        wait_subscribed(pub, 4)
        for s in ("a", "b", "c", "a"):
            pub.publish(det(s, 0))
        assert [m.stream for m in drain(sub)] == ["a", "b", "a"]


@pytest.mark.parametrize(
    ("events", "detections", "every_expected", "one_expected"),
    [
        (False, True, [("det", "cam1"), ("det", "cam2")], [("det", "cam1")]),
        (True, False, [("evt", "cam1"), ("evt", "cam1")], [("evt", "cam1"), ("evt", "cam1")]),
    ],
    ids=["detections-only", "events-only"],
)
def test_events_and_detections_toggles(
    pub: Publisher,
    events: bool,
    detections: bool,
    every_expected: list[tuple[str, str]],
    one_expected: list[tuple[str, str]],
) -> None:
    with (
        Subscriber(pub.endpoint, events=events, detections=detections) as every_stream,
        Subscriber(pub.endpoint, streams=["cam1"], events=events, detections=detections) as one_stream,
    ):
        assert len(every_stream.subscriptions) == len(one_stream.subscriptions) == 1
        wait_subscribed(pub, 2)
        pub.publish(evt("cam1", EVENT_STARTED, "opened"))
        pub.publish(det("cam1", 0))
        pub.publish(det("cam2", 0))
        pub.publish(evt("cam1"))
        assert [(m.type, m.stream) for m in drain(every_stream)] == every_expected
        assert [(m.type, m.stream) for m in drain(one_stream)] == one_expected
    # Detections and events share the stream's sequence: with one kind only, a gap cannot be told apart
    # from a message of the other kind, so none are counted.
    assert every_stream.gaps == {} and one_stream.gaps == {}


@pytest.fixture
def raw_pub() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A bare XPUB socket, to send what the real publisher never would (gaps, garbage)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.linger = 0
    sock.bind("tcp://127.0.0.1:*")
    try:
        yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        sock.close()


def test_gaps_are_counted_from_sequence_numbers(raw_pub: tuple[zmq.Socket[bytes], str]) -> None:
    raw, endpoint = raw_pub
    with Subscriber(endpoint) as sub:
        for _ in range(2):  # wait until both subscriptions (det. and evt.) have arrived
            assert raw.poll(int(TIMEOUT * 1000)) and raw.recv()
        sequence = [
            ("a", 0),
            ("a", 1),
            ("b", 5),
            ("a", 4),
            ("b", 6),
            ("a", 5),
            ("b", 9),
            ("a", 0),
            ("a", 2),
        ]
        for stream, seq in sequence:
            msg = det(stream, seq, seq=seq) if seq % 2 else evt(stream, seq=seq)
            raw.send_multipart(encode(msg))
        got = [sub.recv(TIMEOUT) for _ in sequence]
        assert [(m.stream, m.seq) for m in got] == sequence
        # a: 1 -> 4 misses 2 and 3; then a restart at 0 (not a gap), 0 -> 2 misses 1.
        # b: starts at 5 (joining late is not a gap); 6 -> 9 misses 7 and 8.
        assert sub.gaps == {"a": 3, "b": 2}


def test_recv_timeout_and_iteration(pub: Publisher) -> None:
    with Subscriber(pub.endpoint) as sub:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            sub.recv(0.2)
        assert 0.15 < time.monotonic() - t0 < 2
        wait_subscribed(pub, 2)
        for i in range(3):
            pub.publish(det("cam1", i))
        frames = []
        for msg in sub:
            frames.append(msg.frame if isinstance(msg, DetectionsMessage) else -1)
            if len(frames) == 3:
                break
        assert frames == [0, 1, 2]


def test_bad_messages_raise_protocol_error_and_are_skipped(raw_pub: tuple[zmq.Socket[bytes], str]) -> None:
    raw, endpoint = raw_pub
    with Subscriber(endpoint, streams=["cam1"]) as sub:
        assert raw.poll(int(TIMEOUT * 1000)) and raw.recv()
        raw.send_multipart([b"det.cam1", b"{garbage"])
        raw.send_multipart([b"det.cam1", b"one", b"too many"])
        raw.send_multipart(encode(det("cam1", 7)))
        with pytest.raises(ProtocolError, match="invalid JSON"):
            sub.recv(TIMEOUT)
        with pytest.raises(ProtocolError, match="3 parts"):
            sub.recv(TIMEOUT)
        msg = sub.recv(TIMEOUT)
        assert isinstance(msg, DetectionsMessage) and msg.frame == 7


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="stream id"):
        Subscriber("tcp://127.0.0.1:1", streams=["cam 1"])
    with pytest.raises(ValueError, match="events, detections or analytics"):
        Subscriber("tcp://127.0.0.1:1", events=False, detections=False)
    with pytest.raises(SubscribeError, match="nonsense://x") as info:
        Subscriber("nonsense://x")
    assert isinstance(info.value, OSError)
    sub = Subscriber("tcp://127.0.0.1:1")
    sub.close()
    sub.close()
    with pytest.raises(SubscribeError, match="closed"):
        sub.recv(0.1)


def test_curve_arguments() -> None:
    server_public, _ = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    with pytest.raises(ValueError, match="not both"):
        Subscriber(
            "tcp://127.0.0.1:1", curve=CurveClient.from_keys(server_public), server_public_key=server_public
        )
    with pytest.raises(ValueError, match="without server_public_key"):
        Subscriber("tcp://127.0.0.1:1", client_secret_key=client_secret)
    with pytest.raises(ValueError, match="40-character Z85"):
        Subscriber("tcp://127.0.0.1:1", server_public_key="short")
    other_public, _ = zmq.curve_keypair()
    with pytest.raises(ValueError, match="does not belong"):
        CurveClient.from_keys(server_public, client_secret, other_public)
    with Subscriber(
        "tcp://127.0.0.1:1", server_public_key=server_public, client_secret_key=client_secret
    ) as sub:
        assert sub.curve == CurveClient(server_public, client_public, client_secret)
        assert sub._sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        assert sub.handshake_error is None
    throwaway = CurveClient.from_keys(server_public.decode())  # a key pair of its own, for allow_any_client
    assert (
        throwaway.public_key != client_public
        and zmq.curve_public(throwaway.secret_key) == throwaway.public_key
    )
    assert client_secret.decode() not in repr(CurveClient(server_public, client_public, client_secret))


def test_handshake_problems_are_explained() -> None:
    def explain(event: int, value: int = 0, curve: bool = True) -> str:
        return handshake_problem(event, value, curve) or ""

    assert "refused this subscriber's CURVE key" in explain(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    mismatch = 0x11000002
    assert "requires CURVE" in explain(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, mismatch, curve=False)
    assert "does not use CURVE" in explain(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, mismatch)
    assert "server key" in explain(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32)
    # What a plaintext subscriber of a CURVE publisher usually sees: the server hangs up.
    assert "probably requires CURVE" in explain(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32, curve=False)
    assert handshake_problem(zmq.EVENT_CONNECTED, 0, True) is None


def test_format_message() -> None:
    msg = det("cam1", 12, n=2, seq=12)
    msg.detections[0] = Detection(
        class_id=0, class_name="person", score=0.914, box=(12.2, 40.0, 199.6, 380.0)
    )
    msg.pts = 0.48
    assert (
        format_message(msg)
        == "cam1 #12 frame 12 pts 0.480s 2 dets: person 0.91 [12,40,200,380], car 0.77 [10,20,30,40]"
    )
    msg.detections, msg.pts = [], None
    assert format_message(msg) == "cam1 #12 frame 12 pts - 0 dets"
    assert format_message(evt("cam1", EVENT_EOS, "end of file", seq=13)) == "cam1 #13 EVENT eos: end of file"
    err = evt("cam1", EVENT_ERROR, "cannot open")
    err.detail = {"code": 2, "reason": "missing"}
    assert format_message(err) == "cam1 #0 EVENT error: cannot open (code=2, reason=missing)"
    tracked = det("cam1", 3, n=1)
    tracked.detections[0] = Detection(
        class_id=0, class_name="person", score=0.5, box=(1, 2, 3, 4), track_id=7
    )
    assert format_message(tracked).endswith("1 det: person 0.50 #7 [1,2,3,4]")
    ana = AnalyticsMessage(
        stream="gate", seq=2, frame=40, pts=1.6, capture_ts=1.0,
        events=[
            ZoneEventRecord("exit", "yard", 2, 2, "car", reason="lost"),
            ZoneEventRecord("cross", "door", 4, 0, "person", direction="in"),
        ],
    )  # fmt: skip
    assert format_message(ana) == "gate #2 ZONES frame 40: exit yard #2 car (lost); cross door in #4 person"


# ------------------------------------------------------------------------------------- subscribe_main


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
    import streamer.output.client

    monkeypatch.setattr(streamer.output.client, "QUIET_HINT_S", 0.3)
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
        f"{_AS_FROM_A_TERMINAL}{prelude}import sys; from streamer.output.client import subscribe_main; "
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
