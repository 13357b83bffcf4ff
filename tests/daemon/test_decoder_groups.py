"""Decoder groups: several streams in one source worker process (real daemons, processes and signals)."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest

from streamer.config import SourceConfig, SupervisorConfig, parse_config
from streamer.daemon.decoder_groups import DecoderGroups, GroupMember, decoder_kind
from streamer.daemon.processes import SourceProcess, policy_of
from streamer.errors import EXIT_SOURCE_STALLED, ConfigError
from streamer.observability.process_memory import parse_compute_apps
from streamer.sources.nvdec import nvdec_usable
from streamer.workers.common import StopFlag, WorkerContext
from streamer.workers.decoder_group import _Group
from tests.support.daemon import Daemon, alive, run_dirs, start_daemon
from tests.support.media import bright_spot_clip
from tests.support.models import write_oracle_model

MINIMAL = "model:\n  onnx: m.onnx\nsources:\n  - id: x\n    url: x.mp4\n"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    spots = [(float(rng.uniform(100, 540)), float(rng.uniform(100, 380))) for _ in range(25)]
    bright_spot_clip(tmp_path / "a.mp4", (640, 480), spots, radius=10)
    return write_oracle_model(tmp_path / "oracle.onnx")


def _config(model: Path, streams: list[str], per_process: int, extra: str = "") -> str:
    # Files that are not paced block on a full ring: no frame of theirs is ever dropped, so a gap in their
    # frame indices can only be a loss.
    sources = "".join(
        f"  - id: {sid}\n    url: a.mp4\n    loop: true\n    realtime: false\n" for sid in streams
    )
    return (
        f"model:\n  onnx: {model}\nsources:\n{sources}publish:\n  endpoint: {{endpoint}}\n"
        f"supervisor:\n  cpu_streams_per_process: {per_process}\n{extra}"
    )


def _pid(daemon: Daemon, stream: str, nth: int = 0) -> int:
    return int(daemon.events(stream, "started")[nth].detail["pid"])


def _frames(daemon: Daemon, stream: str) -> list[int]:
    return [d.frame for d in daemon.detections(stream)]


def _started(daemon: Daemon, streams: dict[str, int], timeout: float = 60.0) -> None:
    """Wait until each stream has had (at least) its given number of ``started`` events."""
    daemon.receive_until(
        lambda ms: all(len(daemon.events(s, "started")) >= n for s, n in streams.items()), timeout
    )


def _more_frames(daemon: Daemon, streams: list[str], n: int, timeout: float = 60.0) -> None:
    before = {s: len(daemon.detections(s)) for s in streams}
    daemon.receive_until(lambda ms: all(len(daemon.detections(s)) >= before[s] + n for s in streams), timeout)


# --- a crash of a shared process --------------------------------------------------------------------------


def test_a_killed_decoder_group_restarts_its_streams_and_the_other_group_loses_nothing(
    tmp_path: Path, model: Path
) -> None:
    daemon = start_daemon(tmp_path, _config(model, ["a1", "a2", "b1", "b2"], per_process=2))
    try:
        _started(daemon, {"a1": 1, "a2": 1, "b1": 1, "b2": 1})
        group_a, group_b = _pid(daemon, "a1"), _pid(daemon, "b1")
        assert _pid(daemon, "a2") == group_a and _pid(daemon, "b2") == group_b and group_a != group_b
        _more_frames(daemon, ["a1", "a2", "b1", "b2"], 5)

        os.kill(group_a, signal.SIGKILL)
        _started(daemon, {"a1": 2, "a2": 2})
        restarted = _pid(daemon, "a1", 1)
        assert _pid(daemon, "a2", 1) == restarted != group_a and not alive(group_a)
        for sid in ("a1", "a2"):  # each stream of the killed process says so, and restarts in a new one
            errors = [e.message for e in daemon.events(sid, "error")]
            assert len(errors) == 1 and "killed by SIGKILL; restarting it in 0.5 s" in errors[0], errors
        _more_frames(daemon, ["a1", "a2", "b1", "b2"], 10)

        for sid in ("b1", "b2"):  # the other process's streams never noticed
            assert len(daemon.events(sid, "started")) == 1 and not daemon.events(sid, "error")
            frames = _frames(daemon, sid)
            assert frames == list(range(len(frames))), f"stream {sid} lost frames"
            seqs = [m.seq for m in daemon.messages if m.stream == sid]
            assert seqs == list(range(len(seqs)))
        assert alive(group_b)
        # A file resumes from its beginning in the new process (as after a restart of its own process).
        assert 0 in _frames(daemon, "a1")[1:]
        rings = {p.name for d in run_dirs(daemon.pid) for p in d.glob("a*.ring")}
        assert all(f".{group_a}." not in name for name in rings), "the dead process's rings were not removed"
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    assert not run_dirs(daemon.pid)


def test_a_stream_that_ends_or_fails_leaves_its_group_mates_running(tmp_path: Path, model: Path) -> None:
    text = _config(model, ["loops", "once", "broken"], per_process=3)
    text = text.replace(
        "  - id: once\n    url: a.mp4\n    loop: true\n", "  - id: once\n    url: a.mp4\n    loop: false\n"
    )
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    text = text.replace("  - id: broken\n    url: a.mp4\n", "  - id: broken\n    url: broken.mp4\n")
    daemon = start_daemon(tmp_path, text + "metrics:\n  listen: 127.0.0.1:0\n")
    try:
        daemon.until_ended({"once", "broken"})
        _started(daemon, {"loops": 1, "once": 1})
        group = _pid(daemon, "loops")
        assert _pid(daemon, "once") == group
        assert len(daemon.events("once", "eos")) == 1 and len(daemon.events("broken", "error")) == 1
        _more_frames(daemon, ["loops"], 30)
        frames = _frames(daemon, "loops")
        assert frames == list(range(len(frames))) and len(daemon.events("loops", "started")) == 1
        assert alive(group)
        # `yolostream status`: one row for the shared process, its memory, its streams.
        found = re.search(r"metrics and health checks on (http://\S+) ", daemon.log())
        assert found is not None, daemon.log()
        out = subprocess.run(
            [sys.executable, "-m", "streamer", "status", "--url", found.group(1), "--interval", "0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert re.search(r"^decoders +loops,once,broken +\d+ MiB +- +0$", out.stdout, re.M), out.stdout
        assert not re.search(r"^source ", out.stdout, re.M), out.stdout
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()


# --- reload and recycling ---------------------------------------------------------------------------------


def test_sighup_changing_one_stream_of_a_group_restarts_only_that_stream(tmp_path: Path, model: Path) -> None:
    # Two processes of two: [keep, drop] and [change, mate]. The reload removes drop, changes change and
    # adds added: change restarts in its own process (not in the place drop left), added takes that place.
    streams = ["keep", "drop", "change", "mate"]
    daemon = start_daemon(tmp_path, _config(model, streams, per_process=2))
    config = tmp_path / "daemon.yaml"
    try:
        _started(daemon, dict.fromkeys(streams, 1))
        first, second = _pid(daemon, "keep"), _pid(daemon, "change")
        assert _pid(daemon, "drop") == first != second == _pid(daemon, "mate")
        _more_frames(daemon, streams, 5)
        text = config.read_text()
        text = text.replace(
            "  - id: change\n    url: a.mp4\n", "  - id: change\n    url: a.mp4\n    ring_slots: 6\n"
        )
        text = text.replace("  - id: drop\n", "  - id: added\n")
        config.write_text(text)
        daemon.proc.send_signal(signal.SIGHUP)
        _started(daemon, {"change": 2, "added": 1})
        assert _pid(daemon, "change", 1) == second and _pid(daemon, "added") == first
        n_dropped = len(daemon.detections("drop"))
        _more_frames(daemon, ["keep", "change", "added", "mate"], 10)
        assert len(daemon.detections("drop")) <= n_dropped + 4  # (frames already decoded may still come out)
        for sid in ("keep", "mate"):  # the group mates ran on, untouched
            assert len(daemon.events(sid, "started")) == 1 and not daemon.events(sid, "error")
            frames = _frames(daemon, sid)
            assert frames == list(range(len(frames))), f"the unchanged stream {sid} lost frames"
        assert not any(daemon.events(s, "error") for s in ("change", "added", "drop"))
        assert alive(first) and alive(second)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    assert not run_dirs(daemon.pid)


def test_a_decoder_group_over_its_memory_budget_is_recycled_as_one_process(
    tmp_path: Path, model: Path
) -> None:
    extra = "  source_rss_limit_mb: 1\n"  # a budget no process can meet: recycled once it has run 10 s
    daemon = start_daemon(tmp_path, _config(model, ["a", "b"], per_process=2, extra=extra))
    try:
        _started(daemon, {"a": 3, "b": 3}, timeout=120)
        # Recycled as one: the streams move from process to process together. (Which process a stream first
        # started in can differ on a loaded machine: a process may be recycled before its second stream
        # opened, and one stream's newest start can be seen before its mate's: the shared pids are counted.)
        pids = {s: [int(e.detail["pid"]) for e in daemon.events(s, "started")] for s in ("a", "b")}
        assert len(set(pids["a"])) >= 3, pids
        assert len(set(pids["a"]) & set(pids["b"])) >= 2, pids  # the same processes, whichever is ahead
        log = daemon.log()
        assert "decoder group cpu0 (streams a, b) uses" in log and "recycling it" in log
        _more_frames(daemon, ["a", "b"], 5)
        assert not daemon.events("a", "error") and not daemon.events("b", "error"), (
            "a recycle is not a failure"
        )
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()


# --- placement, config, GPU memory ------------------------------------------------------------------------


def _placed(limits: SupervisorConfig, streams: list[SourceConfig], on_gpu: bool) -> list[SourceProcess]:
    spawn = mp.get_context("spawn")
    ctx = WorkerContext("", "", None, "INFO", None, os.getpid())
    groups = DecoderGroups(spawn, ctx)
    policy = policy_of(parse_config(MINIMAL))
    return [groups.worker_for(s, limits, on_gpu, policy) for s in streams]


def test_nvdec_streams_share_a_process_k_at_a_time_and_cpu_streams_get_their_own_by_default() -> None:
    limits = SupervisorConfig()
    assert (limits.nvdec_streams_per_process, limits.cpu_streams_per_process) == (8, 1)
    nvdec = [SourceConfig(id=f"n{i}", url="/v.mp4", decoder="nvdec") for i in range(9)]
    placed = _placed(limits, nvdec, on_gpu=True)
    assert all(isinstance(w, GroupMember) for w in placed)
    names = [w.group.name for w in placed if isinstance(w, GroupMember)]
    assert names == ["nvdec0"] * 8 + ["nvdec1"]
    cpu = [SourceConfig(id=f"c{i}", url="/v.mp4", decoder="cpu") for i in range(3)]
    assert not any(isinstance(w, GroupMember) for w in _placed(limits, cpu, on_gpu=True))
    # `auto` decodes with NVDEC only when the engine runs on the GPU and NVDEC is usable here.
    auto = SourceConfig(id="auto", url="/v.mp4")
    assert decoder_kind(auto, engine_on_gpu=True) == ("nvdec" if nvdec_usable() is None else "cpu")
    assert decoder_kind(auto, engine_on_gpu=False) == "cpu"
    assert not isinstance(_placed(limits, [auto], on_gpu=False)[0], GroupMember)
    two = SupervisorConfig(cpu_streams_per_process=2)
    groups = [w.group.name for w in _placed(two, cpu, on_gpu=False) if isinstance(w, GroupMember)]
    assert groups == ["cpu0", "cpu0", "cpu1"]


def test_streams_per_process_must_be_1_to_64_with_the_key_and_line_named() -> None:
    text = MINIMAL + "supervisor:\n  nvdec_streams_per_process: 0\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert "supervisor.nvdec_streams_per_process" in str(err.value) and "<config>:7:" in str(err.value)


def test_gpu_memory_per_process_is_read_from_nvidia_smi_output() -> None:
    # The format of `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`,
    # one line per process and GPU; a process on two GPUs counts both.
    text = "4242, 585\n4243, 92\n4242, 10\n[N/A], [N/A]\n"
    assert parse_compute_apps(text) == {4242: 595.0, 4243: 92.0}


def _hang_in_group(conn: Connection, queue: object) -> None:
    logging.getLogger().addHandler(logging.handlers.QueueHandler(queue))  # type: ignore[arg-type]
    logging.getLogger().setLevel(logging.INFO)
    ctx = WorkerContext("", "", queue, "INFO", None, os.getppid())
    _Group("cpu0", ctx, conn, StopFlag(ctx)).stalled("stuck", "reading the stream", 15.0)


def test_a_hung_decoder_restarts_its_whole_group_and_its_mates_are_told_why() -> None:
    # The group's watchdog verdict, in a real child process: report the hung stream, exit with code 4.
    limits = SupervisorConfig(cpu_streams_per_process=2)
    streams = [SourceConfig(id=sid, url="/v.mp4", decoder="cpu") for sid in ("stuck", "mate")]
    members = _placed(limits, streams, on_gpu=False)
    assert all(isinstance(m, GroupMember) for m in members)
    group = members[0].group  # type: ignore[attr-defined]
    spawn = mp.get_context("spawn")
    queue = spawn.Queue()
    mine, theirs = spawn.Pipe()
    group.proc = spawn.Process(target=_hang_in_group, args=(theirs, queue))
    group.proc.start()
    theirs.close()
    group.conn = mine
    for m in members:
        m.running = True  # type: ignore[attr-defined]
    group.proc.join(30)
    codes = [m.exited() for m in members]
    assert codes == [EXIT_SOURCE_STALLED, EXIT_SOURCE_STALLED] and group.stalled == "stuck"
    hung, mate = (m.on_exit(code) for m, code in zip(members, codes, strict=True))
    assert hung is not None and "the decoder hung" in hung
    assert mate == "the decoder of stream stuck hung in the shared source worker; restarting it"
    assert all(m.restart_at is not None and not m.done for m in members)  # a stall is not a crash
    assert "stream stuck: reading the stream took more than 15 s" in queue.get(timeout=5).getMessage()


# --- on the GPU host --------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_nvdec_streams_share_one_process_and_resume_when_it_is_killed(tmp_path: Path) -> None:
    """Three NVDEC streams in one process (one CUDA context) by default; killed, it restarts and every
    stream's boxes still land on their spots (new CUDA rings mapped by the same inference worker)."""
    if (why := nvdec_usable()) is not None:
        pytest.skip(f"no NVDEC: {why}")
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    model = write_oracle_model(tmp_path / "oracle.onnx")
    rng = np.random.default_rng(5)
    points = [(float(rng.uniform(300, 1000)), float(rng.uniform(200, 500))) for _ in range(12)]
    bright_spot_clip(tmp_path / "gpu.mp4", (1280, 720), points, radius=14, codec="h264")
    ids = ["n1", "n2", "n3"]
    sources = "".join(f"  - id: {sid}\n    url: gpu.mp4\n    decoder: nvdec\n    loop: true\n" for sid in ids)
    daemon = start_daemon(
        tmp_path,
        f"model:\n  onnx: {model}\nengine:\n  backend: torch\n  device: cuda\n  max_batch: 4\n"
        f"sources:\n{sources}publish:\n  endpoint: {{endpoint}}\nlogging:\n  stats_interval_s: 0\n",
    )
    try:
        daemon.receive_until(lambda ms: all(daemon.events(s, "started") for s in ids), timeout=300)
        (shared,) = {_pid(daemon, s) for s in ids}
        assert all(daemon.events(s, "started")[0].detail["decoder"] == "nvdec" for s in ids)
        _more_frames(daemon, ids, 5, timeout=120)
        os.kill(shared, signal.SIGKILL)
        daemon.receive_until(lambda ms: all(len(daemon.events(s, "started")) == 2 for s in ids), timeout=120)
        (again,) = {_pid(daemon, s, 1) for s in ids}
        assert again != shared
        _more_frames(daemon, ids, 2 * len(points), timeout=120)
        for sid in ids:
            frames = _frames(daemon, sid)
            assert frames.count(0) == 2, f"{sid}: the file did not start again in the new process"
            for msg in daemon.detections(sid):
                (det,) = msg.detections
                x, y = points[msg.frame % len(points)]
                x1, y1, x2, y2 = det.box
                assert abs((x1 + x2) / 2 - x) <= 1.0 and abs((y1 + y2) / 2 - y) <= 1.0, (sid, msg.frame)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
