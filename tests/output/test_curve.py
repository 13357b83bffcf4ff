"""ZeroMQ CURVE between the publisher and its subscribers, with real sockets on loopback (and ipc): who
receives, who receives nothing, what they are told, key files, and the client keys re-read at run time."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from streamer.cli.keys import make_keys
from streamer.config import PublishConfig
from streamer.output.client import CurveClient, ReceiveTimeout, Subscriber
from streamer.output.key_files import KeyFileError
from streamer.output.protocol import DetectionsMessage
from streamer.output.publish import Publisher, PublishError
from streamer.output.security import AuthorizedClients, CurveServer, is_local_endpoint
from tests.support.curve import Keys

TIMEOUT = 5.0  # seconds: every wait for something that must happen is bounded by this
WINDOW = 1.5  # seconds of publishing during which a refused subscriber must receive nothing


def det(stream: str, frame: int) -> DetectionsMessage:
    return DetectionsMessage(stream=stream, frame=frame, pts=None, capture_ts=time.time(), width=8, height=8)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def pub(keys: Keys) -> Iterator[Publisher]:
    with Publisher.from_config(keys.config()) as p:
        yield p


def connected(pub: Publisher, sub: Subscriber) -> Subscriber:
    """`sub`, once the publisher has applied its subscriptions (so that it receives what follows)."""
    if not pub.wait_for_subscribers(len(sub.subscriptions), TIMEOUT):
        sub.close()
        raise AssertionError(f"the subscriber did not get in ({sub.handshake_error})")
    return sub


def publish_for(pub: Publisher, seconds: float, *subs: Subscriber) -> list[int]:
    """Publish a probe every 10 ms for `seconds`, receiving as it goes; messages received by each sub."""
    got = [0] * len(subs)
    frame = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pub.publish(det("cam1", frame))
        frame += 1
        for i, sub in enumerate(subs):
            while True:
                try:
                    sub.recv(0.01)
                except ReceiveTimeout:
                    break
                got[i] += 1
    return got


def test_authorised_subscriber_receives_and_others_get_nothing(keys: Keys, pub: Publisher) -> None:
    stranger = CurveClient.from_keys(keys.client("alice").server_public_key)  # a key nobody authorised
    with (
        connected(pub, Subscriber(pub.endpoint, curve=keys.client("alice"))) as alice,
        Subscriber(pub.endpoint, curve=stranger) as refused,
        Subscriber(pub.endpoint) as plaintext,
    ):
        got = publish_for(pub, WINDOW, alice, refused, plaintext)
        assert got[0] >= 10 and got[1:] == [0, 0], got
        assert pub.subscribers == 2  # alice's two subscriptions: the others never got that far
        assert alice.gaps == {"cam1": 0} and alice.handshake_error is None
        assert (
            refused.handshake_error is not None
            and "refused this subscriber's CURVE key" in refused.handshake_error
        )
        assert plaintext.handshake_error is not None and "requires CURVE" in plaintext.handshake_error
        with pytest.raises(ReceiveTimeout, match="refused this subscriber's CURVE key"):
            refused.recv(0.05)


def test_wrong_server_key_receives_nothing(keys: Keys, pub: Publisher) -> None:
    alice = keys.client("alice")
    impostor_server, _ = zmq.curve_keypair()
    wrong = CurveClient(impostor_server, alice.public_key, alice.secret_key)
    with (
        connected(pub, Subscriber(pub.endpoint, curve=keys.client("bob"))) as bob,
        Subscriber(pub.endpoint, curve=wrong) as lost,
    ):
        got = publish_for(pub, WINDOW, bob, lost)
        assert got[0] >= 10 and got[1] == 0, got
        assert lost.handshake_error is not None and "server key" in lost.handshake_error


def test_allow_any_client_admits_any_curve_client_but_not_plaintext(keys: Keys) -> None:
    cfg = keys.config(authorized_clients=[], allow_any_client=True)
    with Publisher.from_config(cfg) as pub:
        assert pub.curve is not None and pub.curve.clients is None
        server_key = keys.client("alice").server_public_key
        with (
            connected(pub, Subscriber(pub.endpoint, server_public_key=server_key)) as anyone,
            Subscriber(pub.endpoint) as plaintext,
        ):
            got = publish_for(pub, WINDOW, anyone, plaintext)
    assert got[0] >= 10 and got[1] == 0, got


def test_keys_given_as_text(keys: Keys, pub: Publisher) -> None:
    alice = keys.client("alice")
    sub = Subscriber(
        pub.endpoint,
        server_public_key=alice.server_public_key.decode(),
        client_secret_key=alice.secret_key.decode(),
        client_public_key=alice.public_key,
    )
    with connected(pub, sub):
        pub.publish(det("cam1", 0))
        assert sub.recv(TIMEOUT).stream == "cam1"


def test_client_keys_are_reread_when_the_directory_changes(keys: Keys, tmp_path: Path) -> None:
    carol_dir = tmp_path / "carol"
    assert make_keys(carol_dir, ["carol"], force=False, out=io.StringIO()) == 0
    carol = CurveClient.from_files(keys.server_public, carol_dir / "clients" / "carol.key_secret")
    with Publisher.from_config(keys.config()) as pub:
        with Subscriber(pub.endpoint, curve=carol) as sub:
            assert publish_for(pub, 0.5, sub) == [0]
        shutil.copy(carol_dir / "authorized_clients" / "carol.key", keys.authorized / "carol.key")
        with connected(pub, Subscriber(pub.endpoint, curve=carol)) as sub:
            assert publish_for(pub, 0.2, sub)[0] > 0
        (keys.authorized / "alice.key").unlink()
        with Subscriber(pub.endpoint, curve=keys.client("alice")) as sub:
            assert publish_for(pub, 0.5, sub) == [0]
            assert sub.handshake_error is not None and "refused" in sub.handshake_error


def test_curve_over_ipc(keys: Keys, tmp_path: Path) -> None:
    pub = Publisher.from_config(keys.config(f"ipc://{tmp_path}/pub.sock"))
    with (
        pub,
        connected(pub, Subscriber(pub.endpoint, curve=keys.client("alice"))) as alice,
        Subscriber(pub.endpoint) as plaintext,
    ):
        got = publish_for(pub, 0.5, alice, plaintext)
    assert got[0] > 0 and got[1] == 0


def count_received(*subs: Subscriber, wait: float = 0.5) -> list[int]:
    """Messages each of `subs` has received or receives within `wait` seconds."""
    got = []
    for sub in subs:
        n = 0
        with contextlib.suppress(ReceiveTimeout):
            while True:
                sub.recv(wait)
                n += 1
        got.append(n)
    return got


# ------------------------------------------------------------------------------------------ key files


def test_key_file_errors_name_the_file(keys: Keys, tmp_path: Path) -> None:
    missing = tmp_path / "missing.key_secret"
    with pytest.raises(KeyFileError, match=re.escape(f"cannot read CURVE key file {missing}")):
        Publisher.from_config(keys.config(server_secret_key_file=missing))
    with pytest.raises(KeyFileError, match="holds no secret key"):
        Publisher.from_config(keys.config(server_secret_key_file=keys.server_public))
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello\n")
    with pytest.raises(KeyFileError, match=re.escape(f"{garbage} is not a ZeroMQ certificate")):
        CurveClient.from_files(garbage)
    short = tmp_path / "short.key"
    short.write_text('curve\n    public-key = "abc"\n')
    with pytest.raises(KeyFileError, match="40-character Z85"):
        CurveClient.from_files(short)
    with pytest.raises(KeyFileError, match=re.escape(f"{tmp_path / 'nowhere'} does not exist")):
        Publisher.from_config(keys.config(authorized_clients=[tmp_path / "nowhere"]))
    (keys.authorized / "broken.key").write_text("not a certificate\n")
    with pytest.raises(KeyFileError, match=r"broken\.key is not a ZeroMQ certificate"):
        Publisher.from_config(keys.config())


def test_mismatched_secret_file_is_rejected(keys: Keys, tmp_path: Path) -> None:
    text = keys.server_secret.read_text()
    other_public, _ = zmq.curve_keypair()
    line = next(x for x in text.splitlines() if "public-key" in x)
    forged = tmp_path / "forged.key_secret"
    forged.write_text(text.replace(line, f'    public-key = "{other_public.decode()}"'))
    with pytest.raises(KeyFileError, match="does not belong to its secret key"):
        CurveServer.from_config(keys.config(server_secret_key_file=forged).curve)  # type: ignore[arg-type]


def test_readable_secret_file_is_a_warning(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    keys.server_secret.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="streamer.output.key_files"):
        CurveServer.from_config(keys.config().curve)  # type: ignore[arg-type]
    assert "can be read by other users (mode 644): chmod 600 it" in caplog.text


def test_authorized_clients_from_files_and_directories(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    alice = keys.client("alice").public_key
    bob = keys.client("bob").public_key
    assert AuthorizedClients([keys.authorized]).keys == {alice, bob}
    assert AuthorizedClients([keys.authorized / "bob.key"]).keys == {bob}
    empty = keys.root / "empty"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="streamer.output.security"):
        assert AuthorizedClients([empty]).keys == frozenset()
    assert "no subscriber can connect until one is added" in caplog.text
    # A key file broken while running leaves that key out (and is logged); the others stay.
    clients = AuthorizedClients([keys.authorized])
    (keys.authorized / "alice.key").write_text("overwritten\n")
    assert not clients.allows(alice) and clients.allows(bob)


def test_a_context_with_a_zap_handler_already(keys: Keys) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        curve = CurveServer.from_config(keys.config().curve)  # type: ignore[arg-type]
        with (
            Publisher("tcp://127.0.0.1:*", context=ctx, curve=curve),
            pytest.raises(PublishError, match="already has one"),
        ):
            Publisher("tcp://127.0.0.1:*", context=ctx, curve=curve)
    finally:
        ctx.term()


# ------------------------------------------------------------------------------------ plaintext exposure


def test_default_endpoint_is_loopback() -> None:
    from streamer.cli.main import DEFAULT_ENDPOINT

    assert PublishConfig().endpoint == DEFAULT_ENDPOINT == "tcp://127.0.0.1:5555"
    assert PublishConfig().curve is None
    assert is_local_endpoint(DEFAULT_ENDPOINT)


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///run/yolostream.sock", True),
        ("inproc://x", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://10.0.0.5:5555", False),
        ("tcp://eth0:5555", False),
    ],
)
def test_is_local_endpoint(endpoint: str, local: bool) -> None:
    assert is_local_endpoint(endpoint) is local


def test_plaintext_on_a_reachable_address_is_a_warning(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streamer.output.publish"):
        with Publisher("tcp://127.0.0.1:*"):
            pass
        assert caplog.text == ""
        with Publisher.from_config(keys.config("tcp://0.0.0.0:*")):
            pass
        assert caplog.text == ""
        with Publisher("tcp://0.0.0.0:*") as pub:
            pass
    assert f"{pub.endpoint} can be reached from other hosts and publish.curve is not set" in caplog.text


# ------------------------------------------------------------------------------------------ the daemon


@pytest.mark.slow
def test_daemon_publishes_only_to_authorised_subscribers(keys: Keys, tmp_path: Path) -> None:
    """`yolostream run` with publish.curve: the inference worker's publisher is a CURVE server."""
    from tests.support.media import bright_spot_clip
    from tests.support.models import write_oracle_model

    model = write_oracle_model(tmp_path / "oracle.onnx")
    bright_spot_clip(tmp_path / "clip.mp4", (320, 240), [(100.0 + i, 120.0) for i in range(10)], radius=12)
    endpoint = f"ipc://{tmp_path}/pub.sock"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model:\n  onnx: {model}\nsources:\n  - id: cam1\n    url: clip.mp4\n    loop: true\n"
        f"    realtime: true\npublish:\n  endpoint: {endpoint}\n  curve:\n"
        f"    server_secret_key_file: {keys.server_secret.relative_to(tmp_path)}\n"
        f"    authorized_clients: {keys.authorized.relative_to(tmp_path)}\n"
        "logging:\n  stats_interval_s: 0\n"
    )
    stranger = CurveClient.from_keys(keys.client("alice").server_public_key)
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        with (
            Subscriber(endpoint, curve=keys.client("alice")) as alice,
            Subscriber(endpoint, curve=stranger) as refused,
            Subscriber(endpoint) as plaintext,
        ):
            received = 0
            deadline = time.monotonic() + 60
            while received < 20 and time.monotonic() < deadline and proc.poll() is None:
                try:
                    alice.recv(1.0)
                    received += 1
                except ReceiveTimeout:
                    continue
            assert received >= 20, log_path.read_text()
            # Connected since before the daemon started: whatever they had been let in for is queued.
            assert count_received(refused, plaintext) == [0, 0]
            assert refused.handshake_error is not None and "refused" in refused.handshake_error
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "with CURVE, admitting 2 authorised subscriber key(s)" in log_path.read_text()
