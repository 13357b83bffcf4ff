"""`yolostream fleet put|list|rm` against a real nats-server that requires a password (from a secret file),
and the errors: a bad cameras file (key and line, nothing sent), a wrong password (never printed)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nats import NatsCluster, require_nats_server

PASSWORD = "pw-9f3Kq"


def _yolostream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[NatsCluster]:
    require_nats_server()
    auth = f"authorization {{ user: ys, password: {PASSWORD} }}\n"
    with NatsCluster(tmp_path / "nats", size=1, auth=auth) as cluster:
        yield cluster


def _config(tmp_path: Path, url: str, password: str) -> Path:
    (tmp_path / "nats.pass").write_text(password + "\n")
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "model:\n  onnx: m.onnx\n"
        f"fleet:\n  nats: [{url}]\n  name: cmd\n  replicas: 1\n  user: ys\n  password: ${{file:nats.pass}}\n"
    )
    return config


def test_put_list_rm_with_a_password_from_a_file(tmp_path: Path, secured: NatsCluster) -> None:
    config = _config(tmp_path, secured.urls[0], PASSWORD)
    (tmp_path / "cams.yaml").write_text(
        "sources:\n  - id: gate\n    url: rtsp://cam:secret@10.0.0.5/live\n  - id: yard\n    url: yard.mp4\n"
    )
    put = _yolostream("fleet", "put", str(tmp_path / "cams.yaml"), "--config", str(config))
    assert put.returncode == 0 and "2 added or changed: gate, yard" in put.stdout, put.stderr
    again = _yolostream("fleet", "put", str(tmp_path / "cams.yaml"), "--config", str(config))
    assert "0 added or changed" in again.stdout, again.stderr
    listed = _yolostream("fleet", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "rtsp://cam:***@10.0.0.5/live" in listed.stdout and "secret" not in listed.stdout
    assert f"{tmp_path}/yard.mp4" in listed.stdout  # (made absolute, relative to the cameras file)
    rm = _yolostream("fleet", "rm", "gate", "nope", "--config", str(config))
    assert rm.returncode == 1 and "removed 1 camera(s); not in the fleet: nope" in rm.stdout
    assert [
        line.split()[0] for line in _yolostream("fleet", "list", "--config", str(config)).stdout.splitlines()
    ] == ["yard"]


def test_a_wrong_password_is_a_clear_error_that_does_not_show_it(
    tmp_path: Path, secured: NatsCluster
) -> None:
    config = _config(tmp_path, secured.urls[0], "not-the-Pw")
    out = _yolostream("fleet", "list", "--config", str(config))
    assert out.returncode == 1 and "fleet.nats: cannot connect to" in out.stderr, out.stderr
    assert "not-the-Pw" not in out.stderr + out.stdout


def test_a_bad_cameras_file_is_refused_with_key_and_line_before_anything_is_sent(tmp_path: Path) -> None:
    (tmp_path / "cams.yaml").write_text("sources:\n  - id: a\n    url: a.mp4\n    fps_limt: 5\n")
    out = _yolostream(
        "fleet", "put", str(tmp_path / "cams.yaml"), "--nats", "nats://127.0.0.1:1", "--fleet", "x"
    )
    assert out.returncode == 2, out.stderr
    assert (
        "cams.yaml:4: sources[0].fps_limt: unknown key 'fps_limt' (did you mean 'fps_limit'?)" in out.stderr
    )
