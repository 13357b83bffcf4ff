"""``yolostream keys``: CURVE key pairs for the publisher and its subscribers, and how to use them
(the key files themselves: `streamer.output.key_files`)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from streamer.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, YolostreamError
from streamer.output.key_files import write_key_pair

_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class _Pair:
    public_file: Path
    secret_file: Path
    what: str


def make_keys(out_dir: Path, names: Sequence[str], force: bool, out: TextIO | None = None) -> int:
    """Generate CURVE key pairs (the ``yolostream keys`` command).

    Writes, in `out_dir`: ``server.key`` and ``server.key_secret`` (the publisher's pair; made when
    `names` is empty or when the directory has none yet), and for each client NAME
    ``authorized_clients/NAME.key`` (what the publisher authorises) and ``clients/NAME.key_secret``
    (what that subscriber gets). Secret files have mode 0600.

    Parameters:
        out_dir: the directory (created, mode 0700, when missing).
        names: client names; empty means the server pair and one client named ``client``.
        force: replace existing files instead of refusing.
        out: where the instructions go (standard output by default).

    Returns:
        0 on success, 1 when a file exists (and not `force`) or cannot be written, 2 for an invalid name.
    """
    for name in names:
        if not _KEY_NAME.fullmatch(name):
            print(
                f"yolostream keys: invalid name {name!r}: 1-64 letters, digits, '_', '.' and '-'",
                file=sys.stderr,
            )
            return EXIT_USAGE
    out_dir = out_dir.absolute()
    server = _Pair(out_dir / "server.key", out_dir / "server.key_secret", "server")
    pairs = []
    if not names or not server.secret_file.exists():
        pairs.append(server)
    for name in dict.fromkeys(names or ["client"]):
        public_file = out_dir / "authorized_clients" / f"{name}.key"
        pairs.append(_Pair(public_file, out_dir / "clients" / f"{name}.key_secret", name))
    existing = [str(f) for p in pairs for f in (p.public_file, p.secret_file) if f.exists()]
    if existing and not force:
        print(
            f"yolostream keys: refusing to overwrite {', '.join(existing)}; pass --force to replace "
            "them (subscribers holding the old keys will then be refused)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        if not out_dir.exists():
            out_dir.mkdir(parents=True, mode=0o700)
        for pair in pairs:
            write_key_pair(pair.public_file, pair.secret_file, force)
    except (OSError, YolostreamError) as exc:
        print(f"yolostream keys: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    _print_instructions(out_dir, server, pairs, out if out is not None else sys.stdout)
    return EXIT_OK


def _print_instructions(out_dir: Path, server: _Pair, pairs: list[_Pair], out: TextIO) -> None:
    print(f"wrote in {out_dir}:", file=out)
    for pair in pairs:
        if pair is server:
            rows = [
                (pair.secret_file, "the publisher's secret key: for the daemon only"),
                (pair.public_file, "the publisher's public key: for every subscriber"),
            ]
        else:
            rows = [
                (pair.public_file, f"subscriber {pair.what!r}: public key, authorised by the publisher"),
                (pair.secret_file, f"subscriber {pair.what!r}: secret key, for that subscriber only"),
            ]
        for file, what in rows:
            print(f"  {os.path.relpath(file, out_dir):32} {what}", file=out)
    clients = [p for p in pairs if p is not server]
    example = clients[0].secret_file if clients else out_dir / "clients" / "NAME.key_secret"
    print(
        f"""
The daemon's config:

  publish:
    endpoint: tcp://0.0.0.0:5555    # other hosts may connect: only authorised subscribers get in
    curve:
      server_secret_key_file: {server.secret_file}
      authorized_clients: {out_dir / "authorized_clients"}

A subscriber needs {server.public_file.name} and its own {example.name}:

  yolostream subscribe --endpoint tcp://HOST:5555 --server-key {server.public_file} \\
      --client-key {example}

  from streamer.output.client import CurveClient, Subscriber
  curve = CurveClient.from_files("{server.public_file}", "{example}")
  sub = Subscriber("tcp://HOST:5555", curve=curve)

One more subscriber: yolostream keys --out {out_dir} --name NAME (a running daemon admits it at its
next connection). Revoke one: delete its authorized_clients/NAME.key (then restart the daemon to cut off
a subscriber that is connected).""",
        file=out,
    )
