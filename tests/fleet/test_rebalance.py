"""`yolostream fleet rebalance` against a real nats-server, with two fleet members (`FleetMember`, each with
a stand-in for its supervisor that runs what the member wants, takes a while to stop a camera and says what
runs): one holds every camera, one joins later and gets none; a dry run changes nothing, the rebalance
evens them out, each camera claimed once and never running on both; NATS unreachable is a clear error."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streamer.config import FleetConfig
from streamer.errors import YolostreamError
from streamer.fleet import buckets
from streamer.fleet.commands import fleet_state, put_main, rm_main, status_main
from streamer.fleet.connect import FleetError
from streamer.fleet.member import FleetMember
from streamer.fleet.names import rebalance_bucket
from streamer.fleet.plan import PLAN_KEY, Plan
from streamer.fleet.rebalance import rebalance_main
from tests.support.nats import NatsCluster

LEASE_S = 3.0
STOP_S = 1.5
"""How long the stand-in supervisor takes to stop a camera (a source worker's join): more than a tick, so
that a lease released before the stop would let the other member start the camera while it still runs."""
CAMERAS = [f"cam{i}" for i in range(6)]


class _Daemon:
    """A `FleetMember` and what the supervisor does around it: runs what `wanted()` says (recording when),
    stops a camera in `STOP_S`, then tells the member with `running()`."""

    def __init__(self, cfg: FleetConfig, name: str) -> None:
        self.member = FleetMember(cfg.model_copy(update={"daemon": name}), set(), self._poke)
        self.runs: dict[str, float] = {}
        self.spans: list[tuple[str, float, float]] = []
        """(camera, start, end) of every run that ended, in monotonic time."""
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _poke(self) -> None:
        self._wake.set()

    def start(self) -> _Daemon:
        self.member.running(set())
        self.member.ready.set()
        self.member.start()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._done.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            wanted = set(self.member.wanted())
            for cid in sorted(wanted - set(self.runs)):
                self.runs[cid] = time.monotonic()
            if gone := set(self.runs) - wanted:
                time.sleep(STOP_S)
                for cid in gone:
                    self.spans.append((cid, self.runs.pop(cid), time.monotonic()))
            self.member.running(set(self.runs))

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self.member.close()


def _wait(what: str, check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _plan_keys(url: str, fleet: str) -> list[str]:
    import nats

    async def main() -> list[str]:
        nc = await nats.connect(servers=[url])
        try:
            kv = await nc.jetstream(timeout=5).key_value(rebalance_bucket(fleet))
            try:
                return list(await kv.keys())
            except Exception:  # (NoKeysError: none)
                return []
        finally:
            await nc.close()

    return asyncio.run(main())


def test_a_daemon_that_joins_late_gets_its_share_from_a_rebalance_and_a_dry_run_changes_nothing(
    tmp_path: Path, nats_server: NatsCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plan that would stand for 60 s: what happens before then is the members' doing, not its expiry.
    monkeypatch.setattr("streamer.fleet.buckets.PLAN_LEASES", 20)
    url = nats_server.urls[0]
    cfg = FleetConfig(nats=(url,), name="rb", lease_s=LEASE_S, replicas=1)
    entries = "".join(f"  - id: {c}\n    url: rtsp://10.0.0.{i}/live\n" for i, c in enumerate(CAMERAS))
    (tmp_path / "cams.yaml").write_text(f"sources:\n{entries}")
    put_main(cfg, tmp_path / "cams.yaml", out=io.StringIO())
    with pytest.raises(YolostreamError, match="no live daemon"):
        rebalance_main(cfg, out=io.StringIO())

    first = _Daemon(cfg, "d0").start()
    second = None
    try:
        _wait("d0 holding every camera", lambda: len(first.runs) == len(CAMERAS))
        second = _Daemon(cfg, "d1").start()
        _wait("d1 among the members", lambda: len(fleet_state(cfg)[2]) == 2)
        dry = subprocess.run(
            [sys.executable, "-m", "streamer", "fleet", "rebalance", "--dry-run", "--nats", url,
             "--fleet", "rb"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        print(dry.stdout)
        assert "6 camera(s), 6 leased, 2 daemon(s) ready" in dry.stdout
        assert "3 camera(s) to move" in dry.stdout and "dry run: nothing changed" in dry.stdout
        for cid in ("cam3", "cam4", "cam5"):
            assert f"{cid:20} d0 → d1" in dry.stdout
        time.sleep(2 * first.member.tick_s)  # (d1 claims at every tick: none is free)
        assert not second.runs, "a daemon that joins late gets nothing"
        assert set(first.runs) == set(CAMERAS) and not first.spans, "a dry run changes nothing"
        assert _plan_keys(url, "rb") == []

        out = io.StringIO()
        started = time.monotonic()
        assert rebalance_main(cfg, out=out) == 0, out.getvalue()
        print(out.getvalue(), f"rebalance command: {time.monotonic() - started:.1f} s")
        assert "done in" in out.getvalue() and "d0 3, d1 3" in out.getvalue()
        assert set(first.runs) == {"cam0", "cam1", "cam2"}
        _wait("d1 running its three", lambda: set(second.runs) == {"cam3", "cam4", "cam5"}, timeout=10)
        _, leases, _ = fleet_state(cfg)
        assert sorted(leases) == CAMERAS
        runs = {cid: lease["run"] for cid, lease in leases.items()}
        assert runs == {**dict.fromkeys(first.runs, first.member.run_id),
                        **dict.fromkeys(second.runs, second.member.run_id)}  # fmt: skip
        assert _plan_keys(url, "rb") == [], "the command removes its plan once carried out"
        assert first.member.stats().stopped["rebalance"] == 3 and second.member.stats().leases == 3

        # never on both: each moved camera stopped on d0 before d1 started it
        started_on_second = {cid: t for cid, t in second.runs.items()}
        for cid, _start, end in first.spans:
            gap = started_on_second[cid] - end
            print(f"{cid}: stopped on d0, started on d1 {gap:.2f} s later")
            assert gap > 0, f"{cid} ran on both daemons"

        again = io.StringIO()
        assert rebalance_main(cfg, out=again) == 0 and "balanced: nothing to move" in again.getvalue()
        # the plan gone, the targets cap no claim: a new camera is taken (long before the plan would expire)
        (tmp_path / "more.yaml").write_text("sources:\n  - id: cam6\n    url: rtsp://10.0.0.6/live\n")
        put_main(cfg, tmp_path / "more.yaml", out=io.StringIO())
        _wait("cam6 running", lambda: "cam6" in {*first.runs, *second.runs})
        # `fleet rm`: the camera stops where it runs (a removal is confirmed with the key itself, so a short
        # snapshot of the cameras bucket never stops one); the others run on
        assert rm_main(cfg, ["cam6"], out=io.StringIO()) == 0
        _wait("cam6 stopped", lambda: "cam6" not in {*first.runs, *second.runs})
        assert {*first.runs, *second.runs} == set(CAMERAS)
    finally:
        for daemon in (first, second):
            if daemon is not None:
                daemon.close()


def test_fleet_status_shows_the_plan_that_stands(nats_server: NatsCluster) -> None:
    import nats

    url = nats_server.urls[0]
    cfg = FleetConfig(nats=(url,), name="st", lease_s=LEASE_S, replicas=1)

    def status(as_json: bool = False) -> str:
        out = io.StringIO()
        assert status_main(cfg, as_json=as_json, out=out) == 0
        return out.getvalue()

    def put_plan(value: bytes) -> None:
        async def main() -> None:
            nc = await nats.connect(servers=[url])
            try:
                await (await buckets.rebalance(nc.jetstream(timeout=5), cfg)).put(PLAN_KEY, value)
            finally:
                await nc.close()

        asyncio.run(main())

    assert "rebalance" not in status(), "no plan bucket: nothing said"
    put_plan(Plan({"d0-aaaaaa": 4, "d1-bbbbbb": 3}, time.time() - 7, "ops1 pid 42").encode())
    text = status()
    print(text)
    assert "rebalance plan written 7 s ago by ops1 pid 42" in text and "d0-aaaaaa 4, d1-bbbbbb 3" in text
    assert json.loads(status(as_json=True))["plan"]["targets"] == {"d0-aaaaaa": 4, "d1-bbbbbb": 3}
    put_plan(b"{not json")
    assert "unreadable plan" in status() and "the daemons ignore it" in status()


def test_nats_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = FleetConfig(nats=(f"nats://127.0.0.1:{port}",), name="rb")
    with pytest.raises(FleetError, match=f"fleet.nats: cannot connect to nats://127.0.0.1:{port}"):
        rebalance_main(cfg, dry_run=True, out=io.StringIO())
