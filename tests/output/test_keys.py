"""`yolostream keys`: the files it writes (ZeroMQ certificates, modes), what it refuses, what it prints."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth

from streamer.cli.keys import make_keys
from streamer.cli.main import main
from streamer.output.key_files import read_secret_certificate


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_and_client_pairs_in_zeromq_certificate_format(tmp_path: Path) -> None:
    out = io.StringIO()
    root = tmp_path / "curve"
    assert make_keys(root, [], force=False, out=out) == 0
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "authorized_clients/client.key",
        "clients/client.key_secret",
        "server.key",
        "server.key_secret",
    ]
    assert mode(root) == 0o700 and mode(root / "clients") == 0o700
    assert mode(root / "server.key_secret") == mode(root / "clients" / "client.key_secret") == 0o600
    assert mode(root / "server.key") == mode(root / "authorized_clients" / "client.key") == 0o644
    for name, public_file, secret_file in [
        ("server", root / "server.key", root / "server.key_secret"),
        ("client", root / "authorized_clients" / "client.key", root / "clients" / "client.key_secret"),
    ]:
        public, secret = zmq.auth.load_certificate(public_file)  # pyzmq's own reader
        assert secret is None and len(public) == 40, name
        public2, secret2 = zmq.auth.load_certificate(secret_file)
        assert public2 == public and secret2 is not None and zmq.curve_public(secret2) == public, name
        assert read_secret_certificate(secret_file) == (public, secret2)
    assert zmq.auth.load_certificate(root / "server.key") != zmq.auth.load_certificate(
        root / "authorized_clients" / "client.key"
    )
    text = out.getvalue()
    assert f"server_secret_key_file: {root / 'server.key_secret'}" in text
    assert f"authorized_clients: {root / 'authorized_clients'}" in text
    assert f"--server-key {root / 'server.key'}" in text
    assert f"--client-key {root / 'clients' / 'client.key_secret'}" in text
    assert "secret-key" not in text  # the instructions name files, never print a key


def test_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert make_keys(tmp_path, [], force=False, out=io.StringIO()) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert make_keys(tmp_path, [], force=False, out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and str(tmp_path / "server.key_secret") in err and "--force" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert make_keys(tmp_path, ["client"], force=False, out=io.StringIO()) == 1
    # --force replaces them with new keys, with the same modes, and leaves no temporary file.
    assert make_keys(tmp_path, [], force=True, out=io.StringIO()) == 0
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert all(after[p] != before[p] for p in before)
    assert mode(tmp_path / "server.key_secret") == 0o600 and mode(tmp_path / "server.key") == 0o644


def test_more_clients_leave_the_server_pair_alone(tmp_path: Path) -> None:
    assert make_keys(tmp_path, [], force=False, out=io.StringIO()) == 0
    server = (tmp_path / "server.key_secret").read_bytes()
    out = io.StringIO()
    assert make_keys(tmp_path, ["alice", "bob", "alice"], force=False, out=out) == 0
    assert (tmp_path / "server.key_secret").read_bytes() == server
    assert sorted(p.name for p in (tmp_path / "authorized_clients").iterdir()) == [
        "alice.key",
        "bob.key",
        "client.key",
    ]
    assert sorted(p.name for p in (tmp_path / "clients").iterdir()) == [
        "alice.key_secret", "bob.key_secret", "client.key_secret"
    ]  # fmt: skip
    assert "server.key_secret " not in out.getvalue().split("The daemon's config")[0]  # not listed as written


def test_clients_only_into_an_empty_directory_also_make_the_server_pair(tmp_path: Path) -> None:
    assert make_keys(tmp_path / "k", ["alice"], force=False, out=io.StringIO()) == 0
    assert (tmp_path / "k" / "server.key_secret").is_file() and not (
        tmp_path / "k" / "clients" / "client.key_secret"
    ).exists()


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "x" * 65])
def test_invalid_names(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert make_keys(tmp_path, [name], force=False, out=io.StringIO()) == 2
    assert "invalid name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "--out", str(tmp_path), "--name", "cam-viewer"]) == 0
    assert (tmp_path / "clients" / "cam-viewer.key_secret").is_file()
    assert "cam-viewer.key_secret" in capsys.readouterr().out
    assert main(["keys", "--out", str(tmp_path), "--name", "cam-viewer"]) == 1
    assert main(["keys", "--out", str(tmp_path), "--name", "cam-viewer", "--force"]) == 0
